"""utils/config.py: a misspelt key, on the command line or in a saved config, is named with the closest
known key; Hydra's other errors keep their own text."""

import pytest
import yaml

from utils.config import ConfigError, load_config, read_saved_config, save_config


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
