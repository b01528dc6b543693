"""Where the GPU waits: the idle gaps between kernels in a profile trace.

    python benchmarks/train_step.py --shape sudoku --compare fused --profile profiles/sudoku
    python benchmarks/trace_gaps.py profiles/sudoku/trace.json.gz

Reads a torch.profiler Chrome trace (plain or gzip) and prints one JSON line: the GPU's busy time
(kernels, copies and memsets, overlaps merged), the span from the first to the last of them, the
idle time in between, and the largest gaps with the GPU work on either side. A step whose kernels sum
to less than its time loses the rest in such gaps, typically where the host launches kernels more
slowly than the GPU runs them.
"""

import argparse
import gzip
import json
from typing import List, Optional, Sequence, Tuple

GPU_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")


def load_events(path: str) -> list:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as file:
        trace = json.load(file)
    return trace["traceEvents"] if isinstance(trace, dict) else trace


def gpu_intervals(events: list) -> List[Tuple[float, float, str]]:
    """(start, end, name) in microseconds of every GPU event, by start time."""
    intervals = [(float(event["ts"]), float(event["ts"]) + float(event.get("dur", 0)), event.get("name", ""))
                 for event in events if event.get("ph") == "X" and event.get("cat") in GPU_CATEGORIES]
    return sorted(intervals)


def gap_summary(intervals: List[Tuple[float, float, str]], top: int = 10) -> dict:
    """Busy and idle time of the GPU over the span of the intervals, and the largest idle gaps."""
    if not intervals:
        raise ValueError("the trace has no GPU kernels: profile a CUDA run (--profile on a GPU)")
    busy, gaps = 0.0, []
    # Overlapping events (several streams) merge into one busy stretch, named by the event that ends it.
    current_start, current_end, last_name = intervals[0]
    for start, end, name in intervals[1:]:
        if start > current_end:
            busy += current_end - current_start
            gaps.append((start - current_end, last_name, name))
            current_start, current_end, last_name = start, end, name
        elif end > current_end:
            current_end, last_name = end, name
    busy += current_end - current_start
    span = current_end - intervals[0][0]
    gaps.sort(key=lambda gap: gap[0], reverse=True)
    return {
        "gpu_events": len(intervals),
        "span_ms": round(span / 1e3, 3),
        "busy_ms": round(busy / 1e3, 3),
        "idle_ms": round((span - busy) / 1e3, 3),
        "busy_fraction": round(busy / span, 4) if span > 0 else None,
        "gaps_over_10us": sum(1 for gap in gaps if gap[0] > 10),
        "idle_in_gaps_over_10us_ms": round(sum(gap[0] for gap in gaps if gap[0] > 10) / 1e3, 3),
        "largest_gaps": [{"us": round(length, 1), "after": before[:120], "before": after[:120]} for length, before, after in gaps[:top]],
    }


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("trace", help="trace.json or trace.json.gz written by torch.profiler (train_step.py --profile)")
    parser.add_argument("--top", type=int, default=10, help="how many of the largest gaps to list (default 10)")
    args = parser.parse_args(argv)
    summary = gap_summary(gpu_intervals(load_events(args.trace)), args.top)
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
