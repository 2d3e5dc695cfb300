"""Masking invariants (OFFICIAL_CAVMAE.md §2.1)."""

from __future__ import annotations

import pytest
import torch

from cavmae.models.masking import (
    noise_from_patch_mask,
    num_kept,
    random_masking,
    structured_masking,
)


@pytest.mark.parametrize("L,ratio", [(512, 0.75), (196, 0.75), (16, 0.9), (128, 0.5), (7, 0.3)])
def test_keeps_int_truncated_count_and_restores(L: int, ratio: float) -> None:
    x = torch.randn(3, L, 5)
    res = random_masking(x, ratio, generator=torch.Generator().manual_seed(0))
    k = int(L * (1 - ratio))
    assert num_kept(L, ratio) == k
    assert res.kept.shape == (3, k, 5)
    assert res.mask.sum(1).eq(L - k).all()
    # ids_restore inverts the shuffle: kept + placeholders, gathered back, give x at kept slots.
    full = torch.cat([res.kept, torch.zeros(3, L - k, 5)], dim=1)
    restored = torch.gather(full, 1, res.ids_restore[..., None].expand(-1, -1, 5))
    keep = res.mask == 0
    assert torch.equal(restored[keep], x[keep])
    assert torch.equal(restored[~keep], torch.zeros_like(restored[~keep]))


def test_official_counts() -> None:
    assert num_kept(512, 0.75) == 128 and num_kept(196, 0.75) == 49 and num_kept(16, 0.9) == 1


def test_noise_order_and_given_noise_reproducible() -> None:
    x = torch.arange(8.0).reshape(1, 8, 1)
    noise = torch.tensor([[0.9, 0.1, 0.5, 0.3, 0.8, 0.2, 0.7, 0.6]])
    res = random_masking(x, 0.5, noise=noise)
    assert res.kept.flatten().tolist() == [1.0, 5.0, 3.0, 2.0]  # ascending noise order
    assert res.mask.tolist() == [[1, 0, 0, 0, 1, 0, 1, 1]]
    again = random_masking(x, 0.5, noise=noise.clone())
    assert torch.equal(again.mask, res.mask) and torch.equal(again.ids_restore, res.ids_restore)


def test_generator_reproducible() -> None:
    x = torch.randn(2, 64, 3)
    r1 = random_masking(x, 0.75, generator=torch.Generator().manual_seed(5))
    r2 = random_masking(x, 0.75, generator=torch.Generator().manual_seed(5))
    r3 = random_masking(x, 0.75, generator=torch.Generator().manual_seed(6))
    assert torch.equal(r1.mask, r2.mask) and not torch.equal(r1.mask, r3.mask)


def test_ratio_extremes_and_errors() -> None:
    x = torch.randn(2, 10, 3)
    assert random_masking(x, 1.0).kept.shape == (2, 0, 3)
    assert random_masking(x, 1.0).mask.sum() == 20
    assert random_masking(x, 0.0).mask.sum() == 0
    with pytest.raises(ValueError):
        random_masking(x, 1.5)
    with pytest.raises(ValueError):
        random_masking(x, 0.5, noise=torch.rand(2, 9))
    with pytest.raises(ValueError):
        structured_masking(x, 0.5, (2, 5), "diagonal")
    with pytest.raises(ValueError):
        structured_masking(x, 0.5, (3, 5), "time")


@pytest.mark.parametrize(
    "L,n_removed", [(196, 147), (512, 384), (16, 15), (49, 13), (10, 0), (10, 10)]
)
def test_noise_from_patch_mask_exact(L: int, n_removed: int) -> None:
    g = torch.Generator().manual_seed(L + n_removed)
    chosen = torch.stack([torch.randperm(L, generator=g)[:n_removed] for _ in range(3)])
    patch_mask = torch.zeros(3, L, dtype=torch.bool).scatter(1, chosen, True)
    noise, ratio = noise_from_patch_mask(patch_mask)
    x = torch.randn(3, L, 2)
    res = random_masking(x, ratio, noise=noise)
    assert torch.equal(res.mask.bool(), patch_mask)
    # kept tokens in original order
    assert torch.equal(res.kept, x[~patch_mask].reshape(3, L - n_removed, 2))


def test_noise_from_patch_mask_grid_and_unequal_counts() -> None:
    grid = torch.zeros(2, 8, 64, dtype=torch.bool)
    grid[:, :, 10:20] = True  # ten time columns
    noise, ratio = noise_from_patch_mask(grid)
    assert noise.shape == (2, 512) and int(512 * (1 - ratio)) == 512 - 80
    bad = torch.zeros(2, 10, dtype=torch.bool)
    bad[0, 0] = True
    with pytest.raises(ValueError):
        noise_from_patch_mask(bad)
