"""Audio orientation and patchify/unpatchify (OFFICIAL_CAVMAE.md §1.5, §2.4).

Audio: the data pipeline yields a log-mel fbank (B, T, F) (time-major, as AST). The model
treats it as a one-channel image (B, 1, F, T) of height F (frequency, low to high) and width T
(time). :func:`fbank_to_patch_input` is the only place where that transpose happens. The patch
grid is (F/p, T/p), e.g. 8 x 64, flattened row-major: **frequency-major, token = f * T_p + t**
(T_p = T/p time patches, 64 at full size), the opposite of AudioMAE's time-major order.

Within a patch the values are ordered (row offset, column offset, channel), channel last: for
audio ``freq_offset * p + time_offset``, for images ``(row * p + col) * 3 + channel``. This is
MAE's ``nchpwq -> nhwpqc`` layout.
"""

from __future__ import annotations

import torch

__all__ = [
    "fbank_to_patch_input",
    "patch_input_to_fbank",
    "patchify",
    "unpatchify",
    "patchify_audio",
    "unpatchify_audio",
]


def fbank_to_patch_input(fbank: torch.Tensor) -> torch.Tensor:
    """Turn a time-major fbank into the model's one-channel image.

    Args:
        fbank: (B, T, F) normalised log-mel filterbank.

    Returns:
        (B, 1, F, T): height = frequency, width = time. After a p x p patch embedding the
        token order is frequency-major: token = f * (T / p) + t.
    """
    # Parity: unsqueeze(1) then transpose(2, 3) (OFFICIAL_CAVMAE.md §1.5).
    return fbank.unsqueeze(1).transpose(2, 3)  # (B, 1, F, T)


def patch_input_to_fbank(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`fbank_to_patch_input`: (B, 1, F, T) -> (B, T, F)."""
    return x.squeeze(1).transpose(1, 2)  # (B, T, F)


def patchify(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Cut an image-like tensor into flattened patches.

    Args:
        x: (B, C, H * p, W * p).
        patch_size: p.

    Returns:
        (B, H * W, p * p * C); patches row-major, values ordered (row, col, channel).

    Raises:
        ValueError: if the spatial size is not a multiple of ``patch_size``.
    """
    B, C, Hp, Wp = x.shape
    p = patch_size
    if Hp % p or Wp % p:
        raise ValueError(f"patchify: spatial size ({Hp}, {Wp}) is not a multiple of {p}")
    h, w = Hp // p, Wp // p
    x = x.reshape(B, C, h, p, w, p)  # (B, C, h, p, w, p)
    x = torch.einsum("nchpwq->nhwpqc", x)  # (B, h, w, p, p, C)
    return x.reshape(B, h * w, p * p * C)  # (B, L, p*p*C)


def unpatchify(
    x: torch.Tensor, grid_hw: tuple[int, int], patch_size: int, channels: int
) -> torch.Tensor:
    """Inverse of :func:`patchify`.

    Args:
        x: (B, H * W, p * p * C).
        grid_hw: (H, W) patch grid.
        patch_size: p.
        channels: C.

    Returns:
        (B, C, H * p, W * p).

    Raises:
        ValueError: if ``x`` does not match the geometry.
    """
    B, L, P = x.shape
    h, w = grid_hw
    p = patch_size
    if L != h * w or P != p * p * channels:
        raise ValueError(
            f"unpatchify: got (L={L}, P={P}), expected L={h * w} and P={p * p * channels} "
            f"for grid {grid_hw}, patch {p}, {channels} channel(s)"
        )
    x = x.reshape(B, h, w, p, p, channels)  # (B, h, w, p, p, C)
    x = torch.einsum("nhwpqc->nchpwq", x)  # (B, C, h, p, w, p)
    return x.reshape(B, channels, h * p, w * p)  # (B, C, H, W)


def patchify_audio(fbank: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Audio MAE target: (B, T, F) fbank -> (B, L_a, p * p) patches in token order."""
    return patchify(fbank_to_patch_input(fbank), patch_size)  # (B, L_a, P_a)


def unpatchify_audio(x: torch.Tensor, grid_ft: tuple[int, int], patch_size: int) -> torch.Tensor:
    """Inverse of :func:`patchify_audio`: (B, L_a, p * p) -> (B, T, F) for an (F_p, T_p) grid."""
    return patch_input_to_fbank(unpatchify(x, grid_ft, patch_size, 1))  # (B, T, F)
