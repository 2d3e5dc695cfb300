"""Bundled training recipes (TOML), mirroring the official ``egs/`` scripts.

Each ``*.toml`` file here holds a ``kind`` (``"pretrain"`` or ``"finetune"``) and any fields of
:class:`training.config.PretrainConfig` / :class:`training.config.FinetuneConfig`, with the
nested tables ``[model_args]`` and ``[augment]``. Use them by name:
``python -m training.pretrain --recipe as2m_pretrain_base --data DIR --out runs/base``.
"""

from __future__ import annotations

from pathlib import Path

from cavmae.errors import ConfigError

__all__ = ["RECIPES_DIR", "list_recipes", "recipe_path"]

RECIPES_DIR = Path(__file__).resolve().parent


def list_recipes() -> list[str]:
    """Names of the bundled recipes, sorted."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.toml"))


def recipe_path(name_or_path: str) -> Path:
    """The file of a bundled recipe name or an existing ``.toml`` path.

    Raises:
        ConfigError: if neither exists (the message lists the bundled recipes).
    """
    p = Path(name_or_path).expanduser()
    if p.suffix == ".toml" and p.is_file():
        return p
    bundled = RECIPES_DIR / f"{name_or_path}.toml"
    if bundled.is_file():
        return bundled
    raise ConfigError(
        f"no recipe {name_or_path!r}: not a .toml file and not one of {list_recipes()}"
    )
