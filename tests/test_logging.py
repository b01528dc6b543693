"""utils.logging: the metrics file trimmed on resume, also after a write cut short, and atomic text writes."""

import json
import os
import pathlib
import re

import pytest

from utils import logging as logging_module
from utils.files import write_text_atomically
from utils.logging import (
    METRICS_FILE_NAME,
    WANDB_ID_FILE_NAME,
    MetricsFileError,
    RunLogger,
    read_metrics,
)


def write_metrics_file(folder, lines) -> str:
    path = os.path.join(folder, METRICS_FILE_NAME)
    with open(path, "w") as file:
        file.write("".join(lines))
    return path


def record_line(step: int) -> str:
    return json.dumps({"step": step, "train/lm_loss": 1.0 / step}) + "\n"


def resume_logger(folder, start_step: int) -> RunLogger:
    return RunLogger(str(folder), "project", "run", {}, wandb_mode="disabled", start_step=start_step)


def test_resume_forgets_the_steps_after_the_checkpoint(tmp_path):
    path = write_metrics_file(tmp_path, [record_line(step) for step in (1, 2, 3, 4)])
    logger = resume_logger(tmp_path, start_step=2)
    logger.log({"train/lm_loss": 0.25}, step=3)
    logger.close()
    assert [record["step"] for record in read_metrics(path)] == [1, 2, 3]
    assert read_metrics(path)[-1]["train/lm_loss"] == 0.25


def test_resume_drops_a_last_line_cut_short_and_says_so(tmp_path, capsys):
    # A process killed mid-write leaves part of a record and no newline.
    path = write_metrics_file(tmp_path, [record_line(1), record_line(2), record_line(3)[:15]])
    logger = resume_logger(tmp_path, start_step=5)
    logger.log({"train/lm_loss": 0.25}, step=6)
    logger.close()

    assert [record["step"] for record in read_metrics(path)] == [1, 2, 6]
    assert pathlib.Path(path).read_text() == record_line(1) + record_line(2) + json.dumps({"step": 6, "train/lm_loss": 0.25}) + "\n"
    assert f"{path}: left out its last line, which was only partly written" in capsys.readouterr().out


def test_a_last_record_without_its_newline_is_kept_and_the_next_one_starts_a_line(tmp_path):
    path = write_metrics_file(tmp_path, [record_line(1), record_line(2).rstrip("\n")])
    logger = resume_logger(tmp_path, start_step=2)
    logger.log({"train/lm_loss": 0.25}, step=3)
    logger.close()
    assert [record["step"] for record in read_metrics(path)] == [1, 2, 3]


def test_a_bad_line_in_the_middle_names_the_file_and_line(tmp_path):
    lines = [record_line(1), "\n", '{"step": 2, "train/lm_l\n', record_line(3)]
    path = write_metrics_file(tmp_path, lines)
    with pytest.raises(MetricsFileError, match=re.escape(path) + r", line 3, is not a JSON record .*Delete or repair that line"):
        resume_logger(tmp_path, start_step=3)
    assert pathlib.Path(path).read_text() == "".join(lines)


def test_a_new_run_stores_its_wandb_id_atomically_and_a_resumed_one_reuses_it(tmp_path, disk_events):
    new_id = logging_module._wandb_run_id(str(tmp_path), start_step=0)
    assert disk_events == [("fsync", len(new_id)), ("replace", f"{WANDB_ID_FILE_NAME}.partial", WANDB_ID_FILE_NAME)]
    assert (tmp_path / WANDB_ID_FILE_NAME).read_text() == new_id
    assert logging_module._wandb_run_id(str(tmp_path), start_step=7) == new_id
    assert sorted(os.listdir(tmp_path)) == [WANDB_ID_FILE_NAME]


def test_text_reaches_the_disk_before_the_rename(tmp_path, disk_events):
    path = tmp_path / "submission.json"
    path.write_text("old contents, longer than the new")
    write_text_atomically(str(path), '{"a": 1}')

    assert path.read_text() == '{"a": 1}'
    assert disk_events == [("fsync", len('{"a": 1}')), ("replace", "submission.json.partial", "submission.json")]
    assert os.listdir(tmp_path) == ["submission.json"]
