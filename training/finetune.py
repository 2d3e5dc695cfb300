"""CAV-MAE fine-tuning entry point: ``python -m training.finetune`` (or under torchrun).

Follows the official ``run_cavmae_ft.py`` / ``traintest_ft.py`` (OFFICIAL_CAVMAE.md §5.3-5.4):
a ``CAVMAEFT`` initialised from a pretrained CAVMAE (decoder dropped, fresh ``mlp_head``, §3.2)
trained in ``multimodal``, ``audioonly`` or ``videoonly`` mode with BCEWithLogits (multi-label,
mAP) or cross-entropy on soft targets (single-label, accuracy), the head at ``head_lr_ratio``
x the LR, optionally with a frozen base (linear probing). After training the epoch models of
the WA window are averaged uniformly (§3.4) and evaluated, with an ensemble over all frames
when the validation set stores several (sigmoid probabilities averaged for mAP, softmax for
accuracy, §5.4).

Example::

    python -m training.finetune --recipe as20k_ft --data DIR --init runs/pt/model.safetensors \
        --out runs/ft
"""

from __future__ import annotations

import copy
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from cavmae.config import FeatureConfig
from cavmae.errors import CheckpointError, ConfigError
from training.checkpointing import epoch_model_path, weight_average
from training.config import FinetuneConfig, resolve_model_config
from training.distributed import (
    DistEnv,
    barrier,
    broadcast_module,
)
from training.engine import StepOutput, evaluate
from training.init import resolve_init_checkpoint
from training.metrics import classification_stats
from training.pretrain import check_geometry, freeze_unused, probe_batch, probe_unused
from training.samplers import ResumableDistributedSampler
from training.trainer import RunContext, RunResult, Trainer, run_cli, run_main

__all__ = [
    "FinetuneObjective",
    "build_finetune_model",
    "dataset_is_multi_label",
    "dataset_labels",
    "all_frames_view",
    "MultiFrameLogits",
    "train",
    "main",
]

logger = logging.getLogger(__name__)


class FinetuneObjective:
    """Classification loss of a batch.

    Args:
        mode: ``CAVMAEFT.forward`` mode.
        loss: ``"bce"`` (BCEWithLogits on multi-hot/soft targets) or ``"ce"`` (cross-entropy
            with probability targets, as the official VGGSound recipe).
    """

    def __init__(self, mode: str, loss: str) -> None:
        if loss not in ("bce", "ce"):
            raise ConfigError(f"loss must be 'bce' or 'ce', got {loss!r}")
        self.mode = mode
        self.loss = loss

    def __call__(self, model: nn.Module, batch: Mapping[str, Any]) -> StepOutput:
        logits = model(batch["fbank"], batch["image"], self.mode)  # (B, C)
        target = batch["label"].to(logits.dtype)  # (B, C)
        if self.loss == "bce":
            loss = F.binary_cross_entropy_with_logits(logits.float(), target.float())
        else:
            # Parity: nn.CrossEntropyLoss on smoothed probability vectors (§5.3 "VGGSound with CE").
            loss = F.cross_entropy(logits.float(), target.float())
        return StepOutput(loss, {"loss": loss.detach()}, logits)


def dataset_labels(dataset: Dataset) -> Any:
    """The dataset's ``LabelSet`` (``label_set``) or one built from ``label_names``.

    Raises:
        ConfigError: for an unlabelled dataset.
    """
    from cavmae.labels import LabelSet

    labels = getattr(dataset, "label_set", None)
    if isinstance(labels, LabelSet):
        return labels
    names = list(getattr(dataset, "label_names", []) or [])
    if names and len(set(names)) == len(names):
        return LabelSet(tuple(names), tuple(names))
    n = int(getattr(dataset, "num_classes", len(names)) or 0)
    if n:
        return LabelSet.generic(n)
    raise ConfigError(
        "the training dataset has no classes (num_classes = 0); it cannot be "
        "used for fine-tuning. Prepare it with labels (class folders or a CSV)"
    )


def dataset_is_multi_label(dataset: Dataset) -> bool:
    """True when some clip of the dataset has several positive classes (AudioSet-style).

    Uses the dataset's ``labels_matrix`` ((N, C) multi-hot); False when it has none.
    """
    m = getattr(dataset, "labels_matrix", None)
    if m is None:
        return False
    return bool((np.asarray(m) > 0.5).sum(axis=1).max(initial=0) > 1)


_VIDEO_MODES = ("multimodal", "videoonly", "missingvideoonly")


def all_frames_view(dataset: Dataset) -> Dataset | None:
    """A copy of ``dataset`` that adds ``frames_all`` (K, 3, S, S) to each sample, or None.

    None when the dataset stores a single frame per clip or cannot return all frames.
    """
    if int(getattr(dataset, "frames_per_clip", 1) or 1) < 2:
        return None
    if not hasattr(dataset, "return_all_frames"):
        return None
    view = copy.copy(dataset)
    view.return_all_frames = True
    return view


class MultiFrameLogits:
    """Logits for every stored frame of each clip, audio encoded once (official §5.4).

    Returns ``outputs`` (B, K * C): the per-frame logits, frame-major.
    """

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def __call__(self, model: nn.Module, batch: Mapping[str, Any]) -> StepOutput:
        frames = batch["frames_all"]  # (B, K, 3, S, S)
        need_a = self.mode != "videoonly" and self.mode != "missingvideoonly"
        a_tok = model.encode_audio_specific(batch["fbank"]) if need_a else None  # (B, L_a, D)
        logits = [
            model.forward_from_specific(
                a_tok, model.encode_visual_specific(frames[:, k]), self.mode
            )  # (B, C)
            for k in range(frames.shape[1])
        ]
        out = torch.stack(logits, dim=1)  # (B, K, C)
        return StepOutput(out.new_zeros(()), {}, out.flatten(1))  # (B, K * C)


def build_finetune_model(cfg: FinetuneConfig, num_classes: int) -> nn.Module:
    """A ``CAVMAEFT`` with ``num_classes`` outputs per ``cfg.init``.

    ``scratch`` builds a fresh classifier; a pretrained checkpoint (path or zoo name) loads
    into a classifier with a fresh head (§3.2); a classifier checkpoint must have
    ``num_classes`` outputs.

    Raises:
        CheckpointError / ConfigError: unreadable or mismatched checkpoint.
    """
    from cavmae.models import CAVMAEFT

    if cfg.init == "scratch":
        mcfg = resolve_model_config(cfg, label_dim=num_classes)
        if "tr_pos" not in cfg.model_args:
            mcfg = mcfg.replace(tr_pos=True)  # official CAVMAEFT default
        return CAVMAEFT.from_config(mcfg)
    if cfg.init.startswith("imagenet-mae:"):
        raise ConfigError(
            "fine-tuning starts from a CAV-MAE checkpoint; pretrain from "
            "ImageNet MAE first (python -m training.pretrain --init imagenet-mae:...)"
        )
    from cavmae.checkpoint import load_checkpoint

    overrides = dict(cfg.model_args)
    overrides.setdefault("tr_pos", True)  # official: positional tables fine-tuned
    loaded = load_checkpoint(resolve_init_checkpoint(cfg.init), label_dim=num_classes, **overrides)
    if loaded.kind != "finetune":
        raise CheckpointError(f"--init {cfg.init} did not give a classifier")
    logger.info(
        "initialised from %s (%s, head %s)",
        cfg.init,
        loaded.kind,
        "fresh" if loaded.meta.get("initialised_head") else "loaded",
    )
    return loaded.model


def _eval_loader(cfg: FinetuneConfig, env: DistEnv, dataset: Dataset, micro: int) -> DataLoader:
    sampler = ResumableDistributedSampler(
        dataset, num_replicas=env.world_size, rank=env.rank, shuffle=False, seed=cfg.seed
    )
    return DataLoader(
        dataset,
        batch_size=micro,
        sampler=sampler,
        num_workers=cfg.num_workers,
        drop_last=False,
        generator=torch.Generator().manual_seed(cfg.seed),
        collate_fn=getattr(dataset, "collate_fn", None),
    )


def _stats(prefix: str, targets: np.ndarray, outputs: np.ndarray) -> dict[str, float]:
    st = classification_stats(targets, outputs).to_dict()
    return {f"{prefix}{k}": float(v) for k, v in st.items()}


def _probabilities(logits: np.ndarray, multi_label: bool) -> np.ndarray:
    t = torch.from_numpy(logits)
    return (torch.sigmoid(t) if multi_label else torch.softmax(t, dim=-1)).numpy()


def train(
    cfg: FinetuneConfig,
    env: DistEnv,
    train_set: Dataset,
    val_set: Dataset | None = None,
) -> RunResult:
    """Fine-tune on given datasets, writing the run directory (``cfg.out_dir``).

    Args:
        cfg: the resolved configuration.
        env: this process's placement (:func:`training.distributed.init_distributed`).
        train_set: labelled training dataset (``label_set``/``label_names``, ``labels_matrix``).
        val_set: optional validation dataset.

    Returns:
        A :class:`training.trainer.RunResult`; its ``path`` is None when the run stopped early.
    """
    from cavmae.checkpoint import save_model

    labels = dataset_labels(train_set)
    multi_label = dataset_is_multi_label(train_set)
    loss_kind = cfg.loss if cfg.loss != "auto" else ("bce" if multi_label else "ce")
    metric = cfg.metric if cfg.metric != "auto" else ("mAP" if multi_label else "acc")
    features: FeatureConfig = getattr(train_set, "feature_config", None) or FeatureConfig.for_model(
        resolve_model_config(cfg)
    )
    run = RunContext.create(cfg, env)
    try:
        torch.manual_seed(cfg.seed)
        model = build_finetune_model(cfg, len(labels))
        check_geometry(model.config, features, f"dataset {cfg.data or '(given)'}")
        if cfg.freeze_base:
            head = {id(p) for p in model.head_parameters()}
            for p in model.parameters():
                if id(p) not in head:
                    p.requires_grad_(False)
            logger.info("frozen base: training the head only (linear probing)")
        model.to(env.device).train()
        objective = FinetuneObjective(cfg.mode, loss_kind)
        probed = probe_unused(model, objective, probe_batch(model.config, env.device, len(labels)))
        freeze_unused(model, model.unused_parameter_names(cfg.mode), probed)
        torch.manual_seed(cfg.seed + env.rank)

        def export(m: nn.Module, path: Path, meta: dict[str, Any]) -> None:
            save_model(
                m,
                path,
                features=features,
                labels=labels,
                multi_label=multi_label,
                mode=cfg.mode,
                meta=meta,
            )

        sampler_factory = None  # shuffled ResumableDistributedSampler
        if cfg.balanced:
            sampler_factory = _balanced_sampler_factory
        wa_epochs = range(cfg.wa_start, cfg.wa_end + 1) if cfg.wa else None
        trainer = Trainer(
            cfg,
            env,
            run,
            model,
            train_set,
            objective,
            evaluate_fn=None,
            export_model=export,
            head_lr_ratio=cfg.head_lr_ratio,
            select=(f"val_{metric}", "max"),
            sampler_factory=sampler_factory,
            wa_epochs=wa_epochs,
        )
        val_loader = None
        if val_set is not None and len(val_set) > 0:
            val_loader = _eval_loader(cfg, env, val_set, trainer.micro)

            def evaluate_epoch(m: nn.Module, epoch: int) -> dict[str, float]:
                res = evaluate(m, val_loader, objective, env=env, amp=trainer.amp, collect=True)
                out = {"val_loss": res.averages.get("loss", float("nan"))}
                out.update(_stats("val_", res.targets, res.outputs))
                return out

            trainer.evaluate_fn = evaluate_epoch
        result = trainer.fit()
        if not result.completed:
            return RunResult(None, model, result)

        final_meta: dict[str, Any] = {"selection": "last"}
        if cfg.wa:
            final_meta = _average_epochs(model, cfg, env, run.run_dir)
        elif result.best is not None:
            best_path = epoch_model_path(run.run_dir, int(result.best["epoch"]))
            if best_path.is_file():
                _load_on_all_ranks(model, [best_path], env)
                final_meta = {"selection": "best", "epoch": result.best["epoch"]}
        metrics: dict[str, Any] = {}
        if val_set is not None and len(val_set) > 0:
            metrics = _final_eval(model, cfg, env, val_set, trainer, objective, multi_label)
            run.record({"type": "final", **final_meta, **metrics, "metric": metric})
            logger.info(
                "final (%s): %s",
                final_meta.get("selection"),
                ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float)),
            )
        final = Path(run.run_dir) / "model.safetensors"
        if env.is_main:
            export(
                model,
                final,
                {
                    "provenance": {
                        "run": str(run.run_dir),
                        "recipe": cfg.recipe,
                        "init": cfg.init,
                        "epochs": cfg.epochs,
                        "kind": "finetune",
                        **final_meta,
                    },
                    "metrics": {k: v for k, v in metrics.items() if isinstance(v, float)},
                },
            )
        run.status("finished", message=f"model written to {final}", final=metrics)
        return RunResult(final, model, result, metrics)
    except BaseException as e:
        run.status(
            "failed" if not isinstance(e, KeyboardInterrupt) else "stopped",
            message=f"{type(e).__name__}: {e}",
        )
        raise
    finally:
        run.close()


def _balanced_sampler_factory(dataset: Dataset, env: DistEnv, seed: int) -> Any:
    """Official ``--bal bal``: weights 1000/(count+0.01) summed per clip, with replacement."""
    from training.samplers import DistributedWeightedSampler, balanced_weights

    matrix = getattr(dataset, "labels_matrix", None)
    if matrix is None:
        raise ConfigError(
            "balanced sampling needs the dataset's labels_matrix; this dataset "
            "has none (use --no-balanced)"
        )
    if hasattr(dataset, "set_sample_weights"):  # a streaming dataset resamples itself
        dataset.set_sample_weights(balanced_weights(matrix))
        return dataset
    return DistributedWeightedSampler(
        balanced_weights(matrix), num_replicas=env.world_size, rank=env.rank, seed=seed
    )


def _load_on_all_ranks(model: nn.Module, paths: list[Path], env: DistEnv) -> None:
    """Rank 0 averages ``paths`` into ``model``; the result is broadcast to every rank."""
    barrier(env)
    if env.is_main:
        sd = weight_average(paths)
        model.load_state_dict({k: v.to(env.device) for k, v in sd.items()})
    broadcast_module(model, env)


def _average_epochs(
    model: nn.Module, cfg: FinetuneConfig, env: DistEnv, run_dir: Path
) -> dict[str, Any]:
    """Load the uniform average of the WA window's epoch models into ``model``."""
    last = min(cfg.wa_end, cfg.epochs)
    paths = [epoch_model_path(run_dir, e) for e in range(cfg.wa_start, last + 1)]
    present = [p for p in paths if p.is_file()]
    if not present:
        raise CheckpointError(
            f"weight averaging found no epoch models {cfg.wa_start}..{last} under "
            f"{run_dir / 'checkpoints'}; set --wa_start/--wa_end within the trained epochs"
        )
    if len(present) < len(paths):
        logger.warning("weight averaging: %d of %d epoch models present", len(present), len(paths))
    _load_on_all_ranks(model, present, env)
    logger.info("weight averaging over epochs %d..%d (%d models)", cfg.wa_start, last, len(present))
    return {"selection": "wa", "wa_start": cfg.wa_start, "wa_end": last, "wa_models": len(present)}


def _final_eval(
    model: nn.Module,
    cfg: FinetuneConfig,
    env: DistEnv,
    val_set: Dataset,
    trainer: Trainer,
    objective: FinetuneObjective,
    multi_label: bool,
) -> dict[str, Any]:
    """Evaluate the final model; with several stored frames, per frame and as an ensemble.

    The ensemble averages sigmoid (multi-label) or softmax (single-label) probabilities over
    the frames (official §5.4); audio-only models see no frame and are evaluated once.
    """
    out: dict[str, Any] = {}
    view = all_frames_view(val_set) if (cfg.multi_frame_eval and cfg.mode in _VIDEO_MODES) else None
    res = evaluate(
        model,
        _eval_loader(cfg, env, val_set, trainer.micro),
        objective,
        env=env,
        amp=trainer.amp,
        collect=True,
    )
    out["final_loss"] = res.averages.get("loss", float("nan"))
    out.update(_stats("final_single_", res.targets, res.outputs))
    if view is None:
        out.update(_stats("final_", res.targets, res.outputs))
        out["num_frames"] = 1
        return out
    mres = evaluate(
        model,
        _eval_loader(cfg, env, view, trainer.micro),
        MultiFrameLogits(cfg.mode),
        env=env,
        amp=trainer.amp,
        collect=True,
    )
    n, c = mres.targets.shape
    logits = mres.outputs.reshape(n, -1, c)  # (N, K, C)
    for k in range(logits.shape[1]):
        out.update(
            {
                k2: v
                for k2, v in _stats(f"frame{k}_", mres.targets, logits[:, k]).items()
                if k2.endswith(("mAP", "acc"))
            }
        )
    probs = _probabilities(logits.reshape(-1, c), multi_label).reshape(logits.shape)
    out.update(_stats("final_", mres.targets, probs.mean(axis=1)))
    out["num_frames"] = int(logits.shape[1])
    return out


def main(cfg: FinetuneConfig) -> RunResult:
    """Run fine-tuning as configured (single process or one torchrun rank).

    Returns:
        The :class:`training.trainer.RunResult` (``path`` None if the run stopped early).
    """
    return run_main(cfg, train)


def cli(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: parse, run, and turn library errors into a message + exit code 2."""
    return run_cli(FinetuneConfig, main, list(argv) if argv is not None else None)


if __name__ == "__main__":
    sys.exit(cli())
