"""Accuracy against ACT segments (evaluate.py sweep=[...]): the records as JSON lines, and their plot.

One record per (segment count, set): {"segments", "adaptive_halting", "set", the evaluation's
metrics (accuracy, exact_accuracy, steps: the mean segments run, ...), "seconds"}.
"""

import io
import json
import sys
from typing import List, Optional

from utils.files import write_atomically, write_text_atomically


def write_sweep_records(path: str, records: List[dict]) -> None:
    write_text_atomically(path, "".join(json.dumps(record) + "\n" for record in records))


def plot_sweep(records: List[dict], path: str, title: str) -> Optional[str]:
    """Exact and token accuracy per set against segments (and, with adaptive halting, the mean
    segments run) as a PNG at `path`; returns the path, or None without matplotlib (with a note why)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: no plot of the sweep: matplotlib is not installed (pip install matplotlib); the JSON lines hold the numbers",
              file=sys.stderr)
        return None

    adaptive = any(record["adaptive_halting"] for record in records)
    figure, axes = plt.subplots(1, 2 if adaptive else 1, figsize=(11 if adaptive else 6, 4), squeeze=False)
    accuracy_axes = axes[0][0]
    for set_name in dict.fromkeys(record["set"] for record in records):
        points = sorted((record["segments"], record) for record in records if record["set"] == set_name)
        segments = [count for count, _ in points]
        for key, style in (("exact_accuracy", "o-"), ("accuracy", "s--")):
            accuracy_axes.plot(segments, [record[key] for _, record in points], style, label=f"{set_name} {key}")
        if adaptive:
            axes[0][1].plot(segments, [record["steps"] for _, record in points], "o-", label=set_name)
    counts = sorted({record["segments"] for record in records})
    for axis in axes[0]:
        axis.set_xscale("log", base=2)
        axis.set_xticks(counts, [str(count) for count in counts])
    accuracy_axes.set_xlabel("segments (the cap, with adaptive halting)" if adaptive else "segments")
    accuracy_axes.set_ylabel("test accuracy")
    accuracy_axes.set_ylim(0, 1)
    accuracy_axes.grid(alpha=0.3)
    accuracy_axes.legend(fontsize=8)
    if adaptive:
        axes[0][1].set_xlabel("segments cap")
        axes[0][1].set_ylabel("mean segments run")
        axes[0][1].grid(alpha=0.3)
        axes[0][1].legend(fontsize=8)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    plt.close(figure)
    write_atomically(path, lambda file: file.write(buffer.getvalue()), binary=True)
    return path
