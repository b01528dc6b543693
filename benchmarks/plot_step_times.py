"""Bar chart of median train-step times from benchmarks/train_step.py JSON lines, beside the
original implementation's published figures.

    python benchmarks/plot_step_times.py benchmarks/results/*.jsonl --output docs/images/step_times.png
"""

import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

# The original's median step times on one H100 80GB (PyTorch 2.11, compiled, SDPA, fused Adam-atan2).
ORIGINAL_MS = {"sudoku": 85.7, "maze": 139.9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", help="JSON-lines files written by train_step.py --output")
    parser.add_argument("--output", required=True, help="PNG to write")
    args = parser.parse_args()

    labels, times, colours = [], [], []
    for shape, milliseconds in ORIGINAL_MS.items():
        labels.append(f"{shape}\noriginal")
        times.append(milliseconds)
        colours.append("#999999")
    for path in args.results:
        with open(path) as file:
            for line in file:
                record = json.loads(line)
                if "step_ms_median" not in record:
                    continue
                labels.append(f"{record['shape']}\n{record['variant']}")
                times.append(record["step_ms_median"])
                colours.append("#1f77b4")

    figure, axes = plt.subplots(figsize=(1.2 * len(labels) + 2, 3.5))
    bars = axes.bar(range(len(labels)), times, color=colours)
    axes.bar_label(bars, fmt="%.1f")
    axes.set_xticks(range(len(labels)), labels, fontsize=8)
    axes.set_ylim(0, 1.15 * max(times))
    axes.set_ylabel("median step time (ms)")
    axes.set_title("HRM training step, one H100 80GB, default architecture")
    figure.tight_layout()
    figure.savefig(args.output, dpi=100)


if __name__ == "__main__":
    main()
