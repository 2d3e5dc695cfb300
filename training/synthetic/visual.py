"""Frame rendering of AV-Shapes clips: background, anti-aliased textured shapes, masks, boxes.

Shapes are polygons in object units (radius about 1), filled with OpenCV's anti-aliased
polygon fill at 1/16 pixel precision inside a small region around the object. An active
object (a source while it sounds, a distractor at its own silent glow times) is drawn with a
soft halo in a light tint of its colour; size and colour do not change with activity, so every
frame shows the instance size and shade, and a glow alone never tells which object sounds.
Pixel coordinates are
continuous, with pixel (i, j) covering [j, j + 1) x [i, i + 1); boxes are (x0, y0, x1, y1).
"""

from __future__ import annotations

import colorsys

import cv2
import numpy as np

from training.synthetic.classes import CLASSES
from training.synthetic.config import AVShapesConfig
from training.synthetic.plan import ClipPlan, ObjectPlan, object_pose

__all__ = ["SHAPES", "TEXTURES", "render_background", "render_frames", "object_boxes"]

_SUBPIXEL_BITS = 4  # cv2 fill precision: 1/16 pixel


def _regular(n: int, radius: float, start_deg: float = -90.0) -> np.ndarray:
    """Vertices of a regular n-gon, shape (n, 2)."""
    a = np.deg2rad(start_deg) + np.linspace(0, 2 * np.pi, n, endpoint=False)
    return radius * np.stack([np.cos(a), np.sin(a)], axis=1)


def _star(points: int, outer: float, inner: float) -> np.ndarray:
    radii = np.where(np.arange(2 * points) % 2 == 0, outer, inner)[:, None]
    return radii * _regular(2 * points, 1.0)


def _rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def _heart() -> np.ndarray:
    s = np.linspace(0, 2 * np.pi, 96, endpoint=False)
    x = 16 * np.sin(s) ** 3
    y = -(13 * np.cos(s) - 5 * np.cos(2 * s) - 2 * np.cos(3 * s) - np.cos(4 * s)) - 2.5
    return np.stack([x, y], axis=1) / 15.0


_ARM = 0.32  # half-width of the cross arms
# Each shape is a list of (polygon (P, 2), is_hole); holes are cut after the filled parts.
SHAPES: dict[str, list[tuple[np.ndarray, bool]]] = {
    "circle": [(_regular(96, 1.0), False)],
    "square": [(_rect(-0.84, -0.84, 0.84, 0.84), False)],
    "triangle": [(_regular(3, 1.12), False)],
    "star": [(_star(5, 1.12, 0.48), False)],
    "ring": [(_regular(96, 1.0), False), (_regular(96, 0.56), True)],
    "cross": [(np.array([[-_ARM, -1], [_ARM, -1], [_ARM, -_ARM], [1, -_ARM], [1, _ARM],
                         [_ARM, _ARM], [_ARM, 1], [-_ARM, 1], [-_ARM, _ARM], [-1, _ARM],
                         [-1, -_ARM], [-_ARM, -_ARM]], dtype=np.float64), False)],
    "diamond": [(np.array([[0, -1.12], [0.8, 0], [0, 1.12], [-0.8, 0]], np.float64), False)],
    "bars": [(_rect(x - 0.19, -0.95, x + 0.19, 0.95), False) for x in (-0.55, 0.0, 0.55)],
    "hexagon": [(_regular(6, 1.02, 0.0), False)],
    "heart": [(_heart(), False)],
}


def _smooth_square(x: np.ndarray) -> np.ndarray:
    """Anti-aliased square wave in [0, 1] from a sine-like signal."""
    return 0.5 + 0.5 * np.tanh(4.0 * x)


# Textures: (u, v) object coordinates (h, w) -> (shade, gloss), both (h, w). The pixel colour is
# colour * shade + (1 - colour) * gloss, so the hue stays the class colour.
def _solid(u, v):
    return 1.0 - 0.12 * (v + 1.0), np.zeros_like(u)


def _shaded(u, v):
    d = np.hypot(u + 0.38, v + 0.42)  # distance to the light spot (top left)
    return 1.05 - 0.4 * np.clip(d / 1.7, 0, 1), 0.55 * np.exp(-((d / 0.22) ** 2))


def _stripes(u, v):
    return 0.7 + 0.3 * _smooth_square(np.sin(2 * np.pi * 1.8 * (u + v))), np.zeros_like(u)


def _checker(u, v):
    return 0.68 + 0.32 * _smooth_square(np.sin(2.5 * np.pi * u) * np.sin(2.5 * np.pi * v)), 0 * u


def _dots(u, v):
    cell = np.hypot(np.mod(u * 2.5, 1.0) - 0.5, np.mod(v * 2.5, 1.0) - 0.5)
    return 1.0 - 0.38 * _smooth_square(0.28 - cell), np.zeros_like(u)


def _rings(u, v):
    return 0.72 + 0.28 * _smooth_square(np.cos(2 * np.pi * 4.5 * np.hypot(u, v))), 0 * u


TEXTURES = {
    "solid": _solid, "shaded": _shaded, "stripes": _stripes,
    "checker": _checker, "dots": _dots, "rings": _rings,
}


def render_background(plan: ClipPlan, size: int) -> np.ndarray:
    """Renders the clip's static background: a two-colour gradient, soft clouds and a faint pattern.

    Returns:
        The picture, shape (H, W, 3) float32 in [0, 1], H = W = ``size``.
    """
    p = plan.background
    c = (np.arange(size, dtype=np.float32) + 0.5) / size  # (W,) pixel centres in frame units
    xs, ys = c[None, :], c[:, None]  # (1, W), (H, 1): broadcast instead of full grids
    g = np.clip((xs - 0.5) * np.cos(p["angle"]) + (ys - 0.5) * np.sin(p["angle"]) + 0.5, 0, 1)
    c1 = np.array(colorsys.hsv_to_rgb(p["hue"] % 1.0, p["sat"], p["val_lo"]), np.float32)
    c2 = np.array(colorsys.hsv_to_rgb((p["hue"] + p["hue_shift"]) % 1.0, p["sat"], p["val_hi"]),
                  np.float32)
    rng = np.random.default_rng(int(p["noise_seed"]))
    light = 0.035 * cv2.resize(rng.standard_normal((5, 5)).astype(np.float32), (size, size),
                               interpolation=cv2.INTER_CUBIC)  # (H, W) soft clouds
    period, kind = np.float32(p["pattern_scale"]), int(p["pattern"])
    if kind == 1:  # faint grid lines
        def line(z):  # (n,) closeness to the nearest grid line, in [0, 1]
            near = np.abs(np.mod(z / period + 0.5, 1) - 0.5) * period * size / 0.8
            return np.exp(-(near**2))
        light += 0.04 * np.maximum(line(xs), line(ys))
    elif kind == 2:  # soft diagonal stripes
        light += 0.025 * np.sin(2 * np.pi * (xs + ys) / (1.5 * period))
    elif kind == 3:  # a dot lattice
        cell = np.hypot(np.mod(xs / period, 1) - 0.5, np.mod(ys / period, 1) - 0.5)  # (H, W)
        light += 0.035 * (cell < 0.15)
    img = c1 + (c2 - c1) * g[..., None] + light[..., None]  # (H, W, 3)
    return np.clip(img, 0, 1, out=img).astype(np.float32, copy=False)


def _vertices(
    obj: ObjectPlan, pose: tuple[float, ...], size: int
) -> tuple[list[tuple[np.ndarray, bool]], float]:
    """Shape polygons of an object in pixels, [((P, 2), is_hole)], and its radius in pixels."""
    cx, cy, scale, angle = pose
    r = obj.radius * scale * size
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    centre = np.array([cx * size, cy * size])
    shape = SHAPES[CLASSES[obj.class_id].shape]
    return [(poly @ rot.T * r + centre, hole) for poly, hole in shape], r


def object_boxes(plan: ClipPlan, cfg: AVShapesConfig, times: np.ndarray) -> np.ndarray:
    """Returns the box of every object at every time, clipped to the frame.

    Returns:
        Boxes (x0, y0, x1, y1) in pixels, shape (K, n_obj, 4) float32, objects in plan order.
    """
    times = np.asarray(times, dtype=np.float64)
    boxes = np.zeros((times.shape[0], len(plan.objects), 4), dtype=np.float32)
    for j, obj in enumerate(plan.objects):
        poses = np.stack(object_pose(obj, times, cfg.fps), axis=1)  # (K, 4)
        for k, pose in enumerate(poses):
            polys, _ = _vertices(obj, tuple(pose), cfg.size)
            pts = np.concatenate([pts for pts, hole in polys if not hole])  # (P, 2)
            boxes[k, j] = np.concatenate([pts.min(0), pts.max(0)])
    return np.clip(boxes, 0, cfg.size)


def _draw(
    frame: np.ndarray, obj: ObjectPlan, pose: tuple[float, ...], active: bool, size: int
) -> tuple[tuple[int, int, int, int], np.ndarray] | None:
    """Composites one object into ``frame`` (H, W, 3) in place.

    Returns its region (y0, y1, x0, x1) and mask (h, w) bool there, or None when off-frame.
    """
    polys, r = _vertices(obj, pose, size)
    pad = int(0.7 * r) + 3 if active else 2
    allpts = np.concatenate([pts for pts, _ in polys])
    x0, y0 = np.floor(allpts.min(0)).astype(int) - pad
    x1, y1 = np.ceil(allpts.max(0)).astype(int) + pad
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, size), min(y1, size)
    if x1 <= x0 or y1 <= y0:
        return None
    canvas = np.zeros((y1 - y0, x1 - x0), dtype=np.uint8)  # (h, w)
    scale = 1 << _SUBPIXEL_BITS
    for fill in (False, True):  # filled parts, then holes
        pts = [np.round((p - [x0 + 0.5, y0 + 0.5]) * scale).astype(np.int32)
               for p, hole in polys if hole == fill]
        if pts:
            cv2.fillPoly(canvas, pts, 0 if fill else 255, cv2.LINE_AA, _SUBPIXEL_BITS)
    alpha = canvas.astype(np.float32) / 255.0  # (h, w)
    cx, cy, _, angle = pose
    ys = (np.arange(y0, y1, dtype=np.float32) + 0.5 - cy * size) / r
    xs = (np.arange(x0, x1, dtype=np.float32) + 0.5 - cx * size) / r
    dx, dy = np.meshgrid(xs, ys)  # (h, w) offsets in object units
    u = dx * np.cos(angle) + dy * np.sin(angle)  # rotate into the object's frame
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    colour = obj.colour.astype(np.float32)
    shade, gloss = TEXTURES[CLASSES[obj.class_id].texture](u, v)
    rgb = colour * shade[..., None] + (1 - colour) * np.clip(gloss, 0, 1)[..., None]  # (h, w, 3)
    roi = frame[y0:y1, x0:x1]
    if active:  # a soft halo in a light tint of the colour
        halo = cv2.GaussianBlur(alpha, (0, 0), sigmaX=0.25 * r)
        halo = 0.9 * np.clip(2.5 * halo, 0, 1)[..., None]
        roi[:] = roi * (1 - halo) + (0.55 + 0.45 * colour / max(float(colour.max()), 1e-3)) * halo
    roi[:] = roi * (1 - alpha[..., None]) + np.clip(rgb, 0, 1) * alpha[..., None]
    return (y0, y1, x0, x1), alpha >= 0.5


def render_frames(
    plan: ClipPlan, cfg: AVShapesConfig, times: np.ndarray, want_masks: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    """Renders frames at the given times, with the masks of the sound-source objects.

    Args:
        plan: clip plan (its own objects and events, also for a mismatched clip).
        cfg: dataset configuration.
        times: frame times in seconds, shape (K,).
        want_masks: False skips the masks (the fast training path).

    Returns:
        ``(frames, masks)``: frames (K, H, W, 3) uint8 and the union of the source objects'
        pixels (K, H, W) bool (None when ``want_masks`` is False).
    """
    times = np.asarray(times, dtype=np.float64)
    size = cfg.size
    background = render_background(plan, size)
    frames = np.empty((times.shape[0], size, size, 3), dtype=np.uint8)
    masks = np.zeros((times.shape[0], size, size), dtype=bool) if want_masks else None
    # Distractors first, so that a sound source is never hidden behind one.
    order = sorted(plan.objects, key=lambda o: o.is_source)
    poses = [np.stack(object_pose(o, times, cfg.fps), axis=1) for o in order]  # (K, 4) each
    actives = [o.active_at(times, cfg.fps) for o in order]  # (K,) each
    for k in range(times.shape[0]):
        frame = background.copy()  # (H, W, 3)
        for obj, pose, active in zip(order, poses, actives, strict=True):
            drawn = _draw(frame, obj, tuple(pose[k]), bool(active[k]), size)
            if drawn is not None and masks is not None:
                (y0, y1, x0, x1), inside = drawn
                if obj.is_source:
                    masks[k, y0:y1, x0:x1] |= inside
        frames[k] = (frame * 255.0 + 0.5).astype(np.uint8)
    return frames, masks
