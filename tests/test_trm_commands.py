"""TRM's README commands, word for word (SamsungSAILMontreal/TinyRecursiveModels): each training
command, read by bash as typed, composes into a validated config, builds the model of its recipe
(TRM's published sizes: 5M parameters for mlp_t Sudoku, 7M with attention) and trains end to end
on a tiny model and tiny datasets in `data/` under the names the commands use; the ARC build
commands run on small Kaggle-style input; the Sudoku and Maze build commands parse (and build the
tiny datasets from shipped puzzles, with --source-repo); the README shows the same commands; the
TRM quick start learns."""

import json
import os
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest

import pretrain
from dataset.build_maze_dataset import MazeBuildConfig
from dataset.build_sudoku_dataset import SudokuBuildConfig
from dataset.common import parse_cli
from tests.test_training import CPU, train_in_process
from tests.tiny_runs import REPO_ROOT, SUDOKU_SAMPLE, training_environment, write_csv_slice
from utils.checkpoint import list_checkpoints
from utils.config import load_config, read_saved_config

RAW_DATA = os.path.join(REPO_ROOT, "dataset", "raw-data")
MAZE_SAMPLE = os.path.join(REPO_ROOT, "dataset", "samples", "maze-30x30-hard")

TRAINING_COMMANDS = {
    "sudoku_mlp_t": r'''
run_name="pretrain_mlp_t_sudoku"
python pretrain.py \
arch=trm \
data_paths="[data/sudoku-extreme-1k-aug-1000]" \
evaluators="[]" \
epochs=50000 eval_interval=5000 \
lr=1e-4 puzzle_emb_lr=1e-4 weight_decay=1.0 puzzle_emb_weight_decay=1.0 \
arch.mlp_t=True arch.pos_encodings=none \
arch.L_layers=2 \
arch.H_cycles=3 arch.L_cycles=6 \
+run_name=${run_name} ema=True
''',
    "sudoku_attention": r'''
run_name="pretrain_att_sudoku"
python pretrain.py \
arch=trm \
data_paths="[data/sudoku-extreme-1k-aug-1000]" \
evaluators="[]" \
epochs=50000 eval_interval=5000 \
lr=1e-4 puzzle_emb_lr=1e-4 weight_decay=1.0 puzzle_emb_weight_decay=1.0 \
arch.L_layers=2 \
arch.H_cycles=3 arch.L_cycles=6 \
+run_name=${run_name} ema=True
''',
    "maze": r'''
run_name="pretrain_att_maze30x30"
torchrun --nproc-per-node 4 --rdzv_backend=c10d --rdzv_endpoint=localhost:0 --nnodes=1 pretrain.py \
arch=trm \
data_paths="[data/maze-30x30-hard-1k]" \
evaluators="[]" \
epochs=50000 eval_interval=5000 \
lr=1e-4 puzzle_emb_lr=1e-4 weight_decay=1.0 puzzle_emb_weight_decay=1.0 \
arch.L_layers=2 \
arch.H_cycles=3 arch.L_cycles=4 \
+run_name=${run_name} ema=True
''',
    "maze_1gpu": r'''
run_name="pretrain_att_maze30x30_1gpu"
python pretrain.py \
arch=trm \
data_paths="[data/maze-30x30-hard-1k]" \
evaluators="[]" \
epochs=50000 eval_interval=5000 \
lr=1e-4 puzzle_emb_lr=1e-4 weight_decay=1.0 puzzle_emb_weight_decay=1.0 global_batch_size=128 \
arch.L_layers=2 \
arch.H_cycles=3 arch.L_cycles=4 \
+run_name=${run_name} ema=True
''',
    "arc1": r'''
run_name="pretrain_att_arc1concept_4"
torchrun --nproc-per-node 4 --rdzv_backend=c10d --rdzv_endpoint=localhost:0 --nnodes=1 pretrain.py \
arch=trm \
data_paths="[data/arc1concept-aug-1000]" \
arch.L_layers=2 \
arch.H_cycles=3 arch.L_cycles=4 \
+run_name=${run_name} ema=True
''',
    "arc2": r'''
run_name="pretrain_att_arc2concept_4"
torchrun --nproc-per-node 4 --rdzv_backend=c10d --rdzv_endpoint=localhost:0 --nnodes=1 pretrain.py \
arch=trm \
data_paths="[data/arc2concept-aug-1000]" \
arch.L_layers=2 \
arch.H_cycles=3 arch.L_cycles=4 \
+run_name=${run_name} ema=True
''',
}

BUILD_COMMANDS = {
    "arc1": r'''
python -m dataset.build_arc_dataset \
  --input-file-prefix kaggle/combined/arc-agi \
  --output-dir data/arc1concept-aug-1000 \
  --subsets training evaluation concept \
  --test-set-name evaluation
''',
    "arc2": r'''
python -m dataset.build_arc_dataset \
  --input-file-prefix kaggle/combined/arc-agi \
  --output-dir data/arc2concept-aug-1000 \
  --subsets training2 evaluation2 concept \
  --test-set-name evaluation2
''',
    "sudoku": "python dataset/build_sudoku_dataset.py --output-dir data/sudoku-extreme-1k-aug-1000  --subsample-size 1000 --num-aug 1000  # 1000 examples, 1000 augments",
    "maze": "python dataset/build_maze_dataset.py # 1000 examples, 8 augments",
}

# What each training command sets, beside arch=trm, arch.L_layers=2, arch.H_cycles=3, +run_name and ema=True.
RECIPES = {
    "sudoku_mlp_t": dict(data="sudoku-extreme-1k-aug-1000", L_cycles=6, mlp_t=True, pos_encodings="none", evaluators=[], epochs=50000),
    "sudoku_attention": dict(data="sudoku-extreme-1k-aug-1000", L_cycles=6, mlp_t=False, pos_encodings="rope", evaluators=[], epochs=50000),
    "maze": dict(data="maze-30x30-hard-1k", L_cycles=4, mlp_t=False, pos_encodings="rope", evaluators=[], epochs=50000),
    "maze_1gpu": dict(data="maze-30x30-hard-1k", L_cycles=4, mlp_t=False, pos_encodings="rope", evaluators=[], epochs=50000, global_batch_size=128),
    "arc1": dict(data="arc1concept-aug-1000", L_cycles=4, mlp_t=False, pos_encodings="rope", epochs=100000),
    "arc2": dict(data="arc2concept-aug-1000", L_cycles=4, mlp_t=False, pos_encodings="rope", epochs=100000),
}


def shell_words(command: str):
    """The launcher and the words each program receives when bash runs `command`: [(program, words)]."""
    script = 'python() { printf "%s\\0" python "$@"; }; torchrun() { printf "%s\\0" torchrun "$@"; }\n' + command
    words = subprocess.run(["bash", "-c", script], check=True, capture_output=True).stdout.decode().split("\0")[:-1]
    return words[0], words[1:]


def pretrain_arguments(name: str):
    """(torchrun's own flags or None, pretrain.py's arguments) of a training command."""
    launcher, words = shell_words(TRAINING_COMMANDS[name])
    split = words.index("pretrain.py")
    return (words[:split] if launcher == "torchrun" else None), words[split + 1:]


@pytest.mark.parametrize("name", list(TRAINING_COMMANDS))
def test_each_training_command_composes_into_its_recipe(name):
    recipe = RECIPES[name]
    config = load_config(pretrain_arguments(name)[1])
    assert config.arch.name == "recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1"
    assert config.data_paths == [f"data/{recipe['data']}"] and config.data_paths_test == []
    assert config.run_name == TRAINING_COMMANDS[name].split('"')[1] and config.ema is True
    assert config.global_batch_size == recipe.get("global_batch_size", 768) and config.epochs == recipe["epochs"]
    if "evaluators" in recipe:
        assert config.evaluators == recipe["evaluators"]
    if name.startswith(("sudoku", "maze")):
        assert (config.eval_interval, config.lr, config.puzzle_emb_lr, config.weight_decay, config.puzzle_emb_weight_decay) == (5000, 1e-4, 1e-4, 1.0, 1.0)
    arch = config.arch.model_extra
    assert (arch["L_layers"], arch["H_cycles"], arch["L_cycles"]) == (2, 3, recipe["L_cycles"])
    assert (arch["mlp_t"], arch["pos_encodings"], arch["no_ACT_continue"]) == (recipe["mlp_t"], recipe["pos_encodings"], True)


@pytest.mark.parametrize("name, shape, millions", [("sudoku_mlp_t", (81, 11), 5), ("sudoku_attention", (81, 11), 7), ("maze", (900, 6), 7), ("arc1", (900, 12), 7)])
def test_each_recipe_builds_its_published_model_size(name, shape, millions):
    config = load_config(pretrain_arguments(name)[1])
    loss_head = pretrain.build_loss_head(config, SimpleNamespace(seq_len=shape[0], vocab_size=shape[1], num_puzzle_identifiers=10), CPU)
    assert round(sum(parameter.numel() for parameter in loss_head.parameters()) / 1e6) == millions


# -- end to end, on tiny models and datasets --------------------------------------------------------


def run_build(command: str, cwd: str, *extra: str) -> None:
    """A build command as bash reads it, with `extra` flags after its own, run in `cwd` with this repository importable."""
    _, words = shell_words(command)
    program, flags = (words[:2], words[2:]) if words[0] == "-m" else ([os.path.join(REPO_ROOT, words[0])], words[1:])
    environment = dict(training_environment(), PYTHONPATH=REPO_ROOT)
    subprocess.run([sys.executable, *program, *flags, *extra], cwd=cwd, env=environment, check=True, capture_output=True)


def write_raw_data(root: str) -> str:
    """dataset/raw-data's layout with one shipped task per Kaggle subset."""
    for folder, task in (("ARC-AGI/data/training", "007bbfb7"), ("ARC-AGI/data/evaluation", "00576224"), ("ARC-AGI-2/data/training", "007bbfb7"),
                         ("ARC-AGI-2/data/evaluation", "0934a4d8"), ("ConceptARC/corpus/AboveBelow", "AboveBelow1")):
        os.makedirs(os.path.join(root, folder))
        shutil.copy(os.path.join(RAW_DATA, folder, f"{task}.json"), os.path.join(root, folder))
    return root


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder holding kaggle/combined/ (from one task per subset) and data/ with tiny datasets
    under the names TRM's commands use: ARC built by TRM's commands (3 augmentations), Sudoku from
    64 shipped puzzles (32 to test), Maze from 16 shipped mazes (8 to test)."""
    root = str(tmp_path_factory.mktemp("trm"))
    environment = dict(training_environment(), PYTHONPATH=REPO_ROOT)
    subprocess.run([sys.executable, "-m", "dataset.make_kaggle_combined", "--raw-data-dir", write_raw_data(os.path.join(root, "raw-data"))],
                   cwd=root, env=environment, check=True, capture_output=True)
    for name in ("arc1", "arc2"):
        run_build(BUILD_COMMANDS[name], root, "--num-aug", "3")
    sources = {}
    for name, sample, (train_rows, test_rows) in (("sudoku", SUDOKU_SAMPLE, (64, 32)), ("maze", MAZE_SAMPLE, (16, 8))):
        sources[name] = os.path.join(root, f"{name}-source")
        os.makedirs(sources[name])
        for split, rows in (("train", train_rows), ("test", test_rows)):
            write_csv_slice(os.path.join(sample, f"{split}.csv"), os.path.join(sources[name], f"{split}.csv"), rows)
    run_build(BUILD_COMMANDS["sudoku"].replace("--subsample-size 1000 --num-aug 1000", "--num-aug 1"), root, "--source-repo", sources["sudoku"])
    run_build(BUILD_COMMANDS["maze"], root, "--source-repo", sources["maze"])
    return root


def tiny(run: str, global_batch_size: int) -> list:
    """Appended to a command: 2 epochs, an evaluation after each, a tiny model with fewer cycles."""
    return [f"checkpoint_path={run}", f"global_batch_size={global_batch_size}", "epochs=2", "eval_interval=1", "lr_warmup_steps=1",
            "arch.hidden_size=16", "arch.num_heads=2", "arch.puzzle_emb_len=2", "arch.H_cycles=2", "arch.L_cycles=1",
            "arch.halt_max_steps=2", "wandb.mode=disabled"]


@pytest.mark.parametrize("name, global_batch_size", [("sudoku_mlp_t", 32), ("sudoku_attention", 32), ("maze_1gpu", 8), ("arc1", 8), ("arc2", 8)])
def test_each_training_command_trains_end_to_end(workdir, tmp_path, monkeypatch, name, global_batch_size):
    monkeypatch.chdir(workdir)  # the commands name their datasets relative to the repository, as data/<name>
    run = str(tmp_path / "run")
    eval_metrics = train_in_process(pretrain_arguments(name)[1] + tiny(run, global_batch_size))
    assert 0 <= eval_metrics["all"]["exact_accuracy"] <= eval_metrics["all"]["accuracy"] <= 1
    saved = read_saved_config(run)
    assert saved.run_name == TRAINING_COMMANDS[name].split('"')[1] and saved.ema is True and saved.data_paths == [f"data/{RECIPES[name]['data']}"]
    assert list_checkpoints(run)


def test_a_torchrun_command_runs_as_typed_over_four_processes(workdir, tmp_path):
    torchrun_flags, arguments = pretrain_arguments("maze")
    assert torchrun_flags == ["--nproc-per-node", "4", "--rdzv_backend=c10d", "--rdzv_endpoint=localhost:0", "--nnodes=1"]
    run = str(tmp_path / "run")
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", *torchrun_flags, os.path.join(REPO_ROOT, "pretrain.py"), *arguments, *tiny(run, 8)],
                            cwd=workdir, env=training_environment(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "4 process(es)" in result.stdout
    assert [os.path.basename(path) for path in list_checkpoints(run)] == ["step_2.pt", "step_4.pt"]  # 2 epochs of 16 mazes, 8 a batch


def test_the_arc_build_commands_run_as_typed(workdir, tmp_path):
    shutil.copytree(os.path.join(workdir, "kaggle"), tmp_path / "kaggle")
    for name, tasks in (("arc1", ["007bbfb7", "00576224", "AboveBelow1"]), ("arc2", ["007bbfb7", "0934a4d8", "AboveBelow1"])):
        run_build(BUILD_COMMANDS[name], str(tmp_path))
        output = tmp_path / "data" / f"{name[:4]}concept-aug-1000"
        with open(output / "identifiers.json") as file:
            identifiers = json.load(file)
        assert [identifier for identifier in identifiers if "_" not in identifier] == ["<blank>", *tasks]
        assert len(identifiers) == 1 + 3 * 1001, "1000 augmented copies of each task (seed 42)"


def test_the_sudoku_and_maze_build_commands_parse():
    sudoku = parse_cli(SudokuBuildConfig, shell_words(BUILD_COMMANDS["sudoku"])[1][1:], "build_sudoku_dataset.py")
    assert (sudoku.output_dir, sudoku.subsample_size, sudoku.num_aug, sudoku.source_repo) == ("data/sudoku-extreme-1k-aug-1000", 1000, 1000, "sapientinc/sudoku-extreme")
    maze = parse_cli(MazeBuildConfig, shell_words(BUILD_COMMANDS["maze"])[1][1:], "build_maze_dataset.py")
    assert (maze.output_dir, maze.source_repo) == ("data/maze-30x30-hard-1k", "sapientinc/maze-30x30-hard-1k")


def readme_trm_commands():
    """The commands of the README's TRM section: {first word's run name or output dir: bash words}."""
    with open(os.path.join(REPO_ROOT, "README.md")) as file:
        section = file.read().split("\n## TRM\n")[1].split("\n## ")[0]
    block = section.split("```\n")[1]
    commands, pending_run_name = {}, None
    for line in block.splitlines():
        if line.startswith("run_name="):
            pending_run_name = line
        elif line.startswith(("python pretrain.py", "torchrun")):
            commands[pending_run_name.split('"')[1]] = shell_words(f"{pending_run_name}\n{line}")
        elif "--output-dir" in line:
            commands[line.split("--output-dir ")[1].split()[0]] = shell_words(line)
    return commands


def test_the_readme_shows_trms_commands_word_for_word():
    readme = readme_trm_commands()
    for name in ("sudoku_mlp_t", "maze", "arc1"):
        assert readme[TRAINING_COMMANDS[name].split('"')[1]] == shell_words(TRAINING_COMMANDS[name]), name
    for name in ("arc1", "arc2"):
        assert readme[f"data/{name}concept-aug-1000"] == shell_words(BUILD_COMMANDS[name]), name


# -- the TRM quick start -------------------------------------------------------------------------


def quickstart_commands(tmp_path) -> list:
    """The words of each python command `bash scripts/quickstart.sh trm` runs (with DATA and RUN in
    tmp_path), as the script passes them; nothing runs."""
    script = 'python() { printf "%s\\0" "$@"; printf "\\n"; }; export -f python; exec bash scripts/quickstart.sh trm'
    environment = dict(os.environ, DATA=str(tmp_path / "data"), RUN=str(tmp_path / "run"))
    output = subprocess.run(["bash", "-c", script], cwd=REPO_ROOT, env=environment, capture_output=True, check=True).stdout.decode()
    return [line.split("\0")[:-1] for line in output.splitlines()]


def test_the_trm_quick_start_learns(tmp_path):
    """The quick start's TRM training command, shortened: 320 of its puzzles, 200 steps (its EMA
    then weighs the first weights little); the test accuracy of its final evaluation against that
    of the same seeded model before training."""
    build, train, _ = quickstart_commands(tmp_path)
    assert build[0] == "dataset/build_sudoku_dataset.py" and train[0] == "pretrain.py"
    assert {"arch=trm", "arch.mlp_t=True", "ema=True"} <= set(train)
    source = tmp_path / "source"
    os.makedirs(source)
    for split, rows in (("train", 320), ("test", 256)):
        write_csv_slice(os.path.join(SUDOKU_SAMPLE, f"{split}.csv"), str(source / f"{split}.csv"), rows)
    flags = build[1:]
    flags[flags.index("--source-repo") + 1], flags[flags.index("--subsample-size") + 1] = str(source), "320"
    subprocess.run([sys.executable, os.path.join(REPO_ROOT, build[0]), *flags], cwd=REPO_ROOT, check=True, capture_output=True)

    overrides = train[1:] + ["epochs=40", "eval_interval=40"]  # 5 steps an epoch
    config = load_config(overrides)
    loader = pretrain.create_dataloader(config, "test", CPU, test_set_mode=True, epochs_per_iter=1)
    before = pretrain.evaluate(config, pretrain.build_train_state(config, loader.metadata, CPU), loader, CPU, save_dir=None)["all"]
    after = train_in_process(overrides)["all"]
    assert before["exact_accuracy"] == 0 and before["accuracy"] < 0.2
    assert after["accuracy"] > 0.5, (before, after)
