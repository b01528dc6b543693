"""The training configuration: composed by Hydra, validated once by pydantic.

Precedence is Hydra's: the defaults in `config/cfg_pretrain.yaml` and `config/arch/*.yaml`,
then the command-line overrides (`key=value`, `arch.key=value`). The validated result is the
single source of truth for the run and is saved as `<checkpoint_path>/all_config.yaml`.
"""

import difflib
import glob
import os
import re
from typing import List, Literal, Optional

import coolname
import yaml
from omegaconf import OmegaConf
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from utils.files import write_text_atomically

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "config")
SAVED_CONFIG_NAME = "all_config.yaml"


class ConfigError(ValueError):
    """A configuration a user wrote that cannot run; the message names the key and the fix."""


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LossConfig(StrictModel):
    name: str
    loss_type: Literal["stablemax_cross_entropy", "softmax_cross_entropy"] = "stablemax_cross_entropy"


class ArchConfig(BaseModel):
    """`name` and `loss` are ours; the other keys belong to the model class named by `name`,
    whose own config validates them when the model is built (see `model_config_dict`)."""

    model_config = ConfigDict(extra="allow")

    name: str
    loss: LossConfig


class EvaluatorConfig(BaseModel):
    """One entry of `evaluators`: `module@Class` under evaluators/, and keyword arguments for the class."""

    model_config = ConfigDict(extra="allow")

    name: str


class WandbConfig(StrictModel):
    mode: Literal["offline", "online", "disabled"] = "offline"


# What an evaluation can save (eval_save_outputs): the batch's tensors and the loss head's outputs.
SAVEABLE_OUTPUTS = ("inputs", "labels", "puzzle_identifiers", "logits", "preds", "q_halt_logits", "q_continue_logits")


def check_saveable_outputs(names: List[str]) -> List[str]:
    """A pydantic field check of output names (pretrain.py's eval_save_outputs, evaluate.py's save_outputs)."""
    unknown = [name for name in names if name not in SAVEABLE_OUTPUTS]
    if unknown:
        raise ValueError(f"unknown {', '.join(unknown)}; choose from {', '.join(SAVEABLE_OUTPUTS)}")
    return names


class PretrainConfig(StrictModel):
    arch: ArchConfig
    data_paths: List[str] = []  # dataset folders trained as one (TRM's key)
    data_paths_test: List[str] = []  # folders whose test splits are evaluated ([]: those of data_paths)
    # HRM's key, read on input only: data_path=X is data_paths=[X].
    data_path: Optional[str] = Field(None, exclude=True)

    global_batch_size: int
    gradient_accumulation_steps: int = 1
    epochs: int
    eval_interval: Optional[int] = None
    checkpoint_every_eval: bool = False

    lr: float
    lr_min_ratio: float
    lr_warmup_steps: int

    beta1: float
    beta2: float
    weight_decay: float
    puzzle_emb_weight_decay: float
    puzzle_emb_lr: float

    seed: int = 0

    project_name: Optional[str] = None
    run_name: Optional[str] = None
    checkpoint_path: Optional[str] = None

    eval_save_outputs: List[str] = []
    # TRM's keys. evaluators null: ARC pass@K on an ARC dataset, none otherwise.
    evaluators: Optional[List[EvaluatorConfig]] = None
    min_eval_interval: int = 0
    ema: bool = False
    ema_rate: float = 0.999
    load_checkpoint: Optional[str] = None
    freeze_weights: bool = False

    resume: bool = False
    allow_dataset_change: bool = False
    checkpoint_every_steps: Optional[int] = None
    keep_checkpoints: Optional[int] = None
    stop_after_minutes: Optional[float] = None
    compile: Optional[bool] = None
    cuda_graphs: bool = False
    wandb: WandbConfig = WandbConfig()

    known_outputs = field_validator("eval_save_outputs")(check_saveable_outputs)

    @model_validator(mode="after")
    def check_data_paths(self) -> "PretrainConfig":
        if self.data_path is not None:
            if self.data_paths not in ([], [self.data_path]):
                raise ValueError(
                    f"data_path={self.data_path} and data_paths={self.data_paths} name different datasets: give one of them "
                    f"(data_path=X is data_paths=[X])"
                )
            self.data_paths, self.data_path = [self.data_path], None
        if not self.data_paths:
            raise ValueError("data_paths=[] names no dataset: give the folder(s) to train on, e.g. data_paths=[data/sudoku-extreme-1k-aug-1000]")
        for key in ("data_paths", "data_paths_test"):
            paths = [os.path.normpath(path) for path in getattr(self, key)]
            repeated = next((path for path in paths if paths.count(path) > 1), None)
            if repeated is not None:
                raise ValueError(f"{key} lists {repeated} more than once: list each dataset folder once")
        return self

    @model_validator(mode="after")
    def check_values(self) -> "PretrainConfig":
        positive = {"global_batch_size": self.global_batch_size, "gradient_accumulation_steps": self.gradient_accumulation_steps, "epochs": self.epochs}
        for key in ("eval_interval", "checkpoint_every_steps", "keep_checkpoints"):
            if getattr(self, key) is not None:
                positive[key] = getattr(self, key)
        for key, value in positive.items():
            if value <= 0:
                raise ValueError(f"{key}={value} must be a positive integer")
        if self.eval_interval is not None and self.epochs % self.eval_interval != 0:
            raise ValueError(
                f"eval_interval={self.eval_interval} must divide epochs={self.epochs}: "
                f"evaluation runs every eval_interval epochs (e.g. set eval_interval to a divisor of {self.epochs})"
            )
        if self.stop_after_minutes is not None and not self.stop_after_minutes > 0:
            raise ValueError(f"stop_after_minutes={self.stop_after_minutes} must be a positive number of minutes (or null for no limit)")
        if self.cuda_graphs and self.compile is False:
            raise ValueError("cuda_graphs=true needs torch.compile, which captures the graphs: drop compile=false (or set cuda_graphs=false)")
        if self.cuda_graphs and self.gradient_accumulation_steps > 1:
            raise ValueError(
                f"cuda_graphs=true runs one micro-batch per step: a graph replay reuses the memory that holds the previous "
                f"micro-batch's gradients. Set gradient_accumulation_steps=1 (now {self.gradient_accumulation_steps}) or cuda_graphs=false"
            )
        if self.lr_warmup_steps < 0:
            raise ValueError(f"lr_warmup_steps={self.lr_warmup_steps} must be >= 0")
        if self.seed < 0:
            raise ValueError(f"seed={self.seed} must be >= 0: it seeds the weights, the data order and ACT's exploration")
        for key in ("lr", "puzzle_emb_lr", "weight_decay", "puzzle_emb_weight_decay"):
            if not getattr(self, key) >= 0:
                raise ValueError(f"{key}={getattr(self, key)} must be >= 0")
        for key in ("beta1", "beta2"):
            if not 0 <= getattr(self, key) < 1:
                raise ValueError(f"{key}={getattr(self, key)} must be in [0, 1) (the defaults are beta1=0.9, beta2=0.95)")
        if not 0 < self.ema_rate < 1:
            raise ValueError(f"ema_rate={self.ema_rate} must be in (0, 1): each step keeps this share of the average (TRM's default 0.999)")
        if self.min_eval_interval < 0:
            raise ValueError(f"min_eval_interval={self.min_eval_interval} must be >= 0 (the eval intervals to train before the first evaluation)")
        if not 0 <= self.lr_min_ratio <= 1:
            raise ValueError(f"lr_min_ratio={self.lr_min_ratio} must be in [0, 1]: the cosine schedule ends at lr * lr_min_ratio")
        return self

    @property
    def test_data_paths(self) -> List[str]:
        """The folders whose test splits are evaluated: data_paths_test, or else those of data_paths."""
        return self.data_paths_test or self.data_paths

    @property
    def epochs_per_eval(self) -> int:
        return self.eval_interval if self.eval_interval is not None else self.epochs

    @property
    def num_evals(self) -> int:
        return self.epochs // self.epochs_per_eval


def format_validation_error(error: ValidationError, prefix: str = "") -> str:
    """One line per error, each naming its key as written on the command line (with `prefix`)."""
    lines = []
    for item in error.errors():
        key = prefix + ".".join(str(part) for part in item["loc"])
        if item["type"] == "extra_forbidden":
            lines.append(unknown_key_message(key))
        else:
            message = item["msg"].removeprefix("Value error, ")
            lines.append(f"  {key}: {message}" if key else f"  {message}")
    return "\n".join(lines)


def unknown_key_message(key: str) -> str:
    """'  key: unknown key.' and the closest known key: among its siblings first, then anywhere
    (so `hidden_size` finds `arch.hidden_size`)."""
    parent, _, name = key.rpartition(".")
    known = _known_keys()
    for candidates in ([known_key for known_key in known if known_key.rpartition(".")[0] == parent], known):
        by_name = {}
        for known_key in candidates:
            by_name.setdefault(known_key.rpartition(".")[2], known_key)
        guess = difflib.get_close_matches(name, list(by_name), n=1)
        if guess:
            return f"  {key}: unknown key. Did you mean '{by_name[guess[0]]}'?"
    return f"  {key}: unknown key. The keys are those of config/cfg_pretrain.yaml and config/arch/*.yaml (arch.KEY)."


def _known_keys() -> List[str]:
    """Every dotted key of the config files (arch files under `arch.`) and of PretrainConfig."""

    def dotted(tree: dict, prefix: str) -> List[str]:
        keys = []
        for key, value in tree.items():
            keys.append(prefix + key)
            if isinstance(value, dict):
                keys += dotted(value, f"{prefix}{key}.")
        return keys

    def read(path: str) -> dict:
        with open(path) as file:
            return yaml.safe_load(file) or {}

    keys = dotted({key: value for key, value in read(os.path.join(CONFIG_DIR, "cfg_pretrain.yaml")).items() if key != "defaults"}, "")
    for path in sorted(glob.glob(os.path.join(CONFIG_DIR, "arch", "*.yaml"))):
        keys += dotted(read(path), "arch.")
    return list(dict.fromkeys(keys + list(PretrainConfig.model_fields)))


def environment_overrides(environ) -> List[str]:
    """The original's environment switch as the config key it stands for: DISABLE_COMPILE (set to
    anything) is compile=false. Entry points read the environment once and append these overrides,
    so the saved config records them."""
    return ["compile=false"] if "DISABLE_COMPILE" in environ else []


def dataset_setting(config: PretrainConfig) -> str:
    """The trained datasets as a user sets them: data_path=X for one folder, data_paths=[X,Y] for several."""
    if len(config.data_paths) == 1:
        return f"data_path={config.data_paths[0]}"
    return f"data_paths=[{','.join(config.data_paths)}]"


def validate_config(raw: dict) -> PretrainConfig:
    try:
        return PretrainConfig(**raw)
    except ValidationError as error:
        raise ConfigError("Invalid training config:\n" + format_validation_error(error)) from None


def as_hydra_overrides(overrides: List[str]) -> List[str]:
    """The command line as Hydra should read it, for TRM's and HRM's spellings alike."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    result = []
    for override in parsed:
        is_group = os.path.isdir(os.path.join(CONFIG_DIR, override.key_or_group))
        # TRM's commands append keys that our config files already define (`+run_name=...`); Hydra
        # refuses to append over a value, while `++` sets a key whether or not it exists.
        result.append("+" + override.input_line if override.is_add() and not is_group else override.input_line)
    keys = {override.key_or_group for override in parsed}
    if "data_path" in keys and "data_paths" not in keys:
        result.append("data_paths=[]")  # HRM's data_path=X stands for data_paths=[X]: no default list beside it
    return result


def load_config(overrides: List[str], config_name: str = "cfg_pretrain") -> PretrainConfig:
    """Compose `config/<config_name>.yaml` with Hydra, apply command-line overrides, validate."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        hydra_overrides = as_hydra_overrides(overrides)
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
            composed = compose(config_name=config_name, overrides=hydra_overrides)
        raw = OmegaConf.to_container(composed, resolve=True)
    except (HydraException, OmegaConfBaseException) as error:
        unknown = re.search(r"Could not override '([^']+)'", str(error))
        if unknown:
            raise ConfigError("Invalid training config:\n" + unknown_key_message(unknown.group(1))) from None
        raise ConfigError(
            f"Could not compose the config from overrides {overrides}: {error}\n"
            "Overrides look like key=value or arch.key=value; keys are listed in config/cfg_pretrain.yaml "
            "and config/arch/hrm_v1.yaml."
        ) from None
    return validate_config(raw)


def check_world_size(config: PretrainConfig, world_size: int) -> None:
    """Every process takes an equal slice of each global batch and splits it into
    gradient_accumulation_steps equal micro-batches."""
    accumulation = config.gradient_accumulation_steps
    parts = world_size * accumulation
    if config.global_batch_size % parts == 0:
        return
    example = max(parts, config.global_batch_size // parts * parts)
    if accumulation == 1:
        raise ConfigError(
            f"global_batch_size={config.global_batch_size} is not divisible by the world size {world_size}: "
            f"every process takes an equal slice of each batch. Set global_batch_size to a multiple of "
            f"{world_size} (e.g. {example}) or change --nproc-per-node."
        )
    raise ConfigError(
        f"global_batch_size={config.global_batch_size} is not divisible by the world size {world_size} x "
        f"gradient_accumulation_steps={accumulation} = {parts}: every process splits its slice of each batch into "
        f"{accumulation} equal micro-batches. Set global_batch_size to a multiple of {parts} (e.g. {example}), "
        "or change gradient_accumulation_steps or --nproc-per-node."
    )


def micro_batch_size(config: PretrainConfig, world_size: int) -> int:
    """Sequences in one forward pass of one process."""
    return config.global_batch_size // (world_size * config.gradient_accumulation_steps)


def with_derived_names(config: PretrainConfig, model_class_name: str) -> PretrainConfig:
    """Fill project_name, run_name and checkpoint_path as the original does, where not given."""
    project_name = config.project_name or f"{os.path.basename(os.path.normpath(config.data_paths[0])).capitalize()} ACT-torch"
    run_name = config.run_name or f"{model_class_name} {coolname.generate_slug(2)}"
    checkpoint_path = config.checkpoint_path or os.path.join("checkpoints", project_name, run_name)
    return config.model_copy(update=dict(project_name=project_name, run_name=run_name, checkpoint_path=checkpoint_path))


def model_config_dict(config: PretrainConfig, **dataset_fields) -> dict:
    """The model constructor's dict: the arch keys other than name/loss, plus the dataset's shape."""
    return {**config.arch.model_extra, **dataset_fields}


def save_config(config: PretrainConfig, folder: str) -> str:
    """Write the resolved config as YAML, atomically."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, SAVED_CONFIG_NAME)
    write_text_atomically(path, yaml.safe_dump(config.model_dump(), sort_keys=False))
    return path


def read_saved_config(folder: str) -> PretrainConfig:
    path = os.path.join(folder, SAVED_CONFIG_NAME)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} not found: evaluation needs the config that training saved next to its checkpoints. "
            "Pass a checkpoint that lives in its run folder (checkpoints/<project>/<run>/step_N.pt)."
        )
    with open(path) as file:
        raw = yaml.safe_load(file)
    try:
        return PretrainConfig(**raw)
    except ValidationError as error:
        raise ConfigError(f"{path} is not a valid training config:\n" + format_validation_error(error)) from None
