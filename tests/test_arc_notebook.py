"""arc_eval.ipynb runs top to bottom on the shipped example and prints the scorer's figures; the
shipped example is exactly what tests/make_arc_example.py makes."""

import os
import re

import pytest
import torch

from tests.make_arc_example import DEFAULT_OUTPUT, EXPECTED_PASS_AT, TASKS, make_example
from evaluators.arc import load_predictions, score

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE_DATASET = os.path.join(DEFAULT_OUTPUT, "data")


def python3_kernel_missing() -> bool:
    try:
        from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    except ImportError:
        return True
    try:
        KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        return True
    return False


def test_shipped_example_scores_as_planned():
    results = score(load_predictions([DEFAULT_OUTPUT]), EXAMPLE_DATASET)
    assert results.pass_at == EXPECTED_PASS_AT
    assert list(results.tasks) == sorted(TASKS)
    assert results.num_predictions == 20


def test_shipped_example_is_reproducible(tmp_path):
    make_example(str(tmp_path))
    for root, _, files in os.walk(os.path.join(tmp_path, "data")):
        for name in files:
            made = os.path.join(root, name)
            shipped = os.path.join(DEFAULT_OUTPUT, os.path.relpath(made, tmp_path))
            with open(made, "rb") as a, open(shipped, "rb") as b:
                assert a.read() == b.read(), f"{shipped} differs: rerun python tests/make_arc_example.py"
    for rank in (0, 1):
        name = f"step_2000_all_preds.{rank}"
        made, shipped = torch.load(tmp_path / name), torch.load(os.path.join(DEFAULT_OUTPUT, name))
        assert made.keys() == shipped.keys()
        assert all(torch.equal(made[key], shipped[key]) for key in made), f"{name}: rerun make_arc_example.py"


@pytest.mark.skipif(python3_kernel_missing(), reason="no Jupyter kernel 'python3': pip install ipykernel && "
                                                     "python -m ipykernel install --user")
def test_notebook_runs_and_prints_the_scorers_pass_at_k():
    import nbclient
    import nbformat

    notebook = nbformat.read(os.path.join(REPO, "arc_eval.ipynb"), as_version=4)
    nbclient.NotebookClient(notebook, kernel_name="python3", timeout=120,
                            resources={"metadata": {"path": REPO}}).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    printed = "".join(output.get("text", "") for output in outputs if output.output_type == "stream")
    shown = {int(k): float(v) for k, v in re.findall(r"^pass@(\d+): ([0-9.]+) ", printed, flags=re.M)}
    expected = score(load_predictions([DEFAULT_OUTPUT]), EXAMPLE_DATASET).pass_at
    assert shown == {k: round(v, 4) for k, v in expected.items()}
    # The per-task table and one drawn figure per shown task (the example's four).
    assert re.search(r"^66e6c45b\s+no\s+yes\s+2/2$", printed, flags=re.M)
    figures = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(figures) == len(TASKS)
