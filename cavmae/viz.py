"""Pure numpy renderers: spectrograms, frames, patch masks and heat maps as RGB uint8 images.

Nothing here touches a model or a UI toolkit; the CLI writes these arrays as PNG files and the
web app shows them. Orientation conventions (OFFICIAL_CAVMAE.md §1.5):

- a model-ready fbank is (T, F) (time-major); it is drawn as an image of F rows by T columns with
  the lowest mel bin at the BOTTOM, as the official inpainting figure does (``origin='lower'``);
- audio patch tokens are frequency-major: token = f * t_patches + t, on an (F/p, T/p) grid;
- visual patch tokens are row-major on an (S/p, S/p) grid.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np
from plotly.colors import hex_to_rgb, sequential

from cavmae.config import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "colorize",
    "spectrogram_image",
    "normalised_frame_image",
    "patch_mask_pixels",
    "overlay_mask",
    "paste_visible",
    "heatmap_overlay",
    "upscale",
    "SPEC_RANGE",
]

#: Display range of a normalised fbank ((x + 5.081) / 4.4849): log floor -2.42, padding +1.13.
SPEC_RANGE: tuple[float, float] = (-2.5, 2.5)


@lru_cache(maxsize=8)
def _lut(name: str) -> np.ndarray:
    """A 256-entry RGB lookup table interpolated from a plotly sequential colour scale."""
    stops = getattr(sequential, name)
    rgb = np.array(
        [hex_to_rgb(c) if c.startswith("#") else _parse_rgb(c) for c in stops], dtype=np.float64
    )  # (S, 3)
    xs = np.linspace(0.0, 1.0, len(rgb))
    grid = np.linspace(0.0, 1.0, 256)
    lut = np.stack([np.interp(grid, xs, rgb[:, c]) for c in range(3)], axis=1)  # (256, 3)
    return np.clip(np.round(lut), 0, 255).astype(np.uint8)


def _parse_rgb(s: str) -> tuple[int, int, int]:
    inner = s[s.index("(") + 1 : s.index(")")]
    r, g, b = (int(float(v)) for v in inner.split(",")[:3])
    return r, g, b


def colorize(
    x: np.ndarray, vmin: float, vmax: float, cmap: str = "Viridis"
) -> np.ndarray:
    """Maps a 2-D float array to RGB with a plotly colour scale.

    Args:
        x: (H, W) values.
        vmin, vmax: values mapped to the ends of the scale (clipped outside).
        cmap: name of a scale in ``plotly.colors.sequential`` (e.g. "Viridis", "Inferno").

    Returns:
        (H, W, 3) uint8 image.
    """
    span = max(vmax - vmin, 1e-12)
    idx = np.clip((np.asarray(x, dtype=np.float64) - vmin) / span, 0.0, 1.0)
    return _lut(cmap)[np.round(idx * 255).astype(np.int64)]  # (H, W, 3)


def spectrogram_image(
    fbank: np.ndarray, value_range: tuple[float, float] = SPEC_RANGE, cmap: str = "Viridis"
) -> np.ndarray:
    """Renders a normalised fbank (T, F) as an (F, T, 3) image, low frequencies at the bottom."""
    fbank = np.asarray(fbank, dtype=np.float32)
    if fbank.ndim != 2:
        raise ValueError(f"expected a (T, F) fbank, got shape {fbank.shape}")
    return colorize(fbank.T[::-1], *value_range, cmap=cmap)  # (F, T, 3)


def normalised_frame_image(
    x: np.ndarray,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> np.ndarray:
    """De-normalises an ImageNet-normalised frame (3, S, S) to an (S, S, 3) uint8 image."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 3 or x.shape[0] != 3:
        raise ValueError(f"expected a (3, H, W) frame, got shape {x.shape}")
    img = x * np.asarray(std, np.float32)[:, None, None] + np.asarray(mean, np.float32)[:, None, None]
    return np.clip(np.round(img.transpose(1, 2, 0) * 255.0), 0, 255).astype(np.uint8)  # (S, S, 3)


def patch_mask_pixels(mask: np.ndarray, grid: tuple[int, int], patch_size: int) -> np.ndarray:
    """Expands a per-token mask (L,) on a row-major (gh, gw) grid to (gh*p, gw*p) pixels.

    For audio pass the (F/p, T/p) grid: the result is in (F, T) orientation, i.e. the
    transpose of the model's (T, F) fbank, with frequency row 0 = lowest mel bin.
    """
    gh, gw = grid
    m = np.asarray(mask).reshape(gh, gw)
    return np.kron(m, np.ones((patch_size, patch_size), dtype=m.dtype))  # (gh*p, gw*p)


def overlay_mask(
    img: np.ndarray, pixel_mask: np.ndarray, color: tuple[int, int, int] = (40, 40, 40)
) -> np.ndarray:
    """Paints masked pixels (pixel_mask > 0.5) of an (H, W, 3) uint8 image in a flat colour."""
    out = img.copy()
    out[np.asarray(pixel_mask) > 0.5] = np.asarray(color, dtype=np.uint8)
    return out


def paste_visible(original: np.ndarray, reconstruction: np.ndarray, pixel_mask: np.ndarray) -> np.ndarray:
    """Composite: reconstruction where masked (mask > 0.5), original where visible. Same shapes."""
    m = np.asarray(pixel_mask) > 0.5
    if original.ndim == 3:
        m = m[..., None]
    return np.where(m, reconstruction, original)


def upscale(img: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement of an (H, W[, 3]) image by an integer factor (for display)."""
    if factor <= 1:
        return img
    return cv2.resize(img, None, fx=factor, fy=factor, interpolation=cv2.INTER_NEAREST)


def heatmap_overlay(
    frame: np.ndarray,
    heat: np.ndarray,
    alpha: float = 0.5,
    value_range: tuple[float, float] | None = None,
    cmap: str = "Inferno",
) -> np.ndarray:
    """Blends a low-resolution heat map (h, w) over an (H, W, 3) uint8 frame.

    The map is upsampled bilinearly to the frame size and mapped through ``cmap``;
    ``value_range`` defaults to the map's own min and max.
    """
    h_img, w_img = frame.shape[:2]
    heat = np.asarray(heat, dtype=np.float32)
    up = cv2.resize(heat, (w_img, h_img), interpolation=cv2.INTER_LINEAR)  # (H, W)
    lo, hi = value_range if value_range is not None else (float(heat.min()), float(heat.max()))
    colour = colorize(up, lo, hi, cmap=cmap)  # (H, W, 3)
    blended = (1.0 - alpha) * frame.astype(np.float32) + alpha * colour.astype(np.float32)
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)
