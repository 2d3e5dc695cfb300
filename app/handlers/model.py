"""The Model tab: choose the session's model and describe it.

Sources: the bundled demo, a published checkpoint from the zoo (downloaded into the cache with
progress when online), a local file (a path on the server or an upload; official ``.pth`` or
our ``.safetensors``), or a run trained in the Train tab. A second checkpoint (the pretraining
model next to a classifier) and a label CSV are optional. The choice is per session: another
visitor keeps their model. Loaded models are shared through the cache.
"""

from __future__ import annotations

import html
import logging
from pathlib import Path
from typing import Any

from app.handlers.common import SessionState, predictor_for, progress_fn, session, user_errors
from app.services import ModelSpec, Services
from cavmae.errors import CavmaeError, ConfigError

__all__ = [
    "SOURCES",
    "zoo_choices",
    "run_choices",
    "spec_from_form",
    "load_model",
    "model_overview",
    "model_status",
    "labels_table",
]

logger = logging.getLogger(__name__)

SOURCES = ("Bundled demo", "Model zoo", "Local file", "Training run")


def zoo_choices() -> list[tuple[str, str]]:
    """(label, name) pairs of the published checkpoints for a dropdown."""
    from cavmae import zoo

    out = []
    for e in zoo.list_models():
        what = e.metric or ("pretrained" if e.kind == "pretrain" else "classifier")
        out.append((f"{e.name} — {what}", e.name))
    return out


def run_choices(services: Services) -> list[str]:
    """Names of finished runs (with ``model.safetensors``) under the runs folder."""
    from training.runs import list_runs

    return [r.name for r in list_runs(services.settings.runs_dir) if r.has_model]


def spec_from_form(
    services: Services,
    source: str,
    zoo_name: str | None = None,
    path: str | None = None,
    upload: str | None = None,
    pretrain: str | None = None,
    pretrain_upload: str | None = None,
    labels: str | None = None,
    run: str | None = None,
    precision: str | None = None,
) -> ModelSpec:
    """The :class:`ModelSpec` a filled-in Model form asks for.

    ``precision`` equal to the app's ``--precision`` (or empty) gives a spec without one, so
    that the start model is not loaded twice.

    Raises:
        ConfigError: With what is missing in the form.
    """
    companion = (pretrain_upload or pretrain or "").strip() or None
    labels = (labels or "").strip() or None
    prec = precision or None
    if prec == services.settings.precision:
        prec = None
    if source == "Bundled demo":
        return ModelSpec("demo", companion, labels, prec)
    if source == "Model zoo":
        if not zoo_name:
            raise ConfigError("choose a model from the zoo list")
        return ModelSpec(zoo_name, companion, labels, prec)
    if source == "Local file":
        chosen = upload or (path or "").strip()
        if not chosen:
            raise ConfigError("give the path of a checkpoint on this machine, or upload one")
        return ModelSpec(str(Path(chosen).expanduser()), companion, labels, prec)
    if source == "Training run":
        if not run:
            raise ConfigError("choose a finished training run (the Train tab lists them)")
        return ModelSpec(str(services.settings.runs_dir / run), companion, labels, prec)
    raise ConfigError(f"unknown model source {source!r}; choose one of {SOURCES}")


def _millions(n: int) -> str:
    return f"{n / 1e6:.1f} M" if n >= 1e5 else f"{n / 1e3:.0f} k"


def _training(meta: dict[str, Any]) -> str:
    """What the model was trained on/with, from the zoo entry or our provenance record."""
    from cavmae import zoo

    name = meta.get("zoo")
    if name and name in zoo.ZOO:
        e = zoo.ZOO[name]
        return f"{e.purpose}" + (f" — {e.metric}" if e.metric else "")
    prov = meta.get("provenance") or {}
    parts = []
    if prov.get("recipe"):
        parts.append(f"recipe {prov['recipe']}")
    if prov.get("epochs"):
        parts.append(f"{prov['epochs']} epochs")
    if prov.get("init") and prov.get("init") != "scratch":
        parts.append(f"from {Path(str(prov['init'])).parent.name or prov['init']}")
    if prov.get("source"):
        parts.append(f"converted from {Path(str(prov['source'])).name}")
    return ", ".join(parts) if parts else "not recorded in the file"


def _metrics(metrics: dict[str, Any]) -> str:
    """The headline metrics (final/validation mAP, accuracy, loss), at most four."""
    keys = [
        k
        for k, v in metrics.items()
        if isinstance(v, (int, float))
        and not isinstance(v, bool)
        and not k.startswith("frame")
        and "num_" not in k
        and "candidates" not in k
        and k != "lr"
    ]
    keys.sort(key=lambda k: (not k.startswith("final_"), not k.endswith(("mAP", "acc")), k))
    return ", ".join(f"{k}={metrics[k]:.3g}" for k in keys[:4])


def _column(d: dict[str, Any]) -> dict[str, str]:
    cfg = d["config"]
    meta = d.get("meta") or {}
    shared = cfg.get("shared_depth") or 12 - cfg["modality_specific_depth"]
    rows = {
        "Source": html.escape(Path(d["source"]).name if d.get("source") else "in memory"),
        "Parameters": _millions(int(d["parameters"])),
        "Width / heads": f"{cfg['embed_dim']} / {cfg['num_heads']}",
        "Encoder blocks": f"{cfg['modality_specific_depth']} per modality + {shared} shared",
        "Input": f"{cfg['audio_length']}×{cfg['num_mel_bins']} fbank, {cfg['img_size']}² frames, patch {cfg['patch_size']}",
        "Training": html.escape(_training(meta)),
    }
    if cfg.get("label_dim") is None:
        rows["Decoder"] = f"{cfg['decoder_depth']} blocks × {cfg['decoder_embed_dim']}"
        rows["norm_pix_loss"] = str(bool(d.get("norm_pix_loss")))
    else:
        rows["Classes"] = str(d.get("num_labels"))
        rows["Mode"] = str(d.get("mode") or "multimodal")
    metrics = _metrics(meta.get("metrics") or {})
    if metrics:
        rows["Metrics"] = html.escape(metrics)
    return rows


def model_overview(predictor: Any, title: str) -> str:
    """Markdown table of the architecture, labels, training data and device of a predictor."""
    d = predictor.describe()
    cols = [(name, _column(d[name])) for name in ("pretrain", "classifier") if name in d]
    keys: list[str] = []
    for _, c in cols:
        keys += [k for k in c if k not in keys]
    head = (
        "| | "
        + " | ".join(
            "Pretrained model (reconstruction, similarity, retrieval)"
            if n == "pretrain"
            else "Classifier"
            for n, _ in cols
        )
        + " |"
    )
    lines = [f"### {html.escape(title)}", "", head, "|---" * (len(cols) + 1) + "|"]
    for k in keys:
        lines.append(f"| {k} | " + " | ".join(c.get(k, "—") for _, c in cols) + " |")
    can = []
    can.append(
        "reconstruct ✔" if predictor.can_reconstruct else "reconstruct ✘ (needs a pretrained model)"
    )
    can.append("classify ✔" if predictor.can_classify else "classify ✘ (needs a classifier)")
    head_kind = ""
    if predictor.can_classify:
        head_kind = (
            " · multi-label (sigmoid)" if predictor.multi_label else " · single-label (softmax)"
        )
    device = f"Device **{d['device']}**"
    if d.get("precision"):
        device += f" ({d['precision']})"
    lines += ["", f"{device} · " + " · ".join(can) + head_kind]
    return "\n".join(lines)


def labels_table(predictor: Any) -> list[list[Any]]:
    """Rows ``[index, name]`` of the classifier's labels (empty without a classifier)."""
    return [[i, name] for i, name in enumerate(predictor.labels)]


def model_status(
    services: Services, state: SessionState | None
) -> tuple[SessionState, str, str, list[list[Any]]]:
    """Status line, overview and labels of the session's model; never raises.

    Used when a page opens: if the start model is missing (for example the bundled demo has not
    been trained yet), the status says so and how to load another one.
    """
    state = session(services, state)
    assert state.model is not None
    try:
        predictor = predictor_for(services, state)
    except CavmaeError as e:
        msg = (
            f"⚠️ **The model {html.escape(state.model.title)} could not be loaded.** {html.escape(str(e))}"
            "\n\nLoad another one in the **Model** tab (a zoo checkpoint, a local file or a training run)."
        )
        return state, msg, "", []
    return (
        state,
        f"Using **{html.escape(state.model.title)}**.",
        model_overview(predictor, state.model.title),
        labels_table(predictor),
    )


@user_errors
def load_model(
    services: Services,
    state: SessionState | None,
    source: str,
    zoo_name: str | None,
    path: str | None,
    upload: str | None,
    pretrain: str | None,
    pretrain_upload: str | None,
    labels: str | None,
    run: str | None,
    precision: str | None = None,
    progress: Any = None,
) -> tuple[SessionState, str, str, list[list[Any]]]:
    """Load the model the form asks for and make it the session's model.

    The session keeps its clip file but prepares it again for the new model (feature settings
    may differ) and forgets hand-drawn masks.

    Returns:
        ``(state, status, overview markdown, label rows)``.
    """
    state = session(services, state)
    spec = spec_from_form(
        services, source, zoo_name, path, upload, pretrain, pretrain_upload, labels, run, precision
    )
    predictor = services.models.get(spec, progress_fn(progress))
    if spec != state.model:
        state.model = spec
        state.clip = None
        state.clip_model = None
        state.clear_masks()
    return (
        state,
        f"Using **{html.escape(spec.title)}**.",
        model_overview(predictor, spec.title),
        labels_table(predictor),
    )
