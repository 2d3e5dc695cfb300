"""Inference speed settings for CAV-MAE models: attention kernel, CPU threads, compile, bf16.

One entry point, :func:`optimize_for_inference`, applies the settings that were measured to
pay (numbers and machines in ``docs/PERFORMANCE.md``; reproduce with
``python bench/bench_inference.py`` on CPU and ``python bench/bench_gpu.py`` on a GPU):

* **SDPA attention** (``set_attn_impl("sdpa")``): fused ``scaled_dot_product_attention``
  instead of the explicit softmax of the official code. Same maths (outputs within ~1e-6 in
  float32); flash attention on GPU; on CPU it saves the (B, h, N, N) score tensor (+3 % on
  one forward, +11 % on the batched 10-frame ensemble).
* **Threads** (CPU): ``torch.set_num_threads``. torch's default (one per core) is right on an
  idle machine; on a machine shared with other jobs, threads waiting for a busy core stall
  every parallel region: :func:`available_cores` picks the cores that are actually free
  (one thread was ~3x faster than two on the busy 2-core machine measured, PERFORMANCE.md).
* **torch.compile** of the transformer blocks (opt-in): each :class:`~cavmae.models.Block` is
  compiled in place with ``nn.Module.compile``, so the staged API (``encode_audio_specific``,
  ``encode_shared``, ...) that the :class:`~cavmae.inference.Predictor` calls benefits, and the
  state_dict keys stay unchanged (no ``_orig_mod.`` prefix). On the 2-core CPU it costs ~40 s
  of compilation (cold cache) for +4 %: float32 matmuls already run at the core's peak, so it
  is off by default; on GPU it fuses the LayerNorm / GELU / residual element-wise work around
  the matmuls.
* **bf16** (``dtype=torch.bfloat16``): bf16 weights, run under :func:`inference_autocast`.
  The default on CUDA (where the Predictor already runs under bf16 autocast); opt-in on CPU,
  where AVX512-BF16/AMX CPUs run ~1.9x faster (measured on Zen 4) at ~4e-3 deviations of the
  probabilities.
* **channels-last** is not applied: the only convolutions are the two 16x16/stride-16 patch
  embeddings, a negligible share of the time (measured, PERFORMANCE.md).

The 10-frame ensemble (audio branch once per clip instead of once per frame) is an algorithm,
not a setting: :meth:`cavmae.inference.Predictor.class_probabilities` implements it with
:meth:`~cavmae.models.CAVMAEFT.forward_from_specific`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any, TypeVar

import torch
from torch import nn

from cavmae.config import check_precision
from cavmae.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = [
    "available_cores",
    "compile_blocks",
    "default_inference_dtype",
    "inference_autocast",
    "optimize_for_inference",
    "resolve_precision",
    "set_cpu_threads",
]

M = TypeVar("M", bound=nn.Module)

_LOW_PRECISION = (torch.bfloat16, torch.float16)


def default_inference_dtype(device: str | torch.device) -> torch.dtype:
    """Compute dtype used when none is asked for.

    Returns:
        ``torch.bfloat16`` on a CUDA device that supports it, else ``torch.float32`` (CPU
        inference stays exact by default).
    """
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def _check_dtype(dtype: torch.dtype, device: torch.device) -> None:
    """Raise ConfigError for a dtype that this device cannot run inference in."""
    if dtype not in (torch.float32, *_LOW_PRECISION):
        raise ConfigError(f"unsupported inference dtype {dtype}; use float32 or bfloat16")
    if dtype == torch.float16 and device.type != "cuda":
        raise ConfigError(f"float16 inference needs a CUDA device, got {device}; use bfloat16")


def resolve_precision(precision: str, device: str | torch.device) -> torch.dtype:
    """The compute dtype for a ``precision`` name on ``device``.

    Args:
        precision: "auto" (bf16 on a CUDA device that supports it, else float32: CPU results
            stay exact by default), "float32" or "bfloat16" (also on CPU, where CPUs with
            AVX512-BF16 or AMX run the full-size model 2-3.3x faster; PERFORMANCE.md).
        device: the model's device.

    Raises:
        ConfigError: for an unknown name, or bfloat16 on a CUDA device without bf16.
    """
    check_precision(precision)
    dev = torch.device(device)
    if precision == "auto":
        return default_inference_dtype(dev)
    if precision == "float32":
        return torch.float32
    if dev.type == "cuda" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"{torch.cuda.get_device_name(dev)} has no bfloat16 support; use float32")
    return torch.bfloat16


def inference_autocast(
    device: str | torch.device, dtype: torch.dtype | None = None
) -> contextlib.AbstractContextManager[Any]:
    """The autocast context for running a model on ``device`` in ``dtype``.

    Args:
        device: the model's device.
        dtype: compute dtype; None takes :func:`default_inference_dtype`.

    Returns:
        ``torch.autocast(device.type, dtype)`` for bf16/fp16, a null context for float32.

    Raises:
        ConfigError: for an unsupported dtype (float16 on CPU, integer types).
    """
    dev = torch.device(device)
    dtype = default_inference_dtype(dev) if dtype is None else dtype
    _check_dtype(dtype, dev)
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(dev.type, dtype=dtype)


def available_cores(load: float | None = None) -> int:
    """CPU cores this process may use that other processes are not keeping busy.

    ``cores - round(load)``, at least 1, where ``cores`` is the CPU affinity count and
    ``load`` the 1-minute load average (read from the OS when None). Pass the result as
    ``threads`` on a machine shared with other jobs: OpenMP threads that wait for a busy
    core cost far more than they bring (PERFORMANCE.md). Call it while this process is idle,
    or its own load counts as foreign.

    Args:
        load: the number of other runnable processes; None reads ``os.getloadavg()[0]``
            (0 where the OS has no load average).
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    if load is None:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, min(cores, cores - round(load)))


def set_cpu_threads(threads: int) -> None:
    """Set torch's intra-op CPU thread count (process-wide).

    Raises:
        ConfigError: if ``threads`` is not a positive integer.
    """
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"threads must be a positive integer, got {threads!r}")
    torch.set_num_threads(threads)
    log.debug("torch intra-op threads: %d", threads)


def compile_blocks(
    model: nn.Module,
    mode: str | None = None,
    dynamic: bool | None = None,
    backend: str = "inductor",
) -> int:
    """Compile every transformer block of ``model`` in place with ``nn.Module.compile``.

    Blocks share one code object, so blocks of the same shape share the compiled graph; the
    first call of each new (batch, tokens, stream) combination compiles (seconds on GPU, tens
    of seconds on a small CPU). State-dict keys do not change.

    Args:
        model: any module containing :class:`cavmae.models.Block` layers.
        mode: a ``torch.compile`` mode ("default", "reduce-overhead", "max-autotune", ...);
            None is torch's default.
        dynamic: passed to ``torch.compile`` (None: specialise first, then go dynamic on a
            shape change).
        backend: the ``torch.compile`` backend ("inductor" generates fused kernels;
            "aot_eager" only traces, which is quick and useful to check that tracing works).

    Returns:
        The number of blocks compiled.
    """
    from cavmae.models.layers import Block

    n = 0
    for m in model.modules():
        if isinstance(m, Block):
            m.compile(mode=mode, dynamic=dynamic, backend=backend)
            n += 1
    log.debug("compiled %d blocks (mode=%s)", n, mode)
    return n


def optimize_for_inference(
    model: M,
    device: str | torch.device,
    *,
    threads: int | None = None,
    compile: bool | str = False,
    dtype: torch.dtype | None = None,
) -> M:
    """Prepare a CAV-MAE model for fast inference, in place.

    Moves the model to ``device``, sets eval mode, turns off parameter gradients, selects SDPA
    attention, optionally sets the CPU thread count, casts the weights to a low-precision
    dtype and compiles the transformer blocks. Outputs in float32 equal the plain eager path
    to ~1e-6; bf16 outputs deviate by ~1e-2 (run them under :func:`inference_autocast`).

    Args:
        model: a ``CAVMAE`` or ``CAVMAEFT`` (anything with ``set_attn_impl`` gets SDPA).
        device: target device, e.g. "cpu" or "cuda".
        threads: CPU intra-op threads (process-wide); None leaves torch's setting.
        compile: False, True (torch's default mode) or a ``torch.compile`` mode string.
        dtype: weight dtype. None: :func:`default_inference_dtype` (bf16 on CUDA, float32
            on CPU); ``torch.bfloat16`` also on CPU (then call the model under
            ``inference_autocast(device, torch.bfloat16)``, which casts the float32 inputs).

    Returns:
        The same model object.

    Raises:
        ConfigError: for non-positive ``threads`` or an unsupported ``dtype``.
    """
    dev = torch.device(device)
    dtype = default_inference_dtype(dev) if dtype is None else dtype
    _check_dtype(dtype, dev)
    if threads is not None:
        set_cpu_threads(threads)
    model.to(device=dev, dtype=dtype).eval().requires_grad_(False)
    set_impl = getattr(model, "set_attn_impl", None)
    if callable(set_impl):
        set_impl("sdpa")
    if compile:
        compile_blocks(model, mode=None if compile is True else str(compile))
    log.info(
        "inference settings: device=%s dtype=%s threads=%d compile=%s",
        dev,
        dtype,
        torch.get_num_threads(),
        compile,
    )
    return model
