"""LR schedules: the official per-epoch MultiStepLR tables and cosine with warmup."""

from __future__ import annotations

import math

import pytest
import torch

from cavmae.errors import ConfigError
from training.schedules import LRSchedule, apply_lr, cosine_lr, multistep_lr


def _torch_multistep(base: float, start: int, step: int, decay: float, epochs: int) -> list[float]:
    """LR of each epoch from torch's MultiStepLR stepped once per epoch, as the official code."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=base)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(range(start, 1000, step)), gamma=decay)
    out = []
    for _ in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_pretrain_table_halves_after_epochs_10_15_20() -> None:
    lrs = [multistep_lr(e, 5e-5, 10, 5, 0.5) for e in range(25)]
    assert lrs == [5e-5] * 10 + [2.5e-5] * 5 + [1.25e-5] * 5 + [6.25e-6] * 5


@pytest.mark.parametrize(
    ("base", "start", "step", "epochs", "last"),
    [(5e-5, 5, 1, 15, 4.8828125e-8), (1e-5, 2, 1, 10, 3.90625e-8), (1e-4, 2, 1, 10, 3.90625e-7)],
)
def test_finetune_tables_match_torch_multisteplr(
    base: float, start: int, step: int, epochs: int, last: float
) -> None:
    ours = [multistep_lr(e, base, start, step, 0.5) for e in range(epochs)]
    ref = _torch_multistep(base, start, step, 0.5, epochs)
    assert ours == pytest.approx(ref, rel=1e-12)
    assert ours[start - 1] == base and ours[start] == base / 2  # epoch start+1 is the first decayed
    assert ours[-1] == pytest.approx(last)  # OFFICIAL_CAVMAE.md §5.3: "down to 4.9e-8" etc.


def test_multistep_is_constant_within_an_epoch() -> None:
    s = LRSchedule("multistep", 1e-3, 20, start=2, step=1, decay=0.5)
    assert {s.lr_at(3, k, 50) for k in range(50)} == {1e-3 / 4}


def test_cosine_warmup_then_decay_to_min() -> None:
    s = LRSchedule("cosine", 1.0, 10, warmup_epochs=2, min_lr=0.1)
    assert s.lr_at(0, 0, 10) == 0.0
    assert s.lr_at(1, 0, 10) == pytest.approx(0.5)  # half way through the warmup
    assert s.lr_at(2, 0, 10) == pytest.approx(1.0)  # peak
    assert s.lr_at(6, 0, 10) == pytest.approx(0.1 + 0.9 * 0.5)  # cosine midpoint
    assert cosine_lr(10.0, 1.0, 10, 2, 0.1) == pytest.approx(0.1)
    lrs = [s.lr_at(e, k, 10) for e in range(2, 10) for k in range(10)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))  # monotone after the warmup


def test_constant_and_validation() -> None:
    assert LRSchedule("constant", 3e-4, 5).lr_at(4, 7, 10) == 3e-4
    with pytest.raises(ConfigError):
        LRSchedule("linear", 1e-3, 5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        LRSchedule("constant", 0.0, 5)
    with pytest.raises(ConfigError):
        multistep_lr(3, 1e-3, 2, 0, 0.5)


def test_apply_lr_uses_group_scale() -> None:
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([{"params": [a], "lr_scale": 1.0}, {"params": [b], "lr_scale": 100.0}])
    apply_lr(opt, 5e-5)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([5e-5, 5e-3])
    assert not math.isnan(opt.param_groups[1]["lr"])
