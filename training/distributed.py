"""Process-group setup for single-process and torchrun (DDP) training.

The same command runs on CPU, on one GPU and under ``torchrun`` on several GPUs or machines:
the process group is initialised only when ``WORLD_SIZE > 1`` is set in the environment
(nanoGPT's detection), with ``nccl`` on CUDA and ``gloo`` on CPU. Everything else here is the
small toolbox the trainer needs around it (MAE's ``misc.py`` equivalents): ``unwrap``,
``all_reduce_mean``, a rank-0 logging filter, and an all-gather with autograd for global
contrastive negatives (OFFICIAL_CAVMAE.md pitfall 15: the official negatives are per GPU).
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from cavmae.errors import ConfigError

__all__ = [
    "DistEnv",
    "init_distributed",
    "cleanup_distributed",
    "resolve_device",
    "unwrap",
    "all_reduce_mean",
    "all_reduce_max",
    "all_gather_concat",
    "gather_objects",
    "broadcast_object",
    "barrier",
    "broadcast_module",
    "RankFilter",
    "make_contrast_gather",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job.

    Attributes:
        rank: global rank (0 in a single-process run).
        world_size: number of processes.
        local_rank: rank on this machine (selects the GPU).
        device: the device this process computes on.
        backend: ``"nccl"``/``"gloo"`` when a process group is initialised, else ``None``.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the process that writes logs, metrics and checkpoints)."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        """True when a process group is active."""
        return self.backend is not None


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """Turn ``"auto"``/``"cpu"``/``"cuda"``/``"cuda:N"`` into a device for this process.

    ``"auto"`` picks CUDA when available. Under torchrun, ``"cuda"`` means ``cuda:LOCAL_RANK``.

    Raises:
        ConfigError: CUDA was requested but is not available.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device {name!r} was requested but CUDA is not available; use --device cpu"
            )
        if name == "cuda":
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device(name)
    if name != "cpu":
        raise ConfigError(f"unknown device {name!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'")
    return torch.device("cpu")


def init_distributed(device: str = "auto", timeout_minutes: float = 30.0) -> DistEnv:
    """Initialise the process group when launched by torchrun (``WORLD_SIZE > 1``).

    Args:
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (see :func:`resolve_device`).
        timeout_minutes: collective timeout (long evaluations on rank 0 must fit in it).

    Returns:
        The :class:`DistEnv` of this process. A plain ``python -m ...`` run gets world size 1
        and no process group.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world_size <= 1:
        return DistEnv(device=dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend,
            init_method="env://",
            world_size=world_size,
            rank=rank,
            timeout=datetime.timedelta(minutes=timeout_minutes),
            **({"device_id": dev} if dev.type == "cuda" else {}),
        )
    logger.debug("process group %s: rank %d/%d on %s", backend, rank, world_size, dev)
    return DistEnv(rank, world_size, local_rank, dev, backend)


def cleanup_distributed(env: DistEnv) -> None:
    """Destroy the process group created by :func:`init_distributed`, if any."""
    if env.is_distributed and dist.is_initialized():
        dist.destroy_process_group()


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model under DDP and ``torch.compile`` wrappers (MAE's ``model_without_ddp``)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod  # torch.compile's OptimizedModule
        else:
            return model


def all_reduce_mean(values: dict[str, float | torch.Tensor], env: DistEnv) -> dict[str, float]:
    """Average scalar metrics over all processes (MAE's ``all_reduce_mean``), in one collective.

    Args:
        values: name -> scalar (Python number or 0-d tensor).
        env: the process's :class:`DistEnv`.

    Returns:
        name -> mean over ranks, as Python floats (the same on every rank).
    """
    names = sorted(values)
    vec = torch.tensor(
        [float(values[k]) if not torch.is_tensor(values[k]) else values[k].item() for k in names],
        dtype=torch.float64,
        device=env.device,
    )
    if env.is_distributed:
        dist.all_reduce(vec, op=dist.ReduceOp.SUM)
        vec /= env.world_size
    return dict(zip(names, vec.tolist(), strict=True))


def all_reduce_max(flag: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """In-place element-wise max over ranks (e.g. "any rank saw a non-finite loss")."""
    if env.is_distributed:
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return flag


def all_gather_concat(t: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Concatenate ``t`` from every rank along dim 0 (no autograd; sizes may differ by rank)."""
    if not env.is_distributed:
        return t
    t = t.contiguous()
    n = torch.tensor([t.shape[0]], device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(env.world_size)]
    dist.all_gather(sizes, n)
    max_n = int(max(s.item() for s in sizes))
    padded = t.new_zeros((max_n, *t.shape[1:]))
    padded[: t.shape[0]] = t
    parts = [torch.empty_like(padded) for _ in range(env.world_size)]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes, strict=True)])


def gather_objects(obj: Any, env: DistEnv) -> list[Any]:
    """Picklable ``obj`` from every rank, in rank order (a one-element list when alone)."""
    if not env.is_distributed:
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, env: DistEnv, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not env.is_distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier(env: DistEnv) -> None:
    """Wait for every rank (no-op when alone)."""
    if env.is_distributed:
        dist.barrier()


@torch.no_grad()
def broadcast_module(module: nn.Module, env: DistEnv, src: int = 0) -> None:
    """Overwrite every parameter and buffer with rank ``src``'s values (in place)."""
    if not env.is_distributed:
        return
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src=src)


class RankFilter(logging.Filter):
    """Let rank 0 log everything; other ranks only warnings and errors, prefixed with the rank.

    The rank-0-only output of MAE's ``setup_for_distributed``, without replacing ``print``.
    """

    def __init__(self, rank: int) -> None:
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        if self.rank == 0:
            return True
        if record.levelno < logging.WARNING:
            return False
        if not getattr(record, "_rank_prefixed", False):
            record.msg = f"[rank {self.rank}] {record.msg}"
            record._rank_prefixed = True  # type: ignore[attr-defined]
        return True


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward returns this rank's slice of the summed gradient.

    The backward all-reduces the full (B_total, D) gradient and keeps the local rows: every
    rank's loss contributes to the gradient of every rank's features, which is the exact
    gradient of the (DDP-averaged) global loss. The tensors are small (B x D), so an
    all-reduce is used instead of a reduce-scatter, which gloo lacks.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.rank = dist.get_rank()
        ctx.n = x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)  # (W * B, D)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()  # (W * B, D)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]  # (B, D)


class ContrastGatherFn:
    """A ``contrast_gather`` callable for the model (see ``cavmae.models.losses``).

    Calling it with local (B, D) features returns ``(global (W*B, D), rank * B)``. It records
    the last global size in :attr:`last_global_batch` so the trainer can log how many
    candidates the contrastive softmax saw.
    """

    def __init__(self, env: DistEnv) -> None:
        if not env.is_distributed:
            raise ConfigError("gather_negatives needs a distributed run (WORLD_SIZE > 1)")
        self.env = env
        self.last_global_batch = 0

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        out = _GatherWithGrad.apply(x)  # (W * B, D)
        self.last_global_batch = int(out.shape[0])
        return out, self.env.rank * x.shape[0]


def make_contrast_gather(env: DistEnv) -> ContrastGatherFn | None:
    """The global-negatives gather for a distributed run, ``None`` when alone."""
    return ContrastGatherFn(env) if env.is_distributed else None
