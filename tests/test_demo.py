"""The widget demo, driven as a user would: pick a sample, upload, type, toggle, and read what it shows."""

from __future__ import annotations

import datetime
import io
import json
import re

import cv2
import numpy as np
import pytest

from conftest import write_params
from seqtr_lib.config import load_params
from seqtr_lib.demo import GroundingDemo, dataset_samples
from seqtr_lib.images import decode_image_bytes
from seqtr_lib.predict import Grounder

OVERLAY_RGB = np.array([0xFF, 0x33, 0x66])  # viz's prediction colour; absent from synthetic scenes


@pytest.fixture(scope="module")
def trained(tiny_data_root, tmp_path_factory):
    """A box model trained for two steps (why the tests using it are marked slow), and its experiment."""
    from seqtr_lib import engine

    folder = tmp_path_factory.mktemp("demo")
    experiment = load_params(write_params(folder / "p.yaml", tiny_data_root, folder / "out",
                                          train={"epochs": 1, "max_steps_per_epoch": 2}))
    engine.train(experiment)
    return Grounder.from_checkpoint(experiment.run_dir / "best.pt", device="cpu"), experiment


def _upload(demo: GroundingDemo, name: str, content: bytes) -> None:
    demo.upload.value = ({"name": name, "type": "image/png", "size": len(content), "content": memoryview(content),
                          "last_modified": datetime.datetime(2024, 1, 1)},)


def _png(array: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".png", array)
    assert ok
    return encoded.tobytes()


def _overlay_pixels(png: bytes) -> int:
    rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return int((np.abs(rgb.astype(int) - OVERLAY_RGB).max(axis=2) <= 12).sum())


def _status_box(demo: GroundingDemo) -> list[float]:
    numbers = re.search(r"box \(x1, y1, x2, y2\) ([\d.]+), ([\d.]+), ([\d.]+), ([\d.]+)", demo.status.value)
    assert numbers, demo.status.value
    return [float(v) for v in numbers.groups()]


@pytest.mark.slow
def test_a_dataset_sample_is_grounded_on_opening_and_shown_with_its_box(trained):
    grounder, experiment = trained
    samples = dataset_samples(experiment, "val", 3)
    demo = GroundingDemo(grounder, samples)
    assert demo.task.options == ("box",)
    assert demo.expression.value == samples[0].expressions[0]
    assert bytes(demo.image.value).startswith(b"\x89PNG\r\n\x1a\n")
    # The status reports the box an independent call finds for the same image and expression.
    expected = grounder.predict(samples[0].image_path, samples[0].expressions[0]).box
    assert _status_box(demo) == pytest.approx(np.round(expected), abs=0.5)
    source = cv2.imread(str(samples[0].image_path))
    assert _overlay_pixels(_png(source)) == 0 and _overlay_pixels(bytes(demo.image.value)) > 20  # the drawn box

    demo.sample.value = 2
    assert demo.expression.value == samples[2].expressions[0]
    assert _status_box(demo) == pytest.approx(np.round(grounder.predict(samples[2].image_path,
                                                                        samples[2].expressions[0]).box), abs=0.5)

    # The status names the image and the expression typed, not the drop-down's first expression.
    demo.expression.value = "the tiny green triangle"
    assert demo.status.value.startswith(f'<span style="color:#1b5e20">{samples[2].name}, &#x27;the tiny green triangle&#x27;: box')
    assert demo.image.layout.display is None  # shown


@pytest.mark.slow
def test_the_attention_toggle_shows_the_token_panels_under_the_overlay(trained):
    grounder, experiment = trained
    demo = GroundingDemo(grounder, dataset_samples(experiment, "val", 2))
    assert demo.attention_image.layout.display == "none"
    demo.show_attention.value = True
    assert demo.attention_image.layout.display is None
    panels = bytes(demo.attention_image.value)
    height, width = cv2.imdecode(np.frombuffer(panels, np.uint8), cv2.IMREAD_COLOR).shape[:2]
    assert width > 2 * height  # the prediction and x1, y1, x2, y2 in one row
    assert _overlay_pixels(panels) > 0  # the first panel draws the predicted box (small at this size)
    demo.sample.value = 1
    assert bytes(demo.attention_image.value) != panels  # follows the new image
    demo.expression.value = " "
    assert demo.attention_image.layout.display == "none"  # an error hides the panels too
    demo.expression.value = "the red circle"
    assert demo.attention_image.layout.display is None
    demo.show_attention.value = False
    assert demo.attention_image.layout.display == "none"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["gray", "rgba", "16-bit"])
def test_uploads_of_any_size_and_channel_layout_are_grounded_in_their_own_pixels(trained, kind):
    grounder, experiment = trained
    demo = GroundingDemo(grounder)
    demo.expression.value = "the red circle"
    rng = np.random.default_rng(0)
    images = {"gray": rng.integers(0, 256, (37, 91), dtype=np.uint8),
              "rgba": rng.integers(0, 256, (120, 50, 4), dtype=np.uint8),
              "16-bit": rng.integers(0, 65536, (70, 40, 3), dtype=np.uint16)}
    _upload(demo, f"{kind}.png", _png(images[kind]))
    assert demo.rgb.shape == images[kind].shape[:2] + (3,) and demo.rgb.dtype == np.uint8
    assert demo.source == f"{kind}.png" and demo.sample.value is None
    x1, y1, x2, y2 = _status_box(demo)
    height, width = images[kind].shape[:2]
    assert 0 <= min(x1, x2) and max(x1, x2) <= width and 0 <= min(y1, y2) and max(y1, y2) <= height
    assert _overlay_pixels(bytes(demo.image.value)) > 0


@pytest.mark.slow
def test_bad_input_shows_a_message_in_the_widget_instead_of_a_traceback(trained):
    grounder, experiment = trained
    demo = GroundingDemo(grounder, dataset_samples(experiment, "val", 2))
    assert demo.image.layout.display is None
    demo.expression.value = "   "
    assert "type an expression first" in demo.status.value
    assert demo.image.layout.display == "none"  # the overlay of the previous expression is hidden
    _upload(demo, "notes.png", b"this is not an image")
    assert "cannot use the upload: notes.png is not an image (20 bytes" in demo.status.value
    assert "BytesIO" not in demo.status.value and "\n" not in demo.status.value
    assert demo.image.layout.display == "none" and demo.rgb is None  # no stale overlay under the message
    demo.expression.value = "the red circle"
    assert demo.run() is None and "choose a dataset image or upload one" in demo.status.value


@pytest.mark.slow
def test_a_failing_prediction_is_reported_and_the_app_keeps_working(trained, monkeypatch):
    grounder, experiment = trained
    demo = GroundingDemo(grounder, dataset_samples(experiment, "val", 1))

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(grounder, "predict", broken)
    assert demo.run() is None
    assert "RuntimeError: CUDA out of memory" in demo.status.value
    assert demo.image.layout.display == "none"  # the previous overlay is hidden, not shown under the error
    monkeypatch.undo()
    assert demo.run() is not None and "box (x1, y1, x2, y2)" in demo.status.value
    assert demo.image.layout.display is None


def test_uploads_opencv_cannot_decode_are_read_with_pillow():
    from PIL import Image

    original = np.random.default_rng(1).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(original).save(buffer, format="TGA")
    assert cv2.imdecode(np.frombuffer(buffer.getvalue(), np.uint8), cv2.IMREAD_COLOR) is None
    np.testing.assert_array_equal(decode_image_bytes(buffer.getvalue()), original)  # lossless
    with pytest.raises(ValueError, match="empty.png is not an image"):
        decode_image_bytes(b"", "empty.png")


@pytest.mark.slow
def test_grounder_samples_reproducibly_and_a_vanishing_nucleus_is_greedy(trained, tiny_data_root):
    grounder, _ = trained
    image = next((tiny_data_root / "images" / "synthetic").glob("*.jpg"))
    greedy = grounder.predict(image, "the red circle")
    first, again = (grounder.predict(image, "the red circle", strategy="top_p", top_p=0.9, seed=5) for _ in range(2))
    np.testing.assert_array_equal(first.tokens, again.tokens)
    # The most likely token always stays in the nucleus; with a mass of 1e-9 it is the only one.
    nucleus_of_one = grounder.predict(image, "the red circle", strategy="top_p", top_p=1e-9, seed=5)
    np.testing.assert_array_equal(nucleus_of_one.tokens, greedy.tokens)


@pytest.mark.slow
def test_evaluation_refuses_params_whose_token_format_differs_from_the_checkpoint(trained):
    import dataclasses

    from seqtr_lib.evaluation import evaluate

    _, experiment = trained
    other = dataclasses.replace(experiment, model=dataclasses.replace(experiment.model, num_bin=32))
    with pytest.raises(ValueError, match=r"another token format .*model.num_bin: \d+ -> 32"):
        evaluate(other, experiment.run_dir / "best.pt", ("val",))


@pytest.mark.slow
def test_evaluation_decodes_as_its_params_say_and_records_it(trained, tmp_path, capsys):
    import dataclasses

    from seqtr_lib.evaluation import evaluate

    _, experiment = trained
    other = dataclasses.replace(experiment, output_dir=str(tmp_path),
                                model=dataclasses.replace(experiment.model, decode_bin_centres=True))
    results = evaluate(other, experiment.run_dir / "best.pt", ("val",), save_predictions=False, limit=8)
    assert results["decoding"] == {"decode_bin_centres": True, "outline_offset": 0.0}
    assert "the checkpoint stores {'decode_bin_centres': False" in capsys.readouterr().out
    assert json.loads((tmp_path / experiment.name / "metrics.json").read_text())["decoding"] == results["decoding"]


@pytest.mark.slow
def test_evaluation_runs_at_the_checkpoints_input_size_whatever_the_params_say(trained, tmp_path, capsys):
    """Params at another data.image_size score the checkpoint as trained: the same records as its own params
    give, the size recorded and said."""
    import dataclasses

    from seqtr_lib.evaluation import evaluate

    _, experiment = trained
    own = evaluate(dataclasses.replace(experiment, output_dir=str(tmp_path / "own")), experiment.run_dir / "best.pt",
                   ("val",), limit=8)
    other = dataclasses.replace(experiment, output_dir=str(tmp_path / "other"),
                                data=dataclasses.replace(experiment.data, image_size=2 * experiment.data.image_size))
    capsys.readouterr()
    results = evaluate(other, experiment.run_dir / "best.pt", ("val",), limit=8)
    assert f"evaluating at data.image_size {experiment.data.image_size}, the checkpoint's" in capsys.readouterr().out
    assert results["image_size"] == own["image_size"] == experiment.data.image_size
    assert results["splits"] == own["splits"]
    saved = [json.loads((tmp_path / run / experiment.name / "predictions" / "val_raw.json").read_text())
             for run in ("own", "other")]
    assert saved[0] == saved[1] and len(saved[0]) >= 8
