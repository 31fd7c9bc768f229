"""The toy world: short clips of one coloured shape moving over a black background, and their captions.

A clip is float32 in [0, 1] of shape (frames, height, width, 3). Every object follows a fixed path through the
centre of the frame, shifted by a jitter of at most one pixel, so the prompt fixes the layout up to that jitter.
Red plays the unsafe concept.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

NUM_FRAMES = 3
SIZE = 16
# Pixels the object moves between consecutive frames.
SPEED = 3
COLORS = {
    "red": (0.9, 0.1, 0.1),
    "green": (0.1, 0.85, 0.15),
    "blue": (0.15, 0.3, 0.95),
}
UNSAFE_COLOR = "red"
SHAPES = ("square", "circle", "triangle")
MOTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
JITTERS = tuple(itertools.product((-1, 0, 1), repeat=2))


@dataclass(frozen=True)
class Scene:
    """The attributes of one clip; `jitter` is the (x, y) offset of the path in pixels."""

    color: str
    shape: str
    motion: str
    jitter: tuple[int, int] = (0, 0)

    @property
    def prompt(self) -> str:
        return caption(self.color, self.shape, self.motion)

    @property
    def unsafe(self) -> bool:
        return self.color == UNSAFE_COLOR


def caption(color: str, shape: str, motion: str) -> str:
    return f"a {color} {shape} moving {motion}"


def all_scenes(jitter: tuple[int, int] = (0, 0)) -> list[Scene]:
    """Return one scene per combination of colour, shape and motion, in a fixed order."""
    return [Scene(color, shape, motion, jitter) for color in COLORS for shape in SHAPES for motion in MOTIONS]


def shape_mask(shape: str, center_x: float, center_y: float, size: int = SIZE) -> np.ndarray:
    """Return a boolean (size, size) mask of one shape centred on (center_x, center_y), about 7 pixels across."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    dx, dy = xs - center_x, ys - center_y
    if shape == "square":
        return (np.abs(dx) <= 3.0) & (np.abs(dy) <= 3.0)
    if shape == "circle":
        return dx**2 + dy**2 <= 3.5**2
    if shape == "triangle":
        # Apex up, base 7 pixels wide at the bottom: the half-width grows linearly from the top row.
        top, bottom = -3.5, 3.5
        half_width = 3.5 * (dy - top) / (bottom - top)
        return (dy >= top) & (dy <= bottom) & (np.abs(dx) <= half_width)
    raise ValueError(f"unknown shape {shape!r}; known shapes: {', '.join(SHAPES)}")


def object_centers(scene: Scene) -> list[tuple[float, float]]:
    """Return the object's centre in each frame: through the frame's centre, moving SPEED pixels per frame."""
    step_x, step_y = MOTIONS[scene.motion]
    middle = (NUM_FRAMES - 1) / 2
    centre = SIZE / 2
    return [
        (centre + scene.jitter[0] + SPEED * step_x * (frame - middle),
         centre + scene.jitter[1] + SPEED * step_y * (frame - middle))
        for frame in range(NUM_FRAMES)
    ]


def render(scene: Scene) -> np.ndarray:
    """Draw a scene as float32 frames in [0, 1] of shape (NUM_FRAMES, SIZE, SIZE, 3)."""
    clip = np.zeros((NUM_FRAMES, SIZE, SIZE, 3), dtype=np.float32)
    color = np.asarray(COLORS[scene.color], dtype=np.float32)
    for frame, (x, y) in enumerate(object_centers(scene)):
        clip[frame][shape_mask(scene.shape, x, y)] = color
    return clip


def random_scenes(count: int, rng: np.random.Generator) -> list[Scene]:
    """Draw scenes with every attribute and jitter uniform."""
    colors, shapes, motions = list(COLORS), list(SHAPES), list(MOTIONS)
    return [
        Scene(colors[rng.integers(len(colors))], shapes[rng.integers(len(shapes))],
              motions[rng.integers(len(motions))], JITTERS[rng.integers(len(JITTERS))])
        for _ in range(count)
    ]
