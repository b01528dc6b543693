"""Learning curves of a run from its metrics.jsonl (or metrics.jsonl.gz): test exact accuracy and
train loss, against optimiser steps and against wall-clock minutes.

    python scripts/plot_metrics.py checkpoints/<project>/<run>/metrics.jsonl --output curves.png [--title TEXT] [--smooth N]

Train curves are drawn as means over blocks of N steps (default: 1 % of the steps, at least 1);
the raw train loss is drawn faintly behind its mean. Train exact accuracy counts only steps in
which some sequence halted (train/count > 0).
"""

import argparse
import gzip
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)


def read_curves(path: str) -> dict:
    """Per metric, the (step, minutes, value) points of a metrics.jsonl file, in step order."""
    curves = {"train/lm_loss": [], "train/exact_accuracy": [], "all/exact_accuracy": [], "all/accuracy": []}
    with (gzip.open(path, "rt") if path.endswith(".gz") else open(path)) as file:
        for line_number, line in enumerate(file, start=1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path} line {line_number} is not JSON ({error}): is it a pretrain.py metrics.jsonl?") from error
            minutes = record.get("time/elapsed_seconds", 0.0) / 60
            for key, points in curves.items():
                if key == "train/exact_accuracy" and record.get("train/count") == 0:
                    continue  # no sequence halted in this step: its accuracy is not a measurement
                if record.get(key) is not None:
                    points.append((record["step"], minutes, record[key]))
    if not curves["train/lm_loss"]:
        raise ValueError(f"{path} holds no training metrics (train/lm_loss): is it a pretrain.py metrics.jsonl?")
    return curves


def block_means(points: list, size: int) -> list:
    """Means of (step, minutes, value) over the points of each block of `size` steps (1..size, ...)."""
    blocks: dict = {}
    for point in points:
        blocks.setdefault((point[0] - 1) // size, []).append(point)
    return [tuple(sum(point[i] for point in block) / len(block) for i in range(3)) for block in blocks.values()]


def plot_curves(curves: dict, output: str, title: str, smooth: int = 0) -> None:
    smooth = smooth or max(1, curves["train/lm_loss"][-1][0] // 100)
    suffix = f" (mean per {smooth} steps)" if smooth > 1 else ""
    figure, axes = plt.subplots(2, 2, figsize=(11, 6.5), sharey="row")
    for column, (axis_name, index) in enumerate((("optimiser step", 0), ("minutes", 1))):
        accuracy_axes, loss_axes = axes[0][column], axes[1][column]
        train_exact = block_means(curves["train/exact_accuracy"], smooth)
        if train_exact:
            accuracy_axes.plot([point[index] for point in train_exact], [point[2] for point in train_exact], "-",
                               color="tab:green", label="train exact" + suffix, linewidth=1)
        for key, label, style, color in (("all/exact_accuracy", "test exact", "o-", "tab:blue"),
                                         ("all/accuracy", "test token", "s--", "tab:orange")):
            points = curves[key]
            if points:
                accuracy_axes.plot([point[index] for point in points], [point[2] for point in points], style, label=label,
                                   color=color, markersize=4, linewidth=1.2, zorder=3)
        loss = curves["train/lm_loss"]
        if smooth > 1:
            loss_axes.plot([point[index] for point in loss], [point[2] for point in loss], color="tab:blue", alpha=0.2,
                           linewidth=0.5, label="train lm loss, per step")
        mean_loss = block_means(loss, smooth)
        loss_axes.plot([point[index] for point in mean_loss], [point[2] for point in mean_loss], color="tab:blue",
                       linewidth=1.2, label="train lm loss" + suffix)
        accuracy_axes.set_ylim(0, 1)
        accuracy_axes.grid(alpha=0.3)
        loss_axes.set_yscale("log")
        loss_axes.grid(alpha=0.3)
        loss_axes.set_xlabel(axis_name)
    axes[0][0].set_ylabel("accuracy")
    axes[1][0].set_ylabel("train lm loss")
    axes[0][0].legend(loc="upper left", fontsize=8)
    axes[1][0].legend(loc="upper right", fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(output, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("metrics", help="a run's metrics.jsonl (or .jsonl.gz)")
    parser.add_argument("--output", required=True, help="PNG to write")
    parser.add_argument("--title", default="", help="figure title")
    parser.add_argument("--smooth", type=int, default=0,
                        help="average the train curves over blocks of N steps (default 0: 1 %% of the steps; 1: raw)")
    args = parser.parse_args()
    if args.smooth < 0:
        parser.error(f"--smooth must be 0 (automatic) or a number of steps, got {args.smooth}")
    try:
        curves = read_curves(args.metrics)
        plot_curves(curves, args.output, args.title or args.metrics, args.smooth)
    except (OSError, ValueError) as error:  # a missing or malformed metrics file, or an output path that cannot be written
        raise SystemExit(f"{parser.prog}: error: {error}") from None


if __name__ == "__main__":
    main()
