"""Drawing (seqtr_lib.viz) takes arrays and predictions and returns figures; it reads no files."""

from __future__ import annotations

import ast

import numpy as np
import pytest

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
