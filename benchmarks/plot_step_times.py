"""Bar chart of median train-step times from benchmarks/train_step.py JSON lines, beside the
original implementation's published figures. Bars are coloured by the GPU that measured them.

    python benchmarks/plot_step_times.py benchmarks/results/*.jsonl --output docs/images/step_times.png \
        [--label FILE_STEM:VARIANT=TEXT ...]

--label names a variant's bar where the variant name alone would mislead, e.g. when what a name
meant has changed since that file was written.
"""

import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
from matplotlib.patches import Patch  # noqa: E402

# The original's median step times on one H100 80GB (PyTorch 2.11, compiled, SDPA, fused Adam-atan2).
ORIGINAL_MS = {"sudoku": 85.7, "maze": 139.9}
ORIGINAL_COLOUR = "#999999"
DEVICE_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", help="JSON-lines files written by train_step.py --output")
    parser.add_argument("--output", required=True, help="PNG to write")
    parser.add_argument("--label", action="append", default=[], metavar="FILE_STEM:VARIANT=TEXT",
                        help="bar label for VARIANT in the results file named FILE_STEM(.jsonl)")
    args = parser.parse_args()
    bar_labels = {}
    for entry in args.label:
        key, separator, text = entry.partition("=")
        if not separator or ":" not in key:
            parser.error(f"--label {entry!r}: use FILE_STEM:VARIANT=TEXT")
        bar_labels[tuple(key.split(":", 1))] = text

    labels, times, colours = [], [], []
    device_colours = {"original (H100 80GB)": ORIGINAL_COLOUR}
    for shape, milliseconds in ORIGINAL_MS.items():
        labels.append(f"{shape}\noriginal")
        times.append(milliseconds)
        colours.append(ORIGINAL_COLOUR)
    for path in args.results:
        stem = os.path.basename(path).removesuffix(".jsonl")
        with open(path) as file:
            for line in file:
                record = json.loads(line)
                if "step_ms_median" not in record:
                    continue
                labels.append(f"{record['shape']}\n{bar_labels.get((stem, record['variant']), record['variant'])}")
                times.append(record["step_ms_median"])
                device = record["device"]
                if device not in device_colours:
                    device_colours[device] = DEVICE_COLOURS[(len(device_colours) - 1) % len(DEVICE_COLOURS)]
                colours.append(device_colours[device])

    figure, axes = plt.subplots(figsize=(1.2 * len(labels) + 2, 3.5))
    bars = axes.bar(range(len(labels)), times, color=colours)
    axes.bar_label(bars, fmt="%.1f")
    axes.set_xticks(range(len(labels)), labels, fontsize=8)
    axes.set_ylim(0, 1.15 * max(times))
    axes.set_ylabel("median step time (ms)")
    axes.set_title("HRM training step, one GPU, default architecture")
    axes.legend(handles=[Patch(color=colour, label=device) for device, colour in device_colours.items()], fontsize=8)
    figure.tight_layout()
    figure.savefig(args.output, dpi=100)


if __name__ == "__main__":
    main()
