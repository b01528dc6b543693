"""utils/config.py: a misspelt key, on the command line or in a saved config, is named with the closest
known key; Hydra's other errors keep their own text."""

import pytest
import yaml

from utils.config import ConfigError, load_config, read_saved_config, save_config, with_derived_names


@pytest.mark.parametrize(
    "override, message",
    [
        # Unknown to Hydra (not in the config files): a sibling first ...
        ("lrr=1", "  lrr: unknown key. Did you mean 'lr'?"),
        ("wandb.mod=online", "  wandb.mod: unknown key. Did you mean 'wandb.mode'?"),
        ("arch.loss.nme=x", "  arch.loss.nme: unknown key. Did you mean 'arch.loss.name'?"),
        # ... then anywhere: an arch key written without its `arch.`.
        ("hidden_size=8", "  hidden_size: unknown key. Did you mean 'arch.hidden_size'?"),
        # Added with '+', Hydra lets it through and pydantic refuses it.
        ("+wandb.mde=online", "  wandb.mde: unknown key. Did you mean 'wandb.mode'?"),
        ("+resum=true", "  resum: unknown key. Did you mean 'resume'?"),
        # Nothing close: where the keys are.
        ("zzzqqq=1", "  zzzqqq: unknown key. The keys are those of config/cfg_pretrain.yaml and config/arch/*.yaml (arch.KEY)."),
    ],
)
def test_unknown_keys_get_the_closest_known_key(override, message):
    with pytest.raises(ConfigError) as raised:
        load_config(["data_path=data/x", override])
    assert str(raised.value) == "Invalid training config:\n" + message


def test_other_hydra_errors_keep_hydras_message():
    with pytest.raises(ConfigError, match=r"Could not compose the config from overrides \['lr'\]: .*Error parsing override 'lr'"):
        load_config(["lr"])


def test_a_saved_config_with_an_unknown_key_is_refused_by_name(tmp_path):
    save_config(load_config(["data_path=data/x"]), str(tmp_path))
    path = tmp_path / "all_config.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["wandb"]["moed"] = raw["wandb"].pop("mode")
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as raised:
        read_saved_config(str(tmp_path))
    assert str(raised.value) == f"{path} is not a valid training config:\n  wandb.moed: unknown key. Did you mean 'wandb.mode'?"


# -- data_paths (TRM) and data_path (HRM) ---------------------------------------------------------


def test_data_path_is_data_paths_of_one_folder_with_the_same_derived_names():
    hrm = load_config(["data_path=data/sudoku-extreme-1k-aug-1000"])
    trm = load_config(["data_paths=[data/sudoku-extreme-1k-aug-1000]"])
    assert hrm.data_paths == trm.data_paths == ["data/sudoku-extreme-1k-aug-1000"] and hrm.data_paths_test == []
    assert hrm.model_dump() == trm.model_dump() and "data_path" not in hrm.model_dump()
    assert with_derived_names(hrm, "HierarchicalReasoningModel_ACTV1").project_name == "Sudoku-extreme-1k-aug-1000 ACT-torch"
    assert load_config(["data_path=data/x", "data_paths=[data/x]"]).data_paths == ["data/x"]
    assert load_config([]).data_paths == ["data/arc-aug-1000"], "HRM's default dataset"


def test_several_data_paths_and_test_paths():
    config = load_config(["data_paths=[data/a,data/b]", "data_paths_test=[data/c]"])
    assert (config.data_paths, config.data_paths_test) == (["data/a", "data/b"], ["data/c"])
    assert with_derived_names(config, "TinyRecursiveReasoningModel_ACTV1").project_name == "A ACT-torch", "named after the first folder"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data_path=data/x", "data_paths=[data/y]"], r"data_path=data/x and data_paths=\['data/y'\] name different datasets: give one of them"),
        (["data_paths=[]"], r"data_paths=\[\] names no dataset: give the folder\(s\) to train on"),
        (["data_paths=[data/a,data/b,data/a/]"], r"data_paths lists data/a more than once"),
    ],
)
def test_data_paths_that_cannot_run_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides)


def test_a_saved_config_with_hrms_data_path_reads_as_data_paths(tmp_path):
    save_config(load_config(["data_path=data/x"]), str(tmp_path))
    path = tmp_path / "all_config.yaml"
    raw = yaml.safe_load(path.read_text())
    assert raw["data_paths"] == ["data/x"] and "data_path" not in raw
    raw["data_path"] = raw.pop("data_paths")[0]  # as runs saved before data_paths existed
    path.write_text(yaml.safe_dump(raw))
    assert read_saved_config(str(tmp_path)).data_paths == ["data/x"]


def test_plus_sets_keys_the_config_already_has():
    """TRM's commands write +run_name=...; Hydra alone refuses `+` over an existing value."""
    config = load_config(["+run_name=pretrain_att_sudoku", "+epochs=50000", "+arch.L_cycles=3", "run_name=x", "+run_name=y"])
    assert (config.run_name, config.epochs, config.arch.model_extra["L_cycles"]) == ("y", 50000, 3)
    assert load_config(["+run_name="]).run_name == "", "an unset shell variable: the name is then derived"
    assert load_config(["arch=trm", "+arch.mlp_t=true"]).arch.model_extra["mlp_t"] is True
