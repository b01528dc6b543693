"""Where metrics go: `metrics.jsonl` in the run folder always, Weights & Biases when enabled.

Only the main rank logs; other ranks get a logger whose calls do nothing.
"""

import json
import math
import os
import secrets
from typing import Dict, Optional

from utils.files import disk_full_error, is_out_of_space, write_text_atomically

METRICS_FILE_NAME = "metrics.jsonl"
WANDB_ID_FILE_NAME = "wandb_run_id.txt"


class MetricsFileError(ValueError):
    """A metrics file that cannot be read back; the message names the file, the line and the fix."""


class RunLogger:
    def __init__(self, folder: str, project_name: str, run_name: str, config: dict, wandb_mode: str, start_step: int):
        self.metrics_path = os.path.join(folder, METRICS_FILE_NAME)
        _drop_lines_after(self.metrics_path, start_step)
        # Unbuffered: each record reaches the file in the call that logs it, or the call fails.
        self.metrics_file = open(self.metrics_path, "ab", buffering=0)
        self.wandb_run = None
        if wandb_mode != "disabled":
            import wandb

            self.wandb_run = wandb.init(
                project=project_name, name=run_name, id=_wandb_run_id(folder, start_step),
                resume="allow", config=config,
                mode=wandb_mode, dir=folder, settings=wandb.Settings(x_disable_stats=True, console="off"),
            )

    def log(self, metrics: Dict[str, float], step: int) -> None:
        record = {"step": step, **{key: _plain_number(value) for key, value in metrics.items()}}
        self._append((json.dumps(record) + "\n").encode())
        if self.wandb_run is not None:
            self.wandb_run.log(metrics, step=step)

    def close(self) -> None:
        self.metrics_file.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()

    def _append(self, line: bytes) -> None:
        """Append one line whole, or not at all: a write that fails (a full disk) is cut back off."""
        start = self.metrics_file.seek(0, os.SEEK_END)
        try:
            written = 0
            while written < len(line):
                written += self.metrics_file.write(line[written:])
        except OSError as error:
            self.metrics_file.truncate(start)
            if is_out_of_space(error):
                raise disk_full_error(self.metrics_path, len(line)) from error
            raise


class SilentLogger:
    """The logger of non-main ranks."""

    def log(self, metrics: Dict[str, float], step: int) -> None:
        pass

    def close(self) -> None:
        pass


def _wandb_run_id(folder: str, start_step: int) -> str:
    """A new W&B run id for a new run; the stored one for a resumed run, so it continues the same W&B run."""
    path = os.path.join(folder, WANDB_ID_FILE_NAME)
    if start_step > 0 and os.path.exists(path):
        with open(path) as file:
            return file.read().strip()
    run_id = secrets.token_hex(4)
    write_text_atomically(path, run_id)
    return run_id


def _plain_number(value) -> Optional[float]:
    value = float(value)
    return value if math.isfinite(value) else None


def _drop_lines_after(path: str, step: int) -> None:
    """A resumed run repeats the steps after its checkpoint: forget what the stopped run logged for them."""
    if not os.path.exists(path):
        return
    kept = [json.dumps(record) + "\n" for record in read_metrics(path) if record["step"] <= step]
    write_text_atomically(path, "".join(kept))


def read_metrics(path: str) -> list:
    """The records of a metrics file, leaving out a last line that a killed process left half-written."""
    with open(path) as file:
        numbered_lines = [(number, line) for number, line in enumerate(file, start=1) if line.strip()]
    records = []
    for number, line in numbered_lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            if number != numbered_lines[-1][0]:
                raise MetricsFileError(
                    f"{path}, line {number}, is not a JSON record ({error.msg} at column {error.colno}). "
                    "Delete or repair that line, then run again."
                ) from None
            print(f"{path}: left out its last line, which was only partly written (the process was stopped mid-write)")
    return records
