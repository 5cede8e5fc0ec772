"""What a reader sees in a figure: the colours drawn at given image coordinates.

A Figure from seqtr_lib.viz is rendered to an array and its Axes' data transform gives the pixel of an image
coordinate. A PNG written by someone else (predict's overlay) is read back, and the image is found in it as
the bounding box of its uniform background colour; image coordinates map linearly onto that box.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb

# Lines are antialiased: a line's pixels blend with what lies under them. Near a line's middle (1 to 2.5 pixels
# wide here) some pixel keeps its colour within this distance per channel; the background colours used with
# it differ from it by more than 70 in some channel.
LINE_TOLERANCE = 40

Locate = Callable[[float, float], tuple[int, int]]


def rgb255(colour: str | Sequence[float]) -> np.ndarray:
    return np.round(np.array(to_rgb(colour)) * 255).astype(int)


def rendered(figure) -> np.ndarray:
    """The figure drawn at its own dpi: (H, W, 3) uint8 RGB."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def axes_locator(ax, pixels: np.ndarray) -> Locate:
    """(x, y) image coordinates in ``ax`` -> (row, column) of the rendered figure (display y grows upwards)."""
    def locate(x: float, y: float) -> tuple[int, int]:
        column, height_up = ax.transData.transform((x, y))
        return int(round(pixels.shape[0] - height_up)), int(round(column))

    return locate


def image_locator(pixels: np.ndarray, background: Sequence[int], image_shape: tuple[int, int]) -> Locate:
    """(x, y) coordinates of an image of ``image_shape`` (H, W) whose border is ``background`` (RGB), drawn
    somewhere in ``pixels`` -> (row, column) there."""
    # Rows and columns through the image hold the background colour over much of their length; the few
    # pixels of that colour elsewhere (in antialiased text) do not count.
    found = (pixels == np.asarray(background)).all(axis=-1)
    rows = np.flatnonzero(found.sum(axis=1) > found.sum(axis=1).max() / 2)
    columns = np.flatnonzero(found.sum(axis=0) > found.sum(axis=0).max() / 2)
    top, bottom, left, right = rows.min(), rows.max() + 1, columns.min(), columns.max() + 1
    height, width = image_shape
    # The drawn image keeps its aspect ratio (imshow's default), so the box found must too: within a pixel.
    assert abs((right - left) / (bottom - top) - width / height) * (bottom - top) < 1.5, (top, bottom, left, right)

    def locate(x: float, y: float) -> tuple[int, int]:
        return int(top + y * (bottom - top) / height), int(left + x * (right - left) / width)

    return locate


def colour_near(pixels: np.ndarray, where: tuple[int, int], colour: str, radius: int = 2,
                tolerance: int = LINE_TOLERANCE) -> bool:
    """Whether some pixel within ``radius`` of ``where`` (row, column) has ``colour``, within ``tolerance``."""
    row, column = where
    patch = pixels[max(row - radius, 0):row + radius + 1, max(column - radius, 0):column + radius + 1].astype(int)
    return bool((np.abs(patch - rgb255(colour)).max(axis=-1) <= tolerance).any())


def box_edge_points(box: Sequence[float]) -> list[tuple[float, float]]:
    """Points at a quarter, half and three quarters along each side of an x1, y1, x2, y2 box."""
    x1, y1, x2, y2 = box
    points = []
    for t in (0.25, 0.5, 0.75):
        x, y = x1 + t * (x2 - x1), y1 + t * (y2 - y1)
        points += [(x, y1), (x, y2), (x1, y), (x2, y)]
    return points


def assert_box_drawn(pixels: np.ndarray, locate: Locate, box: Sequence[float], colour: str,
                     away: Sequence[tuple[float, float]]) -> None:
    """``colour`` lies along every side of ``box``, and not at the ``away`` points (far from every side)."""
    for x, y in box_edge_points(box):
        assert colour_near(pixels, locate(x, y), colour), f"no {colour} on the box's side at ({x:.1f}, {y:.1f})"
    for x, y in away:
        assert not colour_near(pixels, locate(x, y), colour), f"{colour} at ({x:.1f}, {y:.1f}), off the box"
