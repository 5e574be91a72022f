"""Numpy renderer for the ``synthetic`` benchmark: one flat-coloured shape per frame.

Kept apart from the dataset plugin so the scene logic (what happens) and the pixels
(how it looks) can change independently. Everything here is a pure function of its
arguments: the same scene gives byte-identical frames.

Conventions: coordinates are fractions of the frame side, x to the right and y *down*
(image rows), so "moves up" means y decreases. An object's ``radius`` is the radius of
the circle its shape is drawn inside. Frames are sampled at one per second of video
time; an event lasting ``n`` seconds is drawn on ``n`` frames, the first at the motion's
start and the last at its end. No anti-aliasing: the pixels of an object are exactly its
colour, which keeps rendering fast and lets tests find objects by colour.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

#: RGB of each object colour. Backgrounds are all grey (r == g == b) so an object's
#: pixels never coincide with background pixels.
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 90, 235),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 205),
    "orange": (250, 140, 25),
}


# ------------------------------------------------------------------------ shape masks
# Each takes local coordinates (u, v) scaled so the shape fits in the unit circle and
# returns a boolean mask. Rotation is applied before the call.
def _circle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u * u + v * v <= 1.0


def _square(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.maximum(np.abs(u), np.abs(v)) <= 0.8


def _triangle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # equilateral, apex up; three half-planes with outward normals at 90, 210, 330 deg
    inside = v <= 0.55
    for deg in (210.0, 330.0):
        a = np.deg2rad(deg)
        inside &= u * np.cos(a) + v * np.sin(a) <= 0.55
    return inside


def _cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    au, av = np.abs(u), np.abs(v)
    return ((au <= 0.3) & (av <= 0.95)) | ((av <= 0.3) & (au <= 0.95))


def _star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # five rounded points, one up: r <= 0.65 + 0.35 cos(5 phi), phi measured from "up"
    phi = np.arctan2(u, -v)
    return np.sqrt(u * u + v * v) <= 0.65 + 0.35 * np.cos(5.0 * phi)


def _ring(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    r2 = u * u + v * v
    return (r2 <= 1.0) & (r2 >= 0.3)


SHAPE_MASKS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "circle": _circle,
    "square": _square,
    "triangle": _triangle,
    "cross": _cross,
    "star": _star,
    "ring": _ring,
}


# ---------------------------------------------------------------------- motion styles
@dataclass(frozen=True)
class MotionStyle:
    """How far each motion goes over one event (fractions of the frame side).

    ``synthetic`` uses :data:`NORMAL`; ``synthetic-shift`` val/test use :data:`SLOW`,
    a distribution shift in motion speed the model never saw in training.
    """

    name: str
    travel: float  # left/right/up/down displacement
    grow: float  # radius factor reached by "grows"
    shrink: float  # radius factor reached by "shrinks"
    spin_deg: float  # rotation reached by "spins"
    bounce: float  # peak height of "bounces"


NORMAL = MotionStyle("normal", travel=0.40, grow=1.7, shrink=0.55, spin_deg=45.0, bounce=0.25)
SLOW = MotionStyle("slow", travel=0.25, grow=1.4, shrink=0.7, spin_deg=30.0, bounce=0.15)
STYLES = {s.name: s for s in (NORMAL, SLOW)}

#: radius (fraction of the frame side) of each size at the start of its event
SIZE_RADIUS = {"small": 0.10, "large": 0.17}


@dataclass(frozen=True)
class ObjectState:
    """Where an object is on one frame."""

    x: float
    y: float
    radius: float
    angle_deg: float


def trajectory(motion: str, size: str, ux: float, uy: float, n: int,
               style: MotionStyle) -> list[ObjectState]:
    """The ``n`` states of one event.

    ``ux, uy`` in [0, 1) place the start point inside the region where the whole motion
    stays in the frame, so a layout draw is valid for every motion and size (group
    members of a hard-negative set can share it).
    """
    r0 = SIZE_RADIUS[size]
    p = np.linspace(0.0, 1.0, n) if n > 1 else np.zeros(1)
    radius = np.full(n, r0)
    angle = np.zeros(n)
    dx = dy = np.zeros(n)
    if motion == "grows":
        radius = r0 * (1.0 + (style.grow - 1.0) * p)
    elif motion == "shrinks":
        radius = r0 * (1.0 + (style.shrink - 1.0) * p)
    elif motion == "spins":
        angle = style.spin_deg * p
    elif motion == "left":
        dx = -style.travel * p
    elif motion == "right":
        dx = style.travel * p
    elif motion == "up":
        dy = -style.travel * p
    elif motion == "down":
        dy = style.travel * p
    elif motion == "bounces":
        dy = -style.bounce * np.abs(np.sin(np.pi * p))
    else:  # pragma: no cover - scenes are built from MOTIONS only
        raise ValueError(f"unknown motion {motion!r}")
    m = float(radius.max())
    # start-point ranges keeping every state inside [m, 1 - m]
    lo_x, hi_x = m - float(dx.min()), 1.0 - m - float(dx.max())
    lo_y, hi_y = m - float(dy.min()), 1.0 - m - float(dy.max())
    x0 = lo_x + ux * max(hi_x - lo_x, 0.0)
    y0 = lo_y + uy * max(hi_y - lo_y, 0.0)
    return [ObjectState(x0 + float(dx[k]), y0 + float(dy[k]), float(radius[k]), float(angle[k]))
            for k in range(n)]


# ------------------------------------------------------------------------ backgrounds
#: In-distribution backgrounds (``synthetic``): plain greys.
PLAIN_BACKGROUNDS = {"black": 15, "dark": 70, "light": 175}
#: Shifted backgrounds (``synthetic-shift`` val/test): grey textures never seen in train.
TEXTURED_BACKGROUNDS = ("stripes", "checker", "noise", "gradient")


def background(kind: str, size: int, *, jitter: int, rng: np.random.Generator) -> np.ndarray:
    """A grey [size, size, 3] uint8 background; ``rng`` is used only by "noise"."""
    if kind in PLAIN_BACKGROUNDS:
        grey = np.full((size, size), PLAIN_BACKGROUNDS[kind] + jitter, dtype=np.int16)
    else:
        yy, xx = np.mgrid[0:size, 0:size]
        cell = max(size // 8, 1)
        if kind == "stripes":
            grey = np.where(((xx + yy) // cell) % 2 == 0, 50, 120)
        elif kind == "checker":
            grey = np.where(((xx // cell) + (yy // cell)) % 2 == 0, 35, 150)
        elif kind == "noise":
            grey = rng.integers(20, 170, size=(size, size))
        elif kind == "gradient":
            grey = 20 + (170 * yy) // max(size - 1, 1)
        else:  # pragma: no cover - scenes are built from the tables above
            raise ValueError(f"unknown background {kind!r}")
        grey = grey.astype(np.int16) + jitter
    g = np.clip(grey, 0, 255).astype(np.uint8)
    return np.repeat(g[:, :, None], 3, axis=2)


def draw(frame: np.ndarray, shape: str, colour: str, state: ObjectState) -> None:
    """Paint one object onto ``frame`` in place (only its bounding box is computed)."""
    size = frame.shape[0]
    r = state.radius * size
    cx, cy = state.x * size, state.y * size
    x0, x1 = max(int(np.floor(cx - r)), 0), min(int(np.ceil(cx + r)) + 1, size)
    y0, y1 = max(int(np.floor(cy - r)), 0), min(int(np.ceil(cy + r)) + 1, size)
    if x0 >= x1 or y0 >= y1:
        return
    # pixel centres, in units of the radius, relative to the object centre
    px = (np.arange(x0, x1) + 0.5 - cx) / r
    py = (np.arange(y0, y1) + 0.5 - cy) / r
    xx, yy = np.meshgrid(px, py)
    a = np.deg2rad(state.angle_deg)
    ca, sa = np.cos(a), np.sin(a)
    u = ca * xx + sa * yy  # rotate the sample grid by -angle == rotate the shape by +angle
    v = -sa * xx + ca * yy
    mask = SHAPE_MASKS[shape](u, v)
    frame[y0:y1, x0:x1][mask] = COLOUR_RGB[colour]


def render(events: list[tuple[str, str, str, str, float, float]], *, bg: np.ndarray,
           frames_per_event: int, style: MotionStyle) -> np.ndarray:
    """Frames [T, H, W, 3] uint8 of a scene: events drawn one after another in time.

    ``events`` are ``(colour, shape, size, motion, ux, uy)``. Each event's object is on
    screen only during its own event, so the order of events is the order in which the
    objects appear.
    """
    n = frames_per_event
    out = np.empty((n * len(events),) + bg.shape, dtype=np.uint8)
    out[:] = bg
    for i, (colour, shape, size, motion, ux, uy) in enumerate(events):
        for k, state in enumerate(trajectory(motion, size, ux, uy, n, style)):
            draw(out[i * n + k], shape, colour, state)
    return out
