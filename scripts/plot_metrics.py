"""Learning curves of a run from its metrics.jsonl: test exact accuracy and train loss, against
optimiser steps and against wall-clock minutes.

    python scripts/plot_metrics.py checkpoints/<project>/<run>/metrics.jsonl --output curves.png [--title TEXT]
"""

import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)


def read_curves(path: str) -> dict:
    """Per metric, the (step, minutes, value) points of a metrics.jsonl file, in step order."""
    curves = {"train/lm_loss": [], "train/exact_accuracy": [], "all/exact_accuracy": [], "all/accuracy": []}
    with open(path) as file:
        for line in file:
            record = json.loads(line)
            minutes = record.get("time/elapsed_seconds", 0.0) / 60
            for key, points in curves.items():
                if record.get(key) is not None:
                    points.append((record["step"], minutes, record[key]))
    if not curves["train/lm_loss"]:
        raise ValueError(f"{path} holds no training metrics (train/lm_loss): is it a pretrain.py metrics.jsonl?")
    return curves


def plot_curves(curves: dict, output: str, title: str) -> None:
    figure, axes = plt.subplots(2, 2, figsize=(11, 6.5), sharey="row")
    for column, (axis_name, index) in enumerate((("optimiser step", 0), ("minutes", 1))):
        accuracy_axes, loss_axes = axes[0][column], axes[1][column]
        for key, label, style in (("all/exact_accuracy", "test exact", "o-"), ("all/accuracy", "test token", "s--"),
                                  ("train/exact_accuracy", "train exact", "-")):
            points = curves[key]
            if points:
                accuracy_axes.plot([point[index] for point in points], [point[2] for point in points], style, label=label,
                                   markersize=3, linewidth=1)
        loss_axes.plot([point[index] for point in curves["train/lm_loss"]], [point[2] for point in curves["train/lm_loss"]], linewidth=0.8)
        accuracy_axes.set_ylim(0, 1)
        accuracy_axes.grid(alpha=0.3)
        loss_axes.set_yscale("log")
        loss_axes.grid(alpha=0.3)
        loss_axes.set_xlabel(axis_name)
    axes[0][0].set_ylabel("accuracy")
    axes[1][0].set_ylabel("train lm loss")
    axes[0][0].legend(loc="upper left", fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(output, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("metrics", help="a run's metrics.jsonl")
    parser.add_argument("--output", required=True, help="PNG to write")
    parser.add_argument("--title", default="", help="figure title")
    args = parser.parse_args()
    plot_curves(read_curves(args.metrics), args.output, args.title or args.metrics)


if __name__ == "__main__":
    main()
