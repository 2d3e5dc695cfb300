"""CAV-MAE pretraining entry point: ``python -m training.pretrain`` (or under torchrun).

Follows the official ``run_cavmae_pretrain.py`` / ``traintest_cavmae.py`` (OFFICIAL_CAVMAE.md
§5.1-5.2) with the structure of MAE's ``main_pretrain.py``: build the data, the model and the
objective, then hand them to :class:`training.trainer.Trainer`. The objective is the official
one (MAE loss on 75 % masked inputs + 0.01 x single-direction InfoNCE), switchable to AV-MAE
(``--contrast_loss_weight 0``) or contrastive-only (``--mae_loss_weight 0``).

Examples::

    python -m training.pretrain --recipe tiny_smoke --data DIR --out runs/smoke
    torchrun --nproc_per_node 4 -m training.pretrain --recipe as2m_pretrain_base \
        --data /data/as2m --out runs/base
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

from cavmae.config import FeatureConfig, ModelConfig
from cavmae.errors import CheckpointError, ConfigError
from cavmae.models.losses import patch_contrastive_loss
from training.config import PretrainConfig, resolve_augment_config, resolve_model_config
from training.distributed import (
    DistEnv,
    make_contrast_gather,
)
from training.engine import Amp, StepOutput, evaluate
from training.init import IMAGENET_MAE_PREFIX, load_imagenet_mae, resolve_init_checkpoint
from training.samplers import ResumableDistributedSampler
from training.trainer import RunContext, RunResult, Trainer, run_cli, run_main

__all__ = [
    "PretrainObjective",
    "draw_mask_ratio",
    "build_pretrain_model",
    "check_geometry",
    "freeze_unused",
    "probe_unused",
    "probe_batch",
    "train",
    "main",
]

logger = logging.getLogger(__name__)


def draw_mask_ratio(lo: float, hi: float, step: float, u: float) -> float:
    """The audio mask ratio of one step (``mask_ratio_a_range``): ``lo + (hi - lo) * u``.

    With ``step > 0`` the ratio is rounded to the nearest multiple of ``step`` that lies in
    ``[lo, hi]`` (``lo`` itself when none does), so that only a few token counts occur.

    Args:
        lo: lowest ratio.
        hi: highest ratio.
        step: rounding step, 0 for a continuous draw.
        u: a uniform number in [0, 1).
    """
    ratio = lo + (hi - lo) * u
    if step <= 0:
        return ratio
    first, last = math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9)
    if first > last:
        return lo
    k = min(max(round(ratio / step), first), last)
    return round(k * step, 10)


class PretrainObjective:
    """The CAV-MAE pretraining loss of a batch (the model computes it in ``forward``).

    Args:
        cfg: mask ratios, mask mode, loss weights, contrastive direction.
        gather: optional cross-process gather for global negatives.
        generator: RNG for the masks (evaluation uses a fixed one; training the global RNG).
        loss_scale: multiplies the loss and the logged loss terms (``loss_scale_replicas``:
            the official 4-GPU sum, OFFICIAL_CAVMAE.md pitfall 16).
    """

    def __init__(
        self,
        cfg: PretrainConfig,
        gather: Any = None,
        generator: torch.Generator | None = None,
        loss_scale: float = 1.0,
    ) -> None:
        self.cfg = cfg
        self.gather = gather
        self.generator = generator
        self.loss_scale = loss_scale

    def __call__(self, model: nn.Module, batch: Mapping[str, Any]) -> StepOutput:
        c = self.cfg
        audio, imgs = batch["fbank"], batch["image"]  # (B, T, F), (B, 3, S, S)
        if "pair" in batch and model.training:
            # Not official (augment.temporal_pair): the paired views of the same clips at other
            # times join the batch as extra samples, so they are each other's negatives.
            keep = batch["pair"].bool()  # (B,)
            audio = torch.cat([audio, batch["fbank_pair"][keep]])  # (B + P, T, F)
            imgs = torch.cat([imgs, batch["image_pair"][keep]])  # (B + P, 3, S, S)
        patch_term = c.patch_contrast_weight > 0
        ratio_a = c.mask_ratio_a
        if c.mask_ratio_a_range is not None and model.training:
            u = float(torch.rand((), generator=self.generator))
            ratio_a = draw_mask_ratio(*c.mask_ratio_a_range, c.mask_ratio_a_step, u)
        result = model(
            audio,
            imgs,
            ratio_a,
            c.mask_ratio_v,
            c.mae_loss_weight,
            c.contrast_loss_weight,
            c.mask_mode,
            generator=self.generator,
            bidirect_contrast=c.bidirect_contrast,
            contrast_gather=self.gather,
            return_encoder=patch_term,
        )
        out, enc = result if patch_term else (result, None)
        loss = out.loss
        s = self.loss_scale
        n_keys = self.gather.last_global_batch if self.gather is not None else audio.shape[0]
        logs = {
            "loss": out.loss.detach() * s,
            "loss_mae": out.loss_mae.detach() * s,
            "loss_mae_a": out.loss_mae_a.detach() * s,
            "loss_mae_v": out.loss_mae_v.detach() * s,
            "loss_c": out.loss_c.detach() * s,
            "c_acc": out.c_acc.detach().float(),
            # how many audio clips each video is contrasted against (2x local with 2 ranks)
            "contrast_candidates": torch.tensor(float(n_keys), device=audio.device),
        }
        if enc is not None and enc.ca.shape[1] > 0 and enc.cv.shape[1] > 0:
            # Not official: audio-to-patch InfoNCE on the same tokens, local negatives only.
            loss_p, p_acc = patch_contrastive_loss(
                enc.ca, enc.cv, c.patch_contrast_temperature, c.patch_contrast_topk
            )
            loss = loss + c.patch_contrast_weight * loss_p
            logs["loss"] = loss.detach() * s
            logs["loss_p"] = c.patch_contrast_weight * loss_p.detach() * s
            logs["p_acc"] = p_acc.detach()
        return StepOutput(loss * s, logs)


def check_geometry(model_cfg: ModelConfig, features: FeatureConfig, where: str) -> None:
    """Raise ConfigError when the data's fbank/frame sizes do not fit the model.

    The mel bins are compared first: a checkpoint without stored settings (an official
    ``.pth``) gets ``audio_length`` from ``num_mel_bins``, so a wrong mel count shows up as a
    wrong length too, and the mel count is what to fix.
    """
    pairs = [
        ("num_mel_bins", features.num_mel_bins, "num_mel_bins", model_cfg.num_mel_bins),
        ("target_length", features.target_length, "audio_length", model_cfg.audio_length),
        ("img_size", features.img_size, "img_size", model_cfg.img_size),
    ]
    for fname, fval, mname, mval in pairs:
        if fval != mval:
            raise ConfigError(
                f"{where} has {fname}={fval} but the model has {mname}={mval}; prepare the data "
                f"with matching features or pick a model with --model_args.{mname} {fval}"
            )


def build_pretrain_model(cfg: PretrainConfig) -> nn.Module:
    """A ``CAVMAE`` per ``cfg.init``: scratch, ImageNet MAE, or a checkpoint/zoo name.

    Raises:
        CheckpointError: the checkpoint is a classifier, unreadable, or does not fit.
    """
    from cavmae.models import CAVMAE

    if cfg.init == "scratch":
        return CAVMAE.from_config(resolve_model_config(cfg))
    if cfg.init.startswith(IMAGENET_MAE_PREFIX):
        model = CAVMAE.from_config(resolve_model_config(cfg))
        load_imagenet_mae(model, cfg.init[len(IMAGENET_MAE_PREFIX) :])
        return model
    from cavmae.checkpoint import load_checkpoint

    loaded = load_checkpoint(resolve_init_checkpoint(cfg.init), **cfg.model_args)
    if loaded.kind != "pretrain":
        raise CheckpointError(
            f"--init {cfg.init} is a fine-tuned classifier (no decoder); pretraining needs a "
            "pretrained CAVMAE checkpoint, 'scratch' or 'imagenet-mae:...'"
        )
    logger.info("initialised from %s (%s)", cfg.init, loaded.config)
    return loaded.model


def probe_unused(model: nn.Module, objective: Any, batch: Mapping[str, Any]) -> set[str]:
    """Names of trainable parameters that get no gradient from ``objective`` on ``batch``.

    One forward/backward on a small synthetic batch, with the RNG states forked (so the run's
    random streams are untouched) and the gradients cleared afterwards. The graph structure
    does not depend on the values, so every rank finds the same set.
    """
    devices = [p.device for p in model.parameters() if p.device.type == "cuda"][:1]
    with torch.random.fork_rng(devices=devices):
        objective(model, batch).loss.backward()
    unused = {n for n, p in model.named_parameters() if p.requires_grad and p.grad is None}
    model.zero_grad(set_to_none=True)
    return unused


def probe_batch(
    model_cfg: ModelConfig, device: torch.device, num_classes: int = 0, n: int = 2
) -> dict[str, Any]:
    """A zero batch of ``n`` clips in the model's geometry (for :func:`probe_unused`)."""
    return {
        "fbank": torch.zeros(n, model_cfg.audio_length, model_cfg.num_mel_bins, device=device),
        "image": torch.zeros(n, 3, model_cfg.img_size, model_cfg.img_size, device=device),
        "label": torch.zeros(n, max(num_classes, 1), device=device),
        "index": torch.arange(n),
    }


def freeze_unused(model: nn.Module, names: set[str], probed: set[str] | None = None) -> list[str]:
    """``requires_grad_(False)`` on the parameters unused by design (keys are unchanged).

    Args:
        model: the bare model.
        names: parameters the model declares unused for this objective
            (``unused_parameter_names``).
        probed: parameters a :func:`probe_unused` pass found without gradient; any not in
            ``names`` are frozen too, with a warning (DDP would otherwise fail on them).

    Returns:
        The names that were trainable and are now frozen.
    """
    extra = sorted((probed or set()) - names)
    if extra:
        logger.warning(
            "%d parameters get no gradient but are not declared unused by the "
            "model; freezing them too: %s",
            len(extra),
            extra[:8],
        )
    frozen = []
    for name, p in model.named_parameters():
        if (name in names or name in extra) and p.requires_grad:
            p.requires_grad_(False)
            frozen.append(name)
    logger.info("froze %d parameter tensors unused by this objective", len(frozen))
    logger.debug("frozen: %s", frozen)
    return frozen


def _eval_fn(
    cfg: PretrainConfig,
    env: DistEnv,
    val_set: Dataset,
    micro: int,
    amp: Amp,
    gather: Any,
    scale: float,
) -> Any:
    sampler = ResumableDistributedSampler(
        val_set, num_replicas=env.world_size, rank=env.rank, shuffle=False, seed=cfg.seed
    )
    drop_last = len(sampler) >= micro  # official: drop_last=True at the same batch size
    loader = DataLoader(
        val_set,
        batch_size=micro,
        sampler=sampler,
        num_workers=cfg.num_workers,
        drop_last=drop_last,
        generator=torch.Generator().manual_seed(cfg.seed),
        collate_fn=getattr(val_set, "collate_fn", None),
    )

    def run(model: nn.Module, epoch: int) -> dict[str, float]:
        # The same masks at every evaluation (and no draw from the training RNG).
        gen = torch.Generator(device=env.device).manual_seed(cfg.seed + 7919 * (env.rank + 1))
        obj = PretrainObjective(cfg, gather, gen, scale)
        res = evaluate(model, loader, obj, env=env, amp=amp)
        return {f"val_{k}": v for k, v in res.averages.items() if k != "contrast_candidates"}

    return run


def _class_group_factory(group_size: int, micro_batch: int) -> Any:
    """A Trainer sampler factory for ``class_groups``: batches of same-class groups."""
    from training.samplers import ClassGroupedSampler

    def factory(dataset: Dataset, env: DistEnv, seed: int) -> ClassGroupedSampler:
        matrix = getattr(dataset, "labels_matrix", None)
        if matrix is None or isinstance(dataset, IterableDataset):
            raise ConfigError(
                "class_groups needs a prepared (memory-mapped) dataset with labels; this "
                "dataset has no labels_matrix or streams its shards (set class_groups 0)"
            )
        labels = np.asarray(matrix).argmax(axis=1)  # (N,) first class of every clip
        return ClassGroupedSampler(
            labels, group_size, micro_batch, num_replicas=env.world_size, rank=env.rank, seed=seed
        )

    return factory


def train(
    cfg: PretrainConfig,
    env: DistEnv,
    train_set: Dataset,
    val_set: Dataset | None = None,
) -> RunResult:
    """Pretrain on given datasets, writing the run directory (``cfg.out_dir``).

    Args:
        cfg: the resolved configuration.
        env: this process's placement (:func:`training.distributed.init_distributed`).
        train_set: training dataset (samples ``fbank``/``image``/``label``/``index``).
        val_set: optional validation dataset.

    Returns:
        A :class:`training.trainer.RunResult`; its ``path`` is None when the run stopped early.
    """
    from cavmae.checkpoint import save_model

    features: FeatureConfig = getattr(train_set, "feature_config", None) or FeatureConfig.for_model(
        resolve_model_config(cfg)
    )
    run = RunContext.create(cfg, env)
    try:
        torch.manual_seed(cfg.seed)  # identical initialisation on every rank
        model = build_pretrain_model(cfg)
        check_geometry(model.config, features, f"dataset {cfg.data or '(given)'}")
        contrastive = (
            cfg.contrast_loss_weight != 0 and cfg.mask_ratio_a < 1 and cfg.mask_ratio_v < 1
        )
        model.to(env.device).train()
        declared = model.unused_parameter_names(
            mae=cfg.mae_loss_weight != 0, contrastive=contrastive
        )
        probed = probe_unused(model, PretrainObjective(cfg), probe_batch(model.config, env.device))
        freeze_unused(model, declared, probed)
        torch.manual_seed(cfg.seed + env.rank)  # different masks on every rank

        replicas = cfg.loss_scale_replicas
        accum = cfg.accum_steps
        if replicas > 1:
            # Parity: one micro-step per emulated DataParallel replica, loss summed (pitfall 16).
            if replicas % env.world_size:
                raise ConfigError(
                    f"loss_scale_replicas={replicas} needs a world size that divides it, got "
                    f"{env.world_size}"
                )
            accum = replicas // env.world_size
            if cfg.accum_steps not in (1, accum):
                logger.warning(
                    "accum_steps=%d is replaced by %d: with loss_scale_replicas=%d each "
                    "micro-step is one emulated replica",
                    cfg.accum_steps,
                    accum,
                    replicas,
                )
            if cfg.gather_negatives and env.is_distributed:
                raise ConfigError(
                    "gather_negatives and loss_scale_replicas > 1 contradict each other: the "
                    "official emulation keeps negatives per replica; drop one of them"
                )
        if cfg.gather_negatives and env.is_distributed and resolve_augment_config(cfg).temporal_pair:
            raise ConfigError(
                "augment.temporal_pair adds a different number of views on each process, which "
                "the global-negatives gather cannot take; set gather_negatives false"
            )
        gather = make_contrast_gather(env) if cfg.gather_negatives else None
        objective = PretrainObjective(cfg, gather, None, float(replicas))

        def export(m: nn.Module, path: Path, meta: dict[str, Any]) -> None:
            save_model(m, path, features=features, meta=meta)

        grouped_batches = (
            _class_group_factory(cfg.class_groups, cfg.batch_size // (env.world_size * accum))
            if cfg.class_groups > 1
            else None
        )
        trainer = Trainer(
            cfg,
            env,
            run,
            model,
            train_set,
            objective,
            evaluate_fn=None,
            export_model=export,
            select=("val_loss", "min"),
            accum_steps=accum,
            sampler_factory=grouped_batches,
        )
        if val_set is not None and len(val_set) > 0:
            trainer.evaluate_fn = _eval_fn(
                cfg, env, val_set, trainer.micro, trainer.amp, gather, float(replicas)
            )
        result = trainer.fit()
        if not result.completed:
            return RunResult(None, model, result)
        final = Path(run.run_dir) / "model.safetensors"
        if env.is_main:
            last = result.history[-1] if result.history else {}
            export(
                model,
                final,
                {
                    "provenance": {
                        "run": str(run.run_dir),
                        "recipe": cfg.recipe,
                        "init": cfg.init,
                        "epochs": cfg.epochs,
                        "kind": "pretrain",
                    },
                    "metrics": {k: v for k, v in last.items() if isinstance(v, float)},
                },
            )
        run.status("finished", message=f"model written to {final}")
        return RunResult(final, model, result, dict(result.history[-1]) if result.history else {})
    except BaseException as e:
        run.status(
            "failed" if not isinstance(e, KeyboardInterrupt) else "stopped",
            message=f"{type(e).__name__}: {e}",
        )
        raise
    finally:
        run.close()


def main(cfg: PretrainConfig) -> RunResult:
    """Run pretraining as configured (single process or one torchrun rank).

    Returns:
        The :class:`training.trainer.RunResult` (``path`` None if the run stopped early).
    """
    return run_main(cfg, train)


def cli(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: parse, run, and turn library errors into a message + exit code 2."""
    return run_cli(PretrainConfig, main, list(argv) if argv is not None else None)


if __name__ == "__main__":
    sys.exit(cli())
