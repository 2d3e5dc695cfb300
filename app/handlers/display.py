"""Display geometry: how spectrograms and frames are enlarged on screen, and clicks mapped back.

The spectrogram of a (T, F) fbank is drawn as an image of F rows by T columns with the lowest
mel bin at the BOTTOM (:func:`cavmae.viz.spectrogram_image`), then enlarged by integer factors
(``sy`` rows, ``sx`` columns per bin) so that patches are big enough to click: 1024 x 128 is
shown at 1024 x 256. Audio tokens are frequency-major on the (F/p, T/p) grid with frequency
row 0 the lowest band: token = f * t_patches + t (OFFICIAL_CAVMAE.md §1.5). A click at display
pixel (x, y) therefore lands on time patch ``x // (p * sx)`` and, because of the vertical
flip, on frequency patch ``f_patches - 1 - y // (p * sy)``. Frames are row-major on the
(S/p, S/p) grid and only scaled.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from cavmae import viz

__all__ = [
    "DisplayGeometry",
    "geometry_for",
    "render_spectrogram",
    "render_frame",
    "save_png",
    "save_jpeg",
    "MASK_COLOUR",
]

#: Colour of masked patches on the "masked input" views.
MASK_COLOUR = (48, 48, 56)
_GRID_COLOUR = np.array((255, 255, 255), dtype=np.float32)
_GRID_ALPHA = 0.18
_SPEC_WIDTH, _SPEC_HEIGHT, _FRAME_SIDE = 1024, 256, 224


@dataclass(frozen=True)
class DisplayGeometry:
    """Token grids of a model and the integer display scale of each view.

    Attributes:
        patch: Patch size p (pixels per patch side, both modalities).
        audio_grid: (F/p, T/p) frequency and time patches.
        visual_grid: (S/p, S/p) rows and columns of image patches.
        sx, sy: Display pixels per fbank frame (x) and per mel bin (y).
        sv: Display pixels per frame pixel.
    """

    patch: int
    audio_grid: tuple[int, int]
    visual_grid: tuple[int, int]
    sx: int
    sy: int
    sv: int

    @property
    def num_audio_tokens(self) -> int:
        return self.audio_grid[0] * self.audio_grid[1]

    @property
    def num_visual_tokens(self) -> int:
        return self.visual_grid[0] * self.visual_grid[1]

    def audio_token_at(self, x: float, y: float) -> int | None:
        """Audio token under display pixel (x, y) of a spectrogram view, None outside it."""
        f_n, t_n = self.audio_grid
        t = int(x) // (self.patch * self.sx)
        row = int(y) // (self.patch * self.sy)  # 0 = top = highest frequency band
        if not (0 <= t < t_n and 0 <= row < f_n) or x < 0 or y < 0:
            return None
        f = f_n - 1 - row  # vertical flip: low frequencies are drawn at the bottom
        return f * t_n + t

    def visual_token_at(self, x: float, y: float) -> int | None:
        """Visual token under display pixel (x, y) of a frame view, None outside it."""
        gh, gw = self.visual_grid
        col = int(x) // (self.patch * self.sv)
        row = int(y) // (self.patch * self.sv)
        if not (0 <= col < gw and 0 <= row < gh) or x < 0 or y < 0:
            return None
        return row * gw + col


def geometry_for(predictor: object) -> DisplayGeometry:
    """The display geometry of a predictor's models (its pretraining model when present)."""
    c = getattr(predictor, "pretrain", None) or predictor.classifier  # type: ignore[attr-defined]
    cfg = c.config
    f_bins, t_frames = cfg.num_mel_bins, cfg.audio_length
    return DisplayGeometry(
        patch=cfg.patch_size,
        audio_grid=cfg.audio_grid,
        visual_grid=cfg.visual_grid,
        sx=max(1, round(_SPEC_WIDTH / t_frames)),
        sy=max(1, round(_SPEC_HEIGHT / f_bins)),
        sv=max(1, round(_FRAME_SIDE / cfg.img_size)),
    )


def _enlarge(img: np.ndarray, sy: int, sx: int) -> np.ndarray:
    """Nearest-neighbour enlargement by separate integer factors: (H, W, 3) -> (H*sy, W*sx, 3)."""
    if sy > 1:
        img = np.repeat(img, sy, axis=0)
    if sx > 1:
        img = np.repeat(img, sx, axis=1)
    return img


def _draw_grid(img: np.ndarray, step_y: int, step_x: int) -> np.ndarray:
    """Faint patch-boundary lines every ``step`` display pixels (helps clicking patches)."""
    out = img.astype(np.float32)
    out[::step_y] = (1 - _GRID_ALPHA) * out[::step_y] + _GRID_ALPHA * _GRID_COLOUR
    out[:, ::step_x] = (1 - _GRID_ALPHA) * out[:, ::step_x] + _GRID_ALPHA * _GRID_COLOUR
    return out.astype(np.uint8)


def render_spectrogram(
    fbank: np.ndarray,
    geom: DisplayGeometry,
    pixel_mask: np.ndarray | None = None,
    grid: bool = False,
) -> np.ndarray:
    """A (T, F) fbank as an enlarged RGB image, low frequencies at the bottom.

    Args:
        fbank: (T, F) normalised fbank.
        geom: Display geometry.
        pixel_mask: (F, T) mask in model orientation (row 0 = lowest bin), 1 = masked; drawn
            in :data:`MASK_COLOUR`.
        grid: Draw patch boundaries.

    Returns:
        (F * sy, T * sx, 3) uint8.
    """
    img = viz.spectrogram_image(fbank)  # (F, T, 3), flipped: low bins at the bottom
    if pixel_mask is not None:
        img = viz.overlay_mask(img, np.asarray(pixel_mask)[::-1], MASK_COLOUR)  # same flip
    img = _enlarge(img, geom.sy, geom.sx)  # (F*sy, T*sx, 3)
    if grid:
        img = _draw_grid(img, geom.patch * geom.sy, geom.patch * geom.sx)
    return img


def render_frame(
    frame: np.ndarray,
    geom: DisplayGeometry,
    pixel_mask: np.ndarray | None = None,
    grid: bool = False,
) -> np.ndarray:
    """An (S, S, 3) uint8 frame enlarged for display, masked patches painted over."""
    img = frame
    if pixel_mask is not None:
        img = viz.overlay_mask(img, pixel_mask, MASK_COLOUR)
    img = _enlarge(img, geom.sv, geom.sv)  # (S*sv, S*sv, 3)
    if grid:
        img = _draw_grid(img, geom.patch * geom.sv, geom.patch * geom.sv)
    return img


def save_png(img: np.ndarray, path: Path) -> str:
    """Write an RGB uint8 image as a quickly compressed PNG; returns the path as a string.

    Compression level 1 encodes a 1024 x 256 view in ~8 ms instead of ~35 ms at PIL's default
    level (files ~20 % larger), which matters for slider-driven updates.
    """
    return _save(img, path, "png", compress_level=1)


def save_jpeg(img: np.ndarray, path: Path, quality: int = 92) -> str:
    """Write an RGB uint8 image as JPEG (~1 ms for 1024 x 256); returns the path as a string."""
    return _save(img, path, "jpeg", quality=quality, subsampling=0)


def _save(img: np.ndarray, path: Path, fmt: str, **kw: object) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(np.ascontiguousarray(img)).save(tmp, format=fmt, **kw)
    tmp.replace(path)
    return str(path)
