"""Training configuration: dataclasses, TOML recipes and type-checked command-line overrides.

A run's configuration is resolved in three layers, later ones winning: the dataclass defaults
(the official common settings, OFFICIAL_CAVMAE.md §5), a recipe file (``training/recipes/*.toml``,
mirroring the official ``egs/`` scripts) and ``--key value`` options. Every value is checked
against the field's type; booleans are real flags (``--tensorboard`` / ``--no-tensorboard``).
Two nested tables take field overrides of other dataclasses: ``model_args`` (fields of
:class:`cavmae.config.ModelConfig`, e.g. ``--model_args.norm_pix_loss``) and ``augment``
(fields of :class:`training.augment.AugmentConfig`, e.g. ``--augment.mixup 0.3``).

The resolved configuration is saved as ``config.json`` in the run directory (nanoGPT's
override files and MAE's logged ``args``, but typed; STYLE.md rule 19).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from cavmae.config import MODEL_PRESETS, ModelConfig
from cavmae.errors import ConfigError

__all__ = [
    "TrainConfig",
    "PretrainConfig",
    "FinetuneConfig",
    "AmpMode",
    "load_recipe",
    "build_config",
    "parse_cli",
    "resolve_model_config",
    "resolve_augment_config",
]

AmpMode = Literal["auto", "bf16", "fp16", "fp32"]
ScheduleName = Literal["multistep", "cosine", "constant"]
OptimizerName = Literal["adam", "adamw"]


@dataclass(frozen=True)
class TrainConfig:
    """Settings shared by pretraining and fine-tuning (see the subclasses for the defaults).

    Batch sizes are **global**: ``batch_size`` clips per optimizer step over all processes and
    accumulation micro-steps, so a recipe means the same optimisation on CPU, on one GPU or
    under torchrun. Each process loads ``batch_size // (world_size * accum_steps)`` clips per
    micro-step.
    """

    kind: ClassVar[str] = "train"

    recipe: str = ""  # name of the recipe this config came from (informational)
    # ------------------------------------------------------------------ model
    model: str = "cavmae_base"  # preset name in cavmae.config.MODEL_PRESETS
    model_args: dict[str, Any] = field(default_factory=dict)  # ModelConfig field overrides
    init: str = "scratch"  # scratch | checkpoint path or zoo name | imagenet-mae:<timm name/path>
    # ------------------------------------------------------------------ data
    data: str = ""  # a prepared dataset directory or an official data-list JSON
    val_data: str = ""  # separate validation set; "" = hold out val_fraction of `data`
    val_fraction: float = 0.1  # class-stratified hold-out when val_data is ""; 0 = no validation
    split_seed: int = 0  # seed of that hold-out split
    label_csv: str = ""  # label CSV for a JSON data list ("" = next to the JSON)
    balanced: bool = False  # official --bal bal: weighted sampling with replacement
    augment: dict[str, Any] = field(default_factory=dict)  # AugmentConfig field overrides
    num_workers: int = 4
    pin_memory: bool = True
    # ------------------------------------------------------------------ optimisation
    batch_size: int = 48  # global clips per optimizer step
    accum_steps: int = 1  # gradient-accumulation micro-steps per optimizer step
    epochs: int = 25
    max_steps: int = 0  # stop (resumably) after this many optimizer steps in total; 0 = off
    lr: float = 5e-5
    schedule: ScheduleName = "multistep"
    lr_start: int = 10  # official lrscheduler_start: first epoch boundary with a decay
    lr_step: int = 5  # official lrscheduler_step
    lr_decay: float = 0.5  # official lrscheduler_decay
    warmup_epochs: float = 0.0  # cosine/constant only; the official recipes have no warmup
    min_lr: float = 0.0  # cosine only
    optimizer: OptimizerName = "adam"  # official: torch.optim.Adam with coupled L2 decay
    betas: tuple[float, float] = (0.95, 0.999)
    weight_decay: float = 5e-7
    eps: float = 1e-8
    clip_grad: float = 0.0  # max global grad norm; 0 = off (official: no clipping)
    # ------------------------------------------------------------------ runtime
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: AmpMode = "auto"  # auto = bf16 on CUDA, fp32 on CPU; fp16 uses a GradScaler
    compile: bool = False  # torch.compile the model
    fused_optimizer: bool = True  # fused Adam kernel on CUDA (ignored on CPU)
    seed: int = 0
    out_dir: str = ""  # run directory (required)
    resume: str = "auto"  # auto = <out_dir>/last.pt when present; "" = never; or a path
    save_every: int = 1  # write an epoch model file every N epochs (0 = only the final model)
    save_every_steps: int = 0  # also write last.pt every N optimizer steps (0 = epoch ends only)
    eval_every: int = 1  # evaluate every N epochs (and always after the last)
    log_every: int = 20  # optimizer steps between metric records
    tensorboard: bool = True
    progress: bool = True  # tqdm bar on rank 0 (only when stderr is a terminal)

    # ------------------------------------------------------------------ validation
    def __post_init__(self) -> None:
        _check_types(self)
        if self.model not in MODEL_PRESETS:
            raise ConfigError(
                f"unknown model preset {self.model!r}; choose one of {sorted(MODEL_PRESETS)}"
            )
        positive = ("batch_size", "accum_steps", "epochs", "log_every", "eval_every", "lr_step")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_steps", "save_every", "save_every_steps", "num_workers", "lr_start"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.batch_size % self.accum_steps:
            raise ConfigError(
                f"batch_size ({self.batch_size}) must be a multiple of accum_steps "
                f"({self.accum_steps})"
            )
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"betas must be in [0, 1), got {self.betas}")
        resolve_model_config(self)  # validates model_args
        resolve_augment_config(self)  # validates augment

    # ------------------------------------------------------------------ helpers
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (with ``kind``)."""
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return {"kind": self.kind, **d}

    def save_json(self, path: str | Path) -> None:
        """Write :meth:`to_dict` as indented JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    def replace(self, **changes: Any) -> TrainConfig:
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def micro_batch(self, world_size: int) -> int:
        """Clips per process and micro-step.

        Raises:
            ConfigError: if the global batch does not split evenly.
        """
        denom = world_size * self.accum_steps
        if self.batch_size % denom:
            raise ConfigError(
                f"batch_size {self.batch_size} does not split over {world_size} process(es) x "
                f"{self.accum_steps} accumulation step(s); use a multiple of {denom}"
            )
        return self.batch_size // denom


@dataclass(frozen=True)
class PretrainConfig(TrainConfig):
    """Pretraining settings; defaults are the official base recipe (OFFICIAL_CAVMAE.md §5.2).

    Objective switches: ``contrast_loss_weight=0`` gives AV-MAE, ``mae_loss_weight=0`` a
    contrastive-only model. ``gather_negatives`` uses every process's clips as contrastive
    negatives (an improvement over the official per-GPU negatives). ``loss_scale_replicas=R``
    (R > 1) reproduces the official 4-GPU DataParallel numerics on any hardware: the contrastive
    negatives are limited to groups of ``batch_size / R`` clips and the loss (and the logged
    losses) are the *sum* over the R groups (OFFICIAL_CAVMAE.md §5.1, pitfall 16).
    """

    kind: ClassVar[str] = "pretrain"

    mask_ratio_a: float = 0.75
    mask_ratio_v: float = 0.75
    # Not official (None = off): each training step draws its audio mask ratio uniformly in
    # this [lo, hi] range, so the model learns to use any amount of context (evaluation
    # keeps mask_ratio_a).
    mask_ratio_a_range: tuple[float, float] | None = None
    # With mask_ratio_a_range: round each drawn ratio to a multiple of this step (0 = draw
    # continuously). On CPUs a new token count almost every step makes the process grow by GBs
    # and a step 5-11 % slower; a few repeating counts (0.05: 13) do not (docs/PERFORMANCE.md).
    mask_ratio_a_step: float = 0.0
    mask_mode: str = "unstructured"  # unstructured | time | freq | tf (audio only)
    mae_loss_weight: float = 1.0
    contrast_loss_weight: float = 0.01
    bidirect_contrast: bool = False  # official: single direction (video -> audio)
    gather_negatives: bool = True
    loss_scale_replicas: int = 1  # 1 = off; 4 = official 4-GPU sum
    # Not official (0 = off in every official recipe): audio-to-patch InfoNCE, see
    # cavmae.models.losses.patch_contrastive_loss; negatives are the local batch.
    patch_contrast_weight: float = 0.0
    patch_contrast_temperature: float = 0.05
    # How many best visible patches of a frame make its score in that term (1 = the max).
    patch_contrast_topk: int = 1
    # Not official (0 = off): training batches made of groups of this many clips of one class
    # (training.samplers.ClassGroupedSampler), so contrastive negatives share the class.
    class_groups: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.class_groups < 0:
            raise ConfigError(f"class_groups must be >= 0 (0 = off), got {self.class_groups}")
        for name in ("mask_ratio_a", "mask_ratio_v"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.mask_ratio_a_range is not None:
            lo, hi = self.mask_ratio_a_range
            if not 0.0 <= lo <= hi < 1.0:
                raise ConfigError(
                    f"mask_ratio_a_range must satisfy 0 <= lo <= hi < 1, got {self.mask_ratio_a_range}"
                )
        if not 0.0 <= self.mask_ratio_a_step < 1.0:
            raise ConfigError(f"mask_ratio_a_step must be in [0, 1), got {self.mask_ratio_a_step}")
        if self.mae_loss_weight < 0 or self.contrast_loss_weight < 0:
            raise ConfigError("mae_loss_weight and contrast_loss_weight must be >= 0")
        if self.patch_contrast_weight < 0 or self.patch_contrast_temperature <= 0:
            raise ConfigError(
                "patch_contrast_weight must be >= 0 and patch_contrast_temperature > 0"
            )
        if self.patch_contrast_topk < 1:
            raise ConfigError(f"patch_contrast_topk must be >= 1, got {self.patch_contrast_topk}")
        if self.mae_loss_weight == 0 and self.contrast_loss_weight == 0:
            raise ConfigError(
                "mae_loss_weight and contrast_loss_weight are both 0: nothing to learn"
            )
        if self.loss_scale_replicas < 1:
            raise ConfigError(f"loss_scale_replicas must be >= 1, got {self.loss_scale_replicas}")
        if self.loss_scale_replicas > 1:
            if self.batch_size % self.loss_scale_replicas:
                raise ConfigError(
                    f"batch_size {self.batch_size} is not a multiple of loss_scale_replicas "
                    f"{self.loss_scale_replicas}"
                )
        from cavmae.models.masking import MASK_MODES

        if self.mask_mode not in MASK_MODES:
            raise ConfigError(f"unknown mask_mode {self.mask_mode!r}; choose one of {MASK_MODES}")


@dataclass(frozen=True)
class FinetuneConfig(TrainConfig):
    """Fine-tuning settings; defaults are the official AS-20K recipe (OFFICIAL_CAVMAE.md §5.3).

    ``loss="auto"`` picks BCEWithLogits for multi-label data and cross-entropy with soft targets
    for single-label data; ``metric="auto"`` picks mAP or accuracy the same way. The head
    (``model.head_parameters()``) trains at ``head_lr_ratio`` times the LR; ``freeze_base``
    trains the head alone (linear probing). ``wa`` averages the epoch models
    ``wa_start..wa_end`` (1-based, inclusive) after training (§3.4).
    """

    kind: ClassVar[str] = "finetune"

    model: str = "cavmae_base"
    init: str = "cav-mae-scale++"  # official start: the Scale++ pretrained model (zoo name)
    batch_size: int = 36
    epochs: int = 15
    lr: float = 5e-5
    lr_start: int = 5
    lr_step: int = 1
    mode: str = "multimodal"  # multimodal | audioonly | videoonly
    loss: Literal["auto", "bce", "ce"] = "auto"
    metric: Literal["auto", "mAP", "acc"] = "auto"
    head_lr_ratio: float = 100.0
    freeze_base: bool = False
    wa: bool = True
    wa_start: int = 3
    wa_end: int = 15
    multi_frame_eval: bool = True  # final evaluation averages predictions over every frame

    def __post_init__(self) -> None:
        super().__post_init__()
        from cavmae.models.cavmae_ft import FT_MODES

        if self.mode not in FT_MODES:
            raise ConfigError(f"unknown mode {self.mode!r}; choose one of {FT_MODES}")
        if self.head_lr_ratio <= 0:
            raise ConfigError(f"head_lr_ratio must be positive, got {self.head_lr_ratio}")
        if self.wa and not 1 <= self.wa_start <= self.wa_end:
            raise ConfigError(
                f"weight averaging needs 1 <= wa_start <= wa_end, got {self.wa_start}..{self.wa_end}"
            )
        if self.wa and self.wa_start > self.epochs:
            raise ConfigError(
                f"weight averaging starts at epoch {self.wa_start} but the run has only "
                f"{self.epochs} epoch(s); lower --wa_start (and --wa_end) or pass --no-wa"
            )


# ---------------------------------------------------------------------- nested configs


def resolve_model_config(cfg: TrainConfig, **changes: Any) -> ModelConfig:
    """The :class:`ModelConfig` of ``cfg``: its preset with ``model_args`` (and ``changes``).

    Raises:
        ConfigError: for an unknown field or a wrongly typed value in ``model_args``.
    """
    args = dict(cfg.model_args)
    args.update(changes)
    hints = typing.get_type_hints(ModelConfig)
    for key, value in args.items():
        if key not in hints:
            raise ConfigError(
                f"model_args.{key} is not a ModelConfig field; known: {sorted(hints)}"
            )
        args[key] = _coerce(hints[key], value, f"model_args.{key}")
    return MODEL_PRESETS[cfg.model](**args)


def resolve_augment_config(cfg: TrainConfig) -> Any:
    """The ``training.augment.AugmentConfig`` of ``cfg``.

    Starts from the official pretraining (noise only) or fine-tuning (noise, SpecAugment 48/192,
    mixup 0.5, label smoothing 0.1) defaults and applies ``cfg.augment``.

    Raises:
        ConfigError: for an unknown field or a wrongly typed value.
    """
    from training.augment import AugmentConfig

    hints = typing.get_type_hints(AugmentConfig)
    args: dict[str, Any] = {}
    for key, value in cfg.augment.items():
        if key not in hints:
            raise ConfigError(
                f"augment.{key} is not an AugmentConfig field; known: {sorted(hints)}"
            )
        args[key] = _coerce(hints[key], value, f"augment.{key}")
    base = AugmentConfig.finetune() if cfg.kind == "finetune" else AugmentConfig.pretrain()
    return AugmentConfig.from_dict({**base.to_dict(), **args})


# ---------------------------------------------------------------------- type checking


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it normalised (int -> float...).

    Raises:
        ConfigError: naming ``where`` when the value does not fit.
    """
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for opt in options:
            if opt is type(None):
                continue
            try:
                return _coerce(opt, value, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{where} must be one of {list(allowed)}, got {value!r}")
        return value
    if origin is tuple:
        elems = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(elems):
            raise ConfigError(f"{where} must be a list of {len(elems)} values, got {value!r}")
        return tuple(
            _coerce(t, v, f"{where}[{i}]")
            for i, (t, v) in enumerate(zip(elems, value, strict=True))
        )
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a table/dict, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported field type {tp!r}")


def _check_types(cfg: TrainConfig) -> None:
    """Validate (and normalise in place) every field of a frozen config."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = _coerce(hints[f.name], getattr(cfg, f.name), f.name)
        object.__setattr__(cfg, f.name, value)


# ---------------------------------------------------------------------- recipes


def load_recipe(name_or_path: str) -> dict[str, Any]:
    """Read a recipe TOML file: a bundled name (``tiny_smoke``) or a path.

    Returns:
        The parsed table (with its ``kind`` key, and ``recipe`` set to the file's stem).

    Raises:
        ConfigError: if the file does not exist or is not valid TOML.
    """
    from training.recipes import recipe_path

    path = recipe_path(name_or_path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"recipe {path} is not valid TOML: {e}") from e
    data.setdefault("recipe", path.stem)
    return data


def build_config(
    cls: type[TrainConfig],
    recipe: str | dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
) -> TrainConfig:
    """Resolve defaults < recipe < overrides into a validated config.

    Args:
        cls: :class:`PretrainConfig` or :class:`FinetuneConfig`.
        recipe: a recipe name/path, an already parsed recipe dict, or None.
        overrides: field -> value; ``model_args``/``augment`` dicts are merged key by key.

    Raises:
        ConfigError: unknown keys, wrong types, or a recipe of the other kind.
    """
    values: dict[str, Any] = {}
    layers = []
    if recipe is not None:
        layers.append(load_recipe(recipe) if isinstance(recipe, str) else dict(recipe))
    if overrides:
        layers.append(dict(overrides))
    names = {f.name for f in dataclasses.fields(cls)}
    for layer in layers:
        kind = layer.pop("kind", cls.kind)
        if kind != cls.kind:
            raise ConfigError(
                f"recipe {layer.get('recipe', '?')!r} is a {kind} recipe; use training.{kind}"
            )
        for key, value in layer.items():
            if key not in names:
                raise ConfigError(f"unknown {cls.kind} setting {key!r}; known: {sorted(names)}")
            if key in ("model_args", "augment") and isinstance(value, dict):
                values[key] = {**values.get(key, {}), **value}
            else:
                values[key] = value
    return cls(**values)


# ---------------------------------------------------------------------- command line


def _nested_fields() -> dict[str, dict[str, Any]]:
    from training.augment import AugmentConfig

    return {
        "model_args": typing.get_type_hints(ModelConfig),
        "augment": typing.get_type_hints(AugmentConfig),
    }


def _arg_type(tp: Any) -> dict[str, Any]:
    """argparse keyword arguments for a field annotation."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [t for t in typing.get_args(tp) if t is not type(None)][0]
        base = _arg_type(inner)
        if "nargs" in base:  # an optional tuple: N values on the command line (None = unset)
            return base
        conv = base.get("type", str)
        return {"type": lambda s, conv=conv: None if s.lower() == "none" else conv(s)}
    if origin is Literal:
        return {"choices": list(typing.get_args(tp))}
    if origin is tuple:
        elems = typing.get_args(tp)
        return {"nargs": len(elems), "type": elems[0]}
    if tp is bool:
        return {"action": argparse.BooleanOptionalAction}
    return {"type": tp}


_FIELD_LINE = re.compile(r"^\s+(\w+):[^=]*=.*?#\s*(.+)$")


def _field_help(cls: type) -> dict[str, str]:
    """Field name -> its trailing source comment, over the class hierarchy (for --help)."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            lines = inspect.getsource(klass).splitlines()
        except (OSError, TypeError):
            continue
        for line in lines:
            m = _FIELD_LINE.match(line)
            if m:
                out[m.group(1)] = m.group(2).replace("%", "%%")
    return out


def make_parser(cls: type[TrainConfig]) -> argparse.ArgumentParser:
    """An argparse parser with one option per config field (defaults suppressed)."""
    p = argparse.ArgumentParser(
        prog=f"python -m training.{cls.kind}",
        description=f"CAV-MAE {cls.kind}. Options override the recipe, which overrides defaults.",
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument("--recipe", help="recipe name (training/recipes/*.toml) or path")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    hints = typing.get_type_hints(cls)
    helps = _field_help(cls)
    for f in dataclasses.fields(cls):
        if f.name in ("model_args", "augment", "recipe"):
            continue  # nested tables get dotted options below; --recipe sets `recipe`
        flags = [f"--{f.name}"]
        if "_" in f.name:
            flags.append(f"--{f.name.replace('_', '-')}")
        if f.name == "out_dir":
            flags.append("--out")
        default = f.default if f.default is not dataclasses.MISSING else None
        text = helps.get(f.name, "")
        p.add_argument(
            *flags,
            dest=f.name,
            help=f"{text} (default: {default!r})".strip(),
            **_arg_type(hints[f.name]),
        )
    for section, fields in _nested_fields().items():
        group = p.add_argument_group(
            f"{section} (fields of {'ModelConfig' if section == 'model_args' else 'AugmentConfig'})"
        )
        for name, tp in fields.items():
            group.add_argument(f"--{section}.{name}", dest=f"{section}.{name}", **_arg_type(tp))
    return p


def parse_cli(cls: type[TrainConfig], argv: list[str] | None = None) -> tuple[TrainConfig, bool]:
    """Parse ``argv`` into a validated config.

    Returns:
        ``(config, print_only)`` where ``print_only`` is set by ``--print-config``.

    Raises:
        ConfigError: for invalid values (argparse itself exits on unknown options).
    """
    ns = vars(make_parser(cls).parse_args(argv))
    recipe = ns.pop("recipe", None)
    print_only = bool(ns.pop("print_config", False))
    overrides: dict[str, Any] = {}
    for key, value in ns.items():
        if "." in key:
            section, name = key.split(".", 1)
            overrides.setdefault(section, {})[name] = value
        else:
            overrides[key] = list(value) if isinstance(value, list) else value
    return build_config(cls, recipe, overrides), print_only
