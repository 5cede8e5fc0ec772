"""What a reader sees in a figure: the colours drawn at given image coordinates.

A Figure from seqtr_lib.viz is rendered to an array and its Axes' data transform gives the pixel of an image
coordinate. A PNG written by someone else (predict's overlay, a notebook's or a benchmark's figure) is read
back: an image is found in it as the bounding box of its uniform background colour or as a region of
non-white pixels (image coordinates map linearly onto that box), a chart's Axes by their black frames (data
map linearly onto the frame, over the limits matplotlib fits to the data).
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
    return bounds_locator((rows.min(), rows.max() + 1, columns.min(), columns.max() + 1), image_shape)


def bounds_locator(bounds: tuple[int, int, int, int], image_shape: tuple[int, int]) -> Locate:
    """(x, y) coordinates of an image of ``image_shape`` (H, W) drawn over the pixels ``bounds`` (top, bottom,
    left, right; bottom and right excluded) -> (row, column) there."""
    top, bottom, left, right = bounds
    height, width = image_shape
    # The drawn image keeps its aspect ratio (imshow's default), so the box found must too: within a pixel.
    assert abs((right - left) / (bottom - top) - width / height) * (bottom - top) < 1.5, bounds

    def locate(x: float, y: float) -> tuple[int, int]:
        return int(top + y * (bottom - top) / height), int(left + x * (right - left) / width)

    return locate


def drawn_panels(pixels: np.ndarray) -> list[tuple[int, int, int, int]]:
    """The (top, bottom, left, right) bounds of the images drawn on a white figure without axes frames, row by
    row: the regions of connected non-white pixels of at least half the largest one's size (titles are small),
    less what sticks out of them (a point's number drawn by the image's edge): rows and columns of the image
    are non-white from end to end, those of what sticks out for a short stretch."""
    import cv2

    _, labels, stats, _ = cv2.connectedComponentsWithStats((pixels != 255).any(axis=-1).astype(np.uint8),
                                                           connectivity=4)
    sizes = stats[1:, cv2.CC_STAT_AREA]
    bounds = []
    for label in np.flatnonzero(sizes >= sizes.max() / 2) + 1:
        region = labels == label
        rows = np.flatnonzero(region.sum(axis=1) > region.sum(axis=1).max() / 2)
        columns = np.flatnonzero(region.sum(axis=0) > region.sum(axis=0).max() / 2)
        bounds.append((int(rows.min()), int(rows.max()) + 1, int(columns.min()), int(columns.max()) + 1))
    return _row_by_row(bounds)


def _row_by_row(bounds: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int, int]]:
    """(top, bottom, left, right) boxes of a grid in reading order: a row's boxes share their top to within a
    pixel or two, the next row starts a box's height lower."""
    rows: list[list[tuple[int, int, int, int]]] = []
    for box in sorted(bounds):
        if rows and box[0] - rows[-1][0][0] < (box[1] - box[0]) / 2:
            rows[-1].append(box)
        else:
            rows.append([box])
    return [box for row in rows for box in sorted(row, key=lambda b: b[2])]


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


def assert_heat_map_shown(pixels: np.ndarray, bounds: tuple[int, int, int, int], image: np.ndarray,
                          heat: np.ndarray, point: Sequence[float]) -> None:
    """``viz.draw_attention_overlay`` of ``heat`` (H, W) over ``image`` (H, W, 3 RGB) is drawn over ``bounds``:
    each image pixel shows the image through the heat map's inferno colour at alpha 0.6, the colour of the
    map divided by its largest value (so the brightest colour lies where the map is largest). The pixels
    within 3 of ``point`` (x, y), under its marker, are left out. The image must be drawn 3 screen pixels or
    more per image pixel, so that imshow samples both images at nearest neighbours."""
    from matplotlib import colormaps

    top, bottom, left, right = bounds
    height, width = heat.shape
    assert (bottom - top) / height >= 3, "drawn too small: imshow would smooth the image instead of sampling it"
    table = np.round(colormaps["inferno"](np.arange(256))[:, :3] * 255)
    # The colour index of a value v is int(256 v) (255 for v = 1); float rounding may give its neighbour,
    # one step of the table (at most this many levels per channel) at alpha 0.6, and the blend rounds once.
    tolerance = 0.6 * np.abs(np.diff(table, axis=0)).max() + 1
    index = np.minimum((heat / heat.max() * 256).astype(int), 255)
    expected = 0.4 * image.astype(float) + 0.6 * table[index]
    ys, xs = np.mgrid[:height, :width]
    rows = (top + (ys + 0.5) * (bottom - top) / height).astype(int)  # each image pixel's centre
    columns = (left + (xs + 0.5) * (right - left) / width).astype(int)
    shown = pixels[rows, columns].astype(float)
    error = np.abs(shown - expected).max(axis=-1)
    error[np.hypot(xs + 0.5 - point[0], ys + 0.5 - point[1]) <= 3] = 0
    y, x = np.unravel_index(error.argmax(), error.shape)
    assert error.max() <= tolerance, (f"at image pixel ({x}, {y}) {shown[y, x]} is shown where the heat map of "
                                      f"{heat[y, x] / heat.max():.3f} of its peak over {image[y, x]} gives "
                                      f"{expected[y, x].round(1)}")


def assert_contour_drawn(pixels: np.ndarray, locate: Locate, polygon: np.ndarray, colour: str,
                         image: np.ndarray) -> None:
    """``colour`` lies at the middle of each side of ``polygon`` (K, 2), and the image (H, W, 3 RGB), drawn at
    3 screen pixels or more per image pixel, shows unchanged at the centre of each image pixel 1.5 or more
    outside the polygon's hull and 4 or more from its vertices (their markers and numbers)."""
    import cv2

    for a, b in zip(polygon, np.roll(polygon, -1, axis=0)):
        assert colour_near(pixels, locate(*(a + b) / 2), colour), f"no {colour} on the side {a} -> {b}"
    hull = cv2.convexHull(polygon.astype(np.float32).reshape(-1, 1, 2))
    outside = []
    for y, x in np.ndindex(image.shape[:2]):
        centre = (x + 0.5, y + 0.5)
        if (cv2.pointPolygonTest(hull, centre, True) <= -1.5
                and np.hypot(*(polygon - centre).T).min() >= 4):
            outside.append((x, y))
            assert tuple(pixels[locate(*centre)]) == tuple(image[y, x]), f"image pixel ({x}, {y}) is drawn over"
    assert outside, "the contour covers the whole image: nothing to see outside it"


def axes_frames(pixels: np.ndarray) -> list[tuple[int, int, int, int]]:
    """The (top, bottom, left, right) bounds of each Axes' frame (the outer rows and columns of its four black
    spines), in reading order: regions of connected dark pixels with a full-width row near their top and bottom
    and a full-height column near their left and right (tick marks and lines drawn up to the frame belong to
    it; text is no such rectangle) on the white of the figure (unlike the outline of a square in an image)."""
    import cv2

    dark = (pixels <= 100).all(axis=-1)  # Agg snaps the spines (0.8 pt) to the pixel grid: their middle is black
    count, labels, stats, _ = cv2.connectedComponentsWithStats(dark.astype(np.uint8), connectivity=8)
    frames = []
    for label in range(1, count):
        left, top, width, height, _ = stats[label]
        if width < 40 or height < 40:
            continue
        region = labels[top:top + height, left:left + width] == label
        rows = np.flatnonzero(region.sum(axis=1) >= 0.8 * width) + top
        columns = np.flatnonzero(region.sum(axis=0) >= 0.8 * height) + left
        if not (len(rows) and len(columns) and np.ptp(rows) >= 0.8 * height and np.ptp(columns) >= 0.8 * width):
            continue
        frame = (int(rows.min()), int(rows.max()) + 1, int(columns.min()), int(columns.max()) + 1)
        # 3 pixels outside the spines: the figure's white, but where a tick mark (3.5 pt long) crosses
        top, bottom, left, right = frame[0] - 3, frame[1] + 2, frame[2] - 3, frame[3] + 2
        if min(top, left) < 0 or bottom >= pixels.shape[0] or right >= pixels.shape[1]:
            continue
        ring = np.concatenate([pixels[top, left:right + 1], pixels[bottom, left:right + 1],
                               pixels[top:bottom + 1, left], pixels[top:bottom + 1, right]])
        if (ring == 255).all(axis=-1).mean() >= 0.5:
            frames.append(frame)
    return _row_by_row(frames)


def fitted(values: Sequence[float]) -> tuple[float, float]:
    """The limits matplotlib fits an axis to for data ``values``: their span plus 5 % of it on each side
    (axes.xmargin, axes.ymargin); a span of zero is widened evenly (here by 1 each way: the value in the middle)."""
    low, high = min(values), max(values)
    margin = 0.05 * (high - low) if high > low else 1.0
    return low - margin, high + margin


def frame_locator(frame: tuple[int, int, int, int], x_limits: tuple[float, float],
                  y_limits: tuple[float, float]) -> Locate:
    """(x, y) data -> (row, column) in an Axes whose frame is ``frame`` (`axes_frames`) and whose axes run over
    ``x_limits`` and ``y_limits`` (y upwards), from spine to spine (within a pixel: a spine may be two pixels)."""
    top, bottom, left, right = frame

    def locate(x: float, y: float) -> tuple[int, int]:
        across = (x - x_limits[0]) / (x_limits[1] - x_limits[0])
        up = (y - y_limits[0]) / (y_limits[1] - y_limits[0])
        return round(bottom - 0.5 - up * (bottom - top - 1)), round(left + 0.5 + across * (right - left - 1))

    return locate
