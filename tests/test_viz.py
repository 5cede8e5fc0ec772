"""Drawing (seqtr_lib.viz) takes arrays and predictions and returns figures; it reads no files."""

from __future__ import annotations

import ast

import numpy as np
import pytest

from figure_pixels import assert_box_drawn, axes_locator, colour_near, rendered, rgb255
from seqtr_lib import viz
from seqtr_lib.predict import Prediction

IMAGE = np.zeros((16, 24, 3), dtype=np.uint8)  # H 16, W 24
SQUARE = np.array([[4, 4], [12, 4], [12, 12], [4, 12]], dtype=np.float32)


def _prediction(task: str) -> Prediction:
    """A prediction as Grounder.predict(..., return_attention=True) makes one, on IMAGE."""
    points = 4 if task == "box" else len(SQUARE) * 2
    attention = np.random.default_rng(0).random((points, *IMAGE.shape[:2]))
    if task == "box":
        return Prediction("box", np.array([4, 4, 12, 12], dtype=np.float32), None, None, np.array([4, 4, 12, 12]),
                          np.full(4, 0.9), 0.01, attention)
    return Prediction("mask", None, SQUARE, np.zeros(IMAGE.shape[:2], np.uint8), np.append(SQUARE.reshape(-1), 1000),
                      np.full(9, 0.8), 0.01, attention)


def _is_png(figure) -> bool:
    return viz.figure_png(figure, dpi=20).startswith(b"\x89PNG")


def test_viz_imports_no_file_or_data_reader():
    tree = ast.parse(open(viz.__file__).read())
    modules = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    modules |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert {m.split(".")[0] for m in modules} <= {"__future__", "io", "math", "textwrap", "typing", "numpy",
                                                  "matplotlib"}, modules


def test_a_sample_and_a_comparison_are_drawn_from_arrays():
    figure, ax = viz.new_figure(2, 2)
    viz.draw_comparison(ax, IMAGE, [2, 2, 10, 8], [SQUARE.reshape(-1).tolist()], [3, 3, 9, 9], SQUARE, "the square")
    assert len(ax.patches) == 3  # ground-truth polygon and box, predicted box
    assert ax.get_title() == "the square"
    assert _is_png(figure)


@pytest.mark.parametrize("task", ["box", "mask"])
def test_prediction_figures_draw_a_prediction_over_an_array(task):
    prediction = _prediction(task)
    target = SQUARE if task == "mask" else SQUARE[[0, 2]]
    assert _is_png(viz.sequence_view(IMAGE, target, "the square", task, prediction, eos=1000))
    assert _is_png(viz.attention_figure(IMAGE, prediction, "the square"))
    figure, ax = viz.new_figure(2, 2)
    viz.draw_prediction(ax, IMAGE, prediction, "the square")
    assert _is_png(figure)


def test_target_figures_draw_point_arrays():
    quantized = {n: np.floor(SQUARE / 32 * n) * 32 / n for n in (4, 100)}
    assert _is_png(viz.quantization_figure(IMAGE, SQUARE, quantized, (32, 32)))
    vertices = {(n, center): SQUARE[:n].T for n in (3, 4) for center in (False, True)}
    assert _is_png(viz.sampling_figure(IMAGE, vertices))
    assert _is_png(viz.shuffle_figure(IMAGE, SQUARE.T, SQUARE[::-1].T))


# --- what a reader sees: the drawn pixels ---------------------------------------------------------------------

GREY = (128, 128, 128)
SCENE = np.full((30, 40, 3), GREY, dtype=np.uint8)  # H 30, W 40: x and y cannot be confused
BOX = [4.0, 14.0, 30.0, 26.0]  # x1, y1, x2, y2; swapping x and y would put it at 14, 4, 26, 30
OFF_THE_BOX = [(17.0, 20.0), (36.0, 5.0), (17.0, 6.0), (2.0, 28.0)]  # its middle, and outside: 3 px or more from a side
TRIANGLE = np.array([[6, 26], [34, 26], [20, 6]], dtype=np.float32)  # base along y = 26, apex (20, 6)


def _box_prediction(box=BOX) -> Prediction:
    attention = np.zeros((4, *SCENE.shape[:2]))
    return Prediction("box", np.array(box, dtype=np.float32), None, None, np.array([4, 14, 30, 26]),
                      np.full(4, 0.9), 0.01, attention)


def _mask_prediction() -> Prediction:
    mask = np.zeros(SCENE.shape[:2], np.uint8)
    return Prediction("mask", None, TRIANGLE, mask, np.append(TRIANGLE.reshape(-1), 1000), np.full(7, 0.8), 0.01,
                      np.zeros((6, *SCENE.shape[:2])))


def test_a_predicted_box_is_drawn_where_it_is_and_nowhere_else():
    figure, ax = viz.new_figure(3, 3)
    viz.draw_prediction(ax, SCENE, _box_prediction(), "the square")
    pixels = rendered(figure)
    assert_box_drawn(pixels, axes_locator(ax, pixels), BOX, viz.PRED_COLOR, away=OFF_THE_BOX)
    assert colour_near(pixels, axes_locator(ax, pixels)(17, 20), "#808080", tolerance=0)  # the image shows through


def test_a_predicted_contour_is_outlined_and_filled_inside_only():
    figure, ax = viz.new_figure(3, 3)
    viz.draw_prediction(ax, SCENE, _mask_prediction(), "the triangle")
    pixels = rendered(figure)
    locate = axes_locator(ax, pixels)
    for (x_a, y_a), (x_b, y_b) in zip(TRIANGLE, np.roll(TRIANGLE, -1, axis=0)):  # the middle of each side
        assert colour_near(pixels, locate((x_a + x_b) / 2, (y_a + y_b) / 2), viz.PRED_COLOR)
    # Inside, the grey seen through a quarter of the colour (the fill's alpha 0.25); outside, the grey itself.
    inside = np.round(0.75 * np.array(GREY) + 0.25 * rgb255(viz.PRED_COLOR)).astype(int)
    row, column = locate(20, 20)
    assert np.abs(pixels[row, column].astype(int) - inside).max() <= 1  # 8-bit blending rounds once
    for x, y in ((5, 8), (35, 8), (20, 29)):
        row, column = locate(x, y)
        assert tuple(pixels[row, column]) == GREY, (x, y)


def test_the_sequence_view_draws_the_target_and_the_prediction_each_in_its_colour():
    target = np.array([[6.0, 8.0], [20.0, 24.0]])  # the target box's corners, another place than BOX
    figure = viz.sequence_view(SCENE, target, "the square", "box", _box_prediction(), eos=1000)
    pixels = rendered(figure)
    target_panel, predicted_panel = figure.axes[:2]
    assert_box_drawn(pixels, axes_locator(target_panel, pixels), target.reshape(-1), viz.GT_COLOR,
                     away=[(16.0, 12.0)])  # inside, 4 px from two sides and 7 from the line joining the corners
    # The panel also joins the two corners: the box's middle lies on that line, (10, 23) 6 px below it.
    assert_box_drawn(pixels, axes_locator(predicted_panel, pixels), BOX, viz.PRED_COLOR,
                     away=[(10.0, 23.0), *OFF_THE_BOX[1:]])
    assert not colour_near(pixels, axes_locator(predicted_panel, pixels)(13.0, 8.0), viz.GT_COLOR)


def test_the_attention_figure_marks_each_token_at_its_corner():
    figure = viz.attention_figure(SCENE, _box_prediction(), "the square")
    pixels = rendered(figure)
    prediction_panel, *token_panels = figure.axes
    assert_box_drawn(pixels, axes_locator(prediction_panel, pixels), BOX, viz.PRED_COLOR, away=OFF_THE_BOX)
    corners = [(BOX[0], BOX[1])] * 2 + [(BOX[2], BOX[3])] * 2  # x1 and y1 belong to the first corner
    for panel, (x, y) in zip(token_panels[:4], corners):
        locate = axes_locator(panel, pixels)
        assert colour_near(pixels, locate(x, y), "#00e5ff")
        other = (BOX[2], BOX[3]) if (x, y) == (BOX[0], BOX[1]) else (BOX[0], BOX[1])
        assert not colour_near(pixels, locate(*other), "#00e5ff", radius=4)


def _predict_overlay(tmp_path, capsys, task: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`predict --out` on a grey 128 x 96 scene with a red disc, with the released weights of ``task``: the
    scene (RGB), the overlay PNG read back (RGB) and the printed box (4,) or polygon (K, 2)."""
    import ast as literal
    import re

    import cv2

    from conftest import ROOT
    from seqtr_lib.cli import main

    image = tmp_path / "scene.png"
    canvas = np.full((96, 128, 3), 200, dtype=np.uint8)  # H 96, W 128, grey 200
    cv2.circle(canvas, (40, 60), 14, (0, 0, 255), -1)  # a red disc (BGR) left of the middle, below it
    cv2.imwrite(str(image), canvas)
    out = tmp_path / "overlay.png"
    weights = ROOT / "weights" / {"box": "synthetic_det.pt", "mask": "synthetic_mask.pt"}[task]
    main(["predict", "--checkpoint", str(weights), "--image", str(image), "--expression", "the red circle",
          "--task", task, "--out", str(out)])
    label = {"box": r"box \(x1, y1, x2, y2\)", "mask": r"polygon \(x, y, \.\.\.\)"}[task]
    printed = literal.literal_eval(re.search(label + r": (\[.*\])", capsys.readouterr().out).group(1))
    overlay = cv2.cvtColor(cv2.imread(str(out)), cv2.COLOR_BGR2RGB)
    printed = np.array(printed, dtype=np.float64)
    return canvas[..., ::-1], overlay, printed if task == "box" else printed.reshape(-1, 2)


def _corners_off(x1: float, y1: float, x2: float, y2: float) -> list[tuple[float, float]]:
    """Those corners of the 128 x 96 scene 4 px or more outside a box."""
    return [(x, y) for x in (2.0, 126.0) for y in (2.0, 94.0) if x <= x1 - 4 or x >= x2 + 4 or y <= y1 - 4 or y >= y2 + 4]


def test_predicts_overlay_shows_the_printed_box_where_it_lies_in_the_image(tmp_path, capsys):
    from figure_pixels import image_locator

    scene, pixels, box = _predict_overlay(tmp_path, capsys, "box")
    x1, y1, x2, y2 = box
    assert x2 - x1 >= 8 and y2 - y1 >= 8, box  # a box around the 28 px disc, with a middle far from its sides
    locate = image_locator(pixels, (200, 200, 200), scene.shape[:2])
    corners = _corners_off(*box)
    assert corners
    assert_box_drawn(pixels, locate, box, viz.PRED_COLOR, away=[((x1 + x2) / 2, (y1 + y2) / 2), *corners])


def test_predicts_overlay_shows_the_printed_contour_outlined_and_filled(tmp_path, capsys):
    import cv2

    from figure_pixels import image_locator

    scene, pixels, polygon = _predict_overlay(tmp_path, capsys, "mask")
    locate = image_locator(pixels, (200, 200, 200), scene.shape[:2])
    contour = polygon.astype(np.float32).reshape(-1, 1, 2)
    assert len(polygon) >= 3
    for a, b in zip(polygon, np.roll(polygon, -1, axis=0)):  # the middle of each side
        assert colour_near(pixels, locate(*(a + b) / 2), viz.PRED_COLOR), (a, b)
    # Inside, 6 px or more from the outline (away from the numbered points), the scene seen through a quarter of
    # the colour (the fill's alpha 0.25); outside, the scene itself.
    x, y = polygon.mean(axis=0)
    assert cv2.pointPolygonTest(contour, (float(x), float(y)), True) >= 6, polygon  # a contour around the 28 px disc
    under = scene[int(y), int(x)].astype(float)
    row, column = locate(x, y)
    assert np.abs(pixels[row, column] - (0.75 * under + 0.25 * rgb255(viz.PRED_COLOR))).max() <= 2, (x, y)
    corners = _corners_off(*polygon.min(axis=0), *polygon.max(axis=0))
    assert corners
    for x, y in corners:
        row, column = locate(x, y)
        assert tuple(pixels[row, column]) == (200, 200, 200), (x, y)


def test_a_generalised_answers_tokens_are_labelled_by_object_with_the_separators_shown():
    """Two contours of 3 points, a separator, EOS: 6 + 1 + 6 + 1 bars; tokens of object 1 then object 2 in their
    colours, the separator grey and labelled SEP; a box answer counts 4 tokens an object."""
    from matplotlib.colors import to_hex

    eos, separator = 16, 17
    tokens = [1, 2, 3, 4, 5, 6, separator, 7, 8, 9, 10, 11, 12, eos, eos]
    figure, ax = viz.new_figure(4, 3)
    viz.draw_token_scores(ax, tokens, [0.5] * len(tokens), eos, separator)
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["1:x1", "1:y1", "1:x2", "1:y2", "1:x3", "1:y3", "SEP", "2:x1", "2:y1", "2:x2", "2:y2", "2:x3",
                      "2:y3", "EOS"]
    colours = [to_hex(bar.get_facecolor()) for bar in ax.patches]
    assert colours[:6] == [viz.OBJECT_COLORS[0]] * 6 and colours[7:13] == [viz.OBJECT_COLORS[1]] * 6
    assert colours[6] == "#999999" and colours[13] == "#000000"
    figure, ax = viz.new_figure(4, 3)
    viz.draw_token_scores(ax, [1, 2, 3, 4, 5, 6, 7, 8, eos], [0.5] * 9, eos, separator, box_objects=True)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1:x1", "1:y1", "1:x2", "1:y2", "2:x1", "2:y1", "2:x2",
                                                            "2:y2", "EOS"]
