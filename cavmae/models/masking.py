"""Token masking: pure, vectorised functions (OFFICIAL_CAVMAE.md §2.1).

Reference implementation: ``CAVMAE.random_masking_unstructured`` and
``random_masking_structured`` in ``src/models/cav_mae.py`` (which follow MAE's
``random_masking``). All functions take an optional ``torch.Generator`` so that a UI seed is
reproducible, and the unstructured path accepts injected noise so that the official masks can
be replayed exactly (PARITY.md "Noise / masking convention").

Conventions: ``mask`` is 1 for **removed** tokens and 0 for kept ones, in original token order;
kept tokens come out in noise order (not in original order); ``ids_restore`` is the inverse of
the sort permutation. Structured audio masking works on the (frequency, time) token grid,
flattened frequency-major (token = f * T_p + t).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch

__all__ = [
    "MaskMode",
    "MASK_MODES",
    "STRUCTURED_MODES",
    "MaskResult",
    "num_kept",
    "uniform_noise",
    "random_masking",
    "structured_selection",
    "mark_structured",
    "structured_noise",
    "structured_masking",
    "noise_from_patch_mask",
]

MaskMode = Literal["unstructured", "time", "freq", "tf"]
MASK_MODES: tuple[str, ...] = ("unstructured", "time", "freq", "tf")
STRUCTURED_MODES: tuple[str, ...] = ("time", "freq", "tf")

#: Noise given to structurally selected tokens; larger than any U[0, 1) draw so they sort last.
STRUCTURED_FILL = 1.1
#: Fraction applied on top of the ratio to both axes in 'tf' mode (official constant).
TF_FACTOR = 0.7


class MaskResult(NamedTuple):
    """Result of a masking call.

    Attributes:
        kept: (B, K, D) kept tokens in noise order.
        mask: (B, L) float, 1 = removed, 0 = kept, original token order.
        ids_restore: (B, L) int64 inverse permutation of the ascending noise sort.
    """

    kept: torch.Tensor
    mask: torch.Tensor
    ids_restore: torch.Tensor


def _check_ratio(ratio: float) -> None:
    """Raise ValueError unless 0 <= ratio <= 1."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mask ratio must be in [0, 1], got {ratio}")


def num_kept(length: int, ratio: float) -> int:
    """Number of kept tokens, ``int(L * (1 - ratio))`` (truncating, Python float maths).

    Raises:
        ValueError: if ``ratio`` is outside [0, 1].
    """
    _check_ratio(ratio)
    # Parity: OFFICIAL_CAVMAE.md §2.1 -- int() truncation, e.g. 16 tokens at 0.9 keep 1.
    return int(length * (1 - ratio))


def uniform_noise(
    shape: tuple[int, ...],
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """U[0, 1) float32 noise; drawn on the generator's device when one is given."""
    if generator is None:
        return torch.rand(shape, device=device)
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def _mask_with_noise(x: torch.Tensor, noise: torch.Tensor, len_keep: int) -> MaskResult:
    """Keep the ``len_keep`` tokens of (B, L, D) ``x`` with the smallest (B, L) noise."""
    B, L, D = x.shape
    # Parity: OFFICIAL_CAVMAE.md §2.1 -- ascending argsort: small is keep, large is remove.
    ids_shuffle = torch.argsort(noise, dim=1)  # (B, L)
    # Parity: OFFICIAL_CAVMAE.md §2.1 -- ids_restore is the argsort of the argsort.
    ids_restore = torch.argsort(ids_shuffle, dim=1)  # (B, L)
    # Parity: OFFICIAL_CAVMAE.md §2.1 -- kept tokens stay in noise order.
    ids_keep = ids_shuffle[:, :len_keep]  # (B, K)
    kept = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, D))  # (B, K, D)
    # Parity: OFFICIAL_CAVMAE.md §2.1 -- 1 = removed, built shuffled then un-shuffled.
    mask = torch.ones(B, L, device=x.device)  # (B, L)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)  # (B, L)
    return MaskResult(kept, mask, ids_restore)


def random_masking(
    x: torch.Tensor,
    ratio: float,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> MaskResult:
    """Unstructured random masking (MAE / CAV-MAE semantics).

    Args:
        x: (B, L, D) tokens (positional and modality embeddings already added).
        ratio: fraction to remove; ``int(L * (1 - ratio))`` tokens are kept.
        noise: optional (B, L) sorting noise (smallest kept), e.g. replayed official noise or
            the output of :func:`noise_from_patch_mask` / :func:`structured_noise`.
        generator: RNG for the U[0, 1) noise when ``noise`` is None.

    Returns:
        MaskResult(kept (B, K, D), mask (B, L), ids_restore (B, L)).

    Raises:
        ValueError: for a ratio outside [0, 1] or a noise of the wrong shape.
    """
    B, L, _ = x.shape
    len_keep = num_kept(L, ratio)
    if noise is None:
        # Parity: OFFICIAL_CAVMAE.md §2.1 -- noise = U[0, 1) of shape (B, L).
        noise = uniform_noise((B, L), x.device, generator)  # (B, L)
    elif tuple(noise.shape) != (B, L):
        raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {(B, L)}")
    return _mask_with_noise(x, noise.to(x.device), len_keep)


def _choose(
    batch: int,
    n: int,
    k: int,
    device: torch.device | str | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """(B, n) bool with exactly ``k`` True entries per row, uniformly at random."""
    order = uniform_noise((batch, n), device, generator).argsort(dim=1)  # (B, n)
    chosen = torch.zeros(batch, n, dtype=torch.bool, device=order.device)
    return chosen.scatter(1, order[:, :k], True)  # (B, n)


def structured_selection(
    batch: int,
    grid_ft: tuple[int, int],
    ratio: float,
    mode: str,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Draw the time columns and/or frequency rows that structured masking marks.

    Counts follow the official code: 'time' ``int(T_p * ratio)`` columns, 'freq'
    ``int(F_p * ratio)`` rows, 'tf' ``int(T_p * ratio * 0.7)`` columns and
    ``int(F_p * ratio * 0.7)`` rows. The draw is torch-based; it does not reproduce the official
    Python ``random.sample`` sequence.

    Args:
        batch: B.
        grid_ft: (F_p, T_p) audio token grid, e.g. (8, 64).
        ratio: mask ratio.
        mode: 'time', 'freq' or 'tf'.
        device: output device.
        generator: RNG.

    Returns:
        (time_sel (B, T_p) bool or None, freq_sel (B, F_p) bool or None).

    Raises:
        ValueError: for an unknown mode or a ratio outside [0, 1].
    """
    _check_ratio(ratio)
    f, t = grid_ft
    if mode == "time":
        return _choose(batch, t, int(t * ratio), device, generator), None
    if mode == "freq":
        return None, _choose(batch, f, int(f * ratio), device, generator)
    if mode == "tf":
        time_sel = _choose(batch, t, int(t * ratio * TF_FACTOR), device, generator)
        freq_sel = _choose(batch, f, int(f * ratio * TF_FACTOR), device, generator)
        return time_sel, freq_sel
    raise ValueError(f"unknown structured mask mode {mode!r}; choose one of {STRUCTURED_MODES}")


def mark_structured(
    noise: torch.Tensor,
    grid_ft: tuple[int, int],
    time_sel: torch.Tensor | None = None,
    freq_sel: torch.Tensor | None = None,
) -> torch.Tensor:
    """Set the noise of the selected time columns / frequency rows to 1.1 (removed first).

    Args:
        noise: (B, L) base noise in token order, L = F_p * T_p.
        grid_ft: (F_p, T_p).
        time_sel: (B, T_p) bool columns to mark, or None.
        freq_sel: (B, F_p) bool rows to mark, or None.

    Returns:
        (B, L) marked noise (a new tensor).
    """
    B = noise.shape[0]
    f, t = grid_ft
    grid = noise.reshape(B, f, t)  # (B, F_p, T_p), frequency-major
    marked = torch.zeros(B, f, t, dtype=torch.bool, device=noise.device)
    if time_sel is not None:
        marked = marked | time_sel.to(noise.device)[:, None, :]  # (B, F_p, T_p)
    if freq_sel is not None:
        marked = marked | freq_sel.to(noise.device)[:, :, None]  # (B, F_p, T_p)
    # Parity: OFFICIAL_CAVMAE.md §2.1 -- selected entries get noise 1.1 so they sort last.
    grid = torch.where(marked, torch.full_like(grid, STRUCTURED_FILL), grid)
    return grid.reshape(B, f * t)  # (B, L)


def structured_noise(
    batch: int,
    grid_ft: tuple[int, int],
    ratio: float,
    mode: str,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Sorting noise for structured masking: U[0, 1) base noise with marked columns/rows at 1.1.

    The base noise is drawn first, then the selection (the official order of draws).

    Returns:
        (B, F_p * T_p) noise to pass to :func:`random_masking` with the same ratio.
    """
    f, t = grid_ft
    base = uniform_noise((batch, f * t), device, generator)  # (B, L)
    time_sel, freq_sel = structured_selection(batch, grid_ft, ratio, mode, device, generator)
    return mark_structured(base, grid_ft, time_sel, freq_sel)


def structured_masking(
    x: torch.Tensor,
    ratio: float,
    grid_ft: tuple[int, int],
    mode: str,
    generator: torch.Generator | None = None,
) -> MaskResult:
    """Structured audio masking: whole time columns ('time'), frequency rows ('freq') or both.

    Args:
        x: (B, L_a, D) audio tokens, L_a = F_p * T_p in frequency-major order.
        ratio: mask ratio; ``int(L_a * (1 - ratio))`` tokens are kept.
        grid_ft: (F_p, T_p) token grid from the model config (``ModelConfig.audio_grid``).
        mode: 'time', 'freq' or 'tf'.
        generator: RNG.

    Returns:
        MaskResult as :func:`random_masking`. In 'tf' mode the marked union can exceed the
        removed count; then some marked tokens (tied at 1.1) survive, as in the official code.

    Raises:
        ValueError: if L_a does not match ``grid_ft`` or the mode is unknown.
    """
    B, L, _ = x.shape
    f, t = grid_ft
    if L != f * t:
        raise ValueError(f"structured masking: {L} tokens do not fit the grid {grid_ft}")
    noise = structured_noise(B, grid_ft, ratio, mode, x.device, generator)  # (B, L)
    return random_masking(x, ratio, noise=noise)


def noise_from_patch_mask(patch_mask: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Noise and ratio that make :func:`random_masking` remove exactly the chosen patches.

    Kept tokens get noise in [0, 0.5) increasing with their index (so they stay in original
    order), removed tokens [1, 1.5).

    Args:
        patch_mask: (B, L) or a grid (B, H, W) of bools, True = remove. Every sample must
            remove the same number of patches.

    Returns:
        (noise (B, L) float32, ratio) with ``int(L * (1 - ratio))`` equal to the kept count.

    Raises:
        ValueError: if samples remove different numbers of patches.
    """
    B = patch_mask.shape[0]
    m = patch_mask.reshape(B, -1).bool()  # (B, L)
    L = m.shape[1]
    counts = m.sum(dim=1)
    n_removed = int(counts[0]) if B else 0
    if bool((counts != n_removed).any()):
        raise ValueError(
            f"noise_from_patch_mask: samples remove different numbers of patches "
            f"{counts.tolist()}; the model needs one count per batch"
        )
    order = torch.arange(L, dtype=torch.float32, device=m.device) / (2 * L)  # (L,) in [0, .5)
    noise = m.float() + order[None, :]  # (B, L)
    ratio = n_removed / L if L else 0.0
    if int(L * (1 - ratio)) != L - n_removed:
        ratio = (n_removed - 0.5) / L  # the truncation then lands on L - n_removed exactly
    return noise, ratio
