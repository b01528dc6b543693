"""Drawing ARC results for arc_eval.ipynb: a task's test inputs, true outputs and top-ranked answers."""

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap

from evaluators.arc import PASS_AT_K, TaskResult

# The ARC colours 0..9 as shown on arcprize.org (also used by puzzle_visualizer.html).
ARC_COLOURS = ["#000000", "#0074D9", "#FF4136", "#2ECC40", "#FFDC00",
               "#AAAAAA", "#F012BE", "#FF851B", "#7FDBFF", "#870C25"]


def plot_task(task: TaskResult, top: int = 3):
    """A matplotlib figure with, per test input, its input, true output and top `top` candidates."""
    cmap = ListedColormap(ARC_COLOURS)
    columns = 2 + top
    fig, axes = plt.subplots(len(task.test_inputs), columns, figsize=(2.2 * columns, 2.5 * len(task.test_inputs)),
                             squeeze=False)
    for row, test in zip(axes, task.test_inputs):
        panels = [(f"test input {test.index}", test.input, "black"), ("true output", test.target, "black")]
        for rank, candidate in enumerate(test.candidates[:top], start=1):
            right = rank == test.correct_rank
            votes = f"{candidate.votes} vote" + ("s" if candidate.votes != 1 else "")
            panels.append((f"#{rank}: {votes}, q {candidate.mean_q:.2f}", candidate.grid, "green" if right else "red"))
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.axis("off")
        for ax, (title, grid, colour) in zip(row, panels):
            ax.axis("on")
            ax.imshow(grid, cmap=cmap, vmin=0, vmax=len(ARC_COLOURS) - 1, interpolation="nearest")
            # Thin cell borders, as ARC grids are usually drawn.
            ax.set_xticks(np.arange(-0.5, grid.shape[1]), minor=True)
            ax.set_yticks(np.arange(-0.5, grid.shape[0]), minor=True)
            ax.grid(which="minor", color="#555555", linewidth=0.5)
            ax.tick_params(which="both", length=0)
            ax.set_title(title, fontsize=9, color=colour)
    k = next((k for k in PASS_AT_K if task.solved_at(k)), None)
    fig.suptitle(f"{task.name}: " + (f"solved at pass@{k}" if k else f"not solved within pass@{PASS_AT_K[-1]}"))
    fig.tight_layout()
    return fig
