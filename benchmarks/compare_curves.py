"""Compare the training-loss curves of two runs of the same config over their first N steps, e.g. the
fused-kernel path against the plain PyTorch path (arch.fused_kernels=false).

    python benchmarks/compare_curves.py PLAIN/metrics.jsonl FUSED/metrics.jsonl --steps 200 [--plot curves.png]

Reads metrics.jsonl files or their gzip (.gz). Prints one JSON line: per metric, the mean and largest
absolute difference per step, and the means of both curves over the last 50 steps. bfloat16 runs whose
kernels round differently drift apart step by step, so the test is whether the curves track each other
(the same trend and level), not bit equality.
"""

import argparse
import gzip
import json
from typing import Dict, List

METRICS = ("train/lm_loss", "train/q_halt_loss", "train/q_continue_loss", "train/accuracy")


def read_train_metrics(path: str, steps: int) -> Dict[int, dict]:
    records = {}
    with (gzip.open(path, "rt") if path.endswith(".gz") else open(path)) as file:
        for line in file:
            record = json.loads(line)
            if "train/lm_loss" in record and record["step"] <= steps:
                records[record["step"]] = record
    return records


def compare(reference: Dict[int, dict], candidate: Dict[int, dict], steps: int) -> dict:
    common = sorted(set(reference) & set(candidate))
    if len(common) < steps:
        raise SystemExit(f"only {len(common)} steps in both runs, fewer than --steps {steps}")
    tail = common[-50:]
    summary = {"steps": len(common)}
    for metric in METRICS:
        if metric not in reference[common[0]]:
            continue
        differences = [abs(reference[step][metric] - candidate[step][metric]) for step in common]
        summary[metric] = {
            "mean_abs_difference": sum(differences) / len(differences),
            "max_abs_difference": max(differences),
            "reference_last50_mean": sum(reference[step][metric] for step in tail) / len(tail),
            "candidate_last50_mean": sum(candidate[step][metric] for step in tail) / len(tail),
        }
    return summary


def plot(reference: Dict[int, dict], candidate: Dict[int, dict], labels: List[str], output: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    for records, label in zip((reference, candidate), labels):
        steps = sorted(records)
        axis.plot(steps, [records[step]["train/lm_loss"] for step in steps], linewidth=1, label=label)
    axis.set_xlabel("optimiser step")
    axis.set_ylabel("train lm loss")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(output, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reference", help="metrics.jsonl of the reference run (e.g. arch.fused_kernels=false)")
    parser.add_argument("candidate", help="metrics.jsonl of the run to check")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--labels", default="plain PyTorch,fused kernels", help="two comma-separated legend labels")
    parser.add_argument("--plot", help="PNG of both lm-loss curves")
    args = parser.parse_args()
    reference, candidate = read_train_metrics(args.reference, args.steps), read_train_metrics(args.candidate, args.steps)
    print(json.dumps(compare(reference, candidate, args.steps)))
    if args.plot:
        plot(reference, candidate, args.labels.split(","), args.plot)


if __name__ == "__main__":
    main()
