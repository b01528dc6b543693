"""`python -m utils.arc_score`: the former name of `python -m evaluators.arc` (same arguments), kept
so that existing commands and imports go on working. The code lives in evaluators/arc.py."""

from evaluators.arc import command_line, crop_grids, load_predictions, main, parse_name, score, submission, write_submission

__all__ = ["crop_grids", "load_predictions", "main", "parse_name", "score", "submission", "write_submission"]

if __name__ == "__main__":
    command_line()
