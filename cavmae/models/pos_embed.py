"""Fixed 2-D sine-cosine positional tables (OFFICIAL_CAVMAE.md §1.5).

Reference implementation: the MAE ``get_2d_sincos_pos_embed`` as used by CAV-MAE
(``src/models/pos_embed.py``), re-derived here in torch float64.

Layout of ``sincos_2d(D, (H, W))`` for token ``n = r * W + c`` (row ``r``, column ``c``): the
first D/2 channels encode the **column** ``c`` and the last D/2 the **row** ``r`` ("column
first", as in MAE). For audio the grid is (frequency, time), so the first half encodes time.
Each half is ``[sin(p * w_k) | cos(p * w_k)]`` with ``w_k = 10000 ** (-k / (D/4))``.
"""

from __future__ import annotations

import torch

__all__ = ["sincos_1d", "sincos_2d"]


def sincos_1d(embed_dim: int, positions: torch.Tensor) -> torch.Tensor:
    """1-D sine-cosine embedding.

    Args:
        embed_dim: output width E (even).
        positions: (M,) positions.

    Returns:
        (M, E) float64 table ``[sin(p * w) | cos(p * w)]``.

    Raises:
        ValueError: if ``embed_dim`` is odd.
    """
    if embed_dim % 2:
        raise ValueError(f"sincos_1d needs an even embed_dim, got {embed_dim}")
    half = embed_dim // 2
    omega = torch.arange(half, dtype=torch.float64, device=positions.device) / half  # (E/2,)
    omega = 1.0 / 10000**omega  # (E/2,)
    angles = positions.to(torch.float64)[:, None] * omega[None, :]  # (M, E/2)
    return torch.cat([angles.sin(), angles.cos()], dim=1)  # (M, E)


def sincos_2d(
    embed_dim: int, grid_hw: tuple[int, int], device: torch.device | str | None = None
) -> torch.Tensor:
    """2-D sine-cosine table over an (H, W) patch grid, row-major tokens.

    Args:
        embed_dim: table width D (multiple of 4).
        grid_hw: (rows, columns); (8, 64) frequency x time for audio, (14, 14) for images.
        device: where to build the table.

    Returns:
        (H * W, D) float64 table; columns [0, D/2) encode the column index, [D/2, D) the row.

    Raises:
        ValueError: if ``embed_dim`` is not a multiple of 4.
    """
    if embed_dim % 4:
        raise ValueError(f"sincos_2d needs embed_dim divisible by 4, got {embed_dim}")
    h, w = grid_hw
    rows = torch.arange(h, dtype=torch.float64, device=device).repeat_interleave(w)  # (H*W,)
    cols = torch.arange(w, dtype=torch.float64, device=device).repeat(h)  # (H*W,)
    # Parity: column (time for audio) first, row (frequency) second (OFFICIAL_CAVMAE.md §1.5).
    return torch.cat([sincos_1d(embed_dim // 2, cols), sincos_1d(embed_dim // 2, rows)], dim=1)
