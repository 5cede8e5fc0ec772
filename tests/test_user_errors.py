"""What a user gets for bad input: one `error: ...` line (exit status 2) from the CLI, huge images refused
before decoding, list parameters given as text by papermill."""

from __future__ import annotations

import ast
import re
import struct
import zlib

import numpy as np
import pytest

from conftest import ROOT
from figure_pixels import assert_box_drawn, image_locator
from seqtr_lib.cli import main
from seqtr_lib.images import (MAX_IMAGE_PIXELS, BadImageError, ImageTooLarge, check_header, decode_image_bytes,
                              header_size, read_image)
from seqtr_lib.notebook import parameter_list
from seqtr_lib.predict import Grounder
from seqtr_lib.viz import PRED_COLOR

RELEASED = ROOT / "weights" / "synthetic_det.pt"


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header announces width x height and whose pixel data is missing: decoding it would fail
    (or, for a real image of that size, take gigabytes), reading its header is instant."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"\x00" * 16)


def _one_error_line(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: ")
    return err


def test_predict_reports_a_corrupt_image_or_checkpoint_in_one_line(tmp_path, capsys):
    image = tmp_path / "scene.jpg"
    image.write_bytes(b"these bytes are no JPEG")
    out = str(tmp_path / "overlay.png")
    err = _one_error_line(capsys, ["predict", "--checkpoint", str(RELEASED), "--image", str(image),
                                   "--expression", "the red circle", "--out", out])
    assert "scene.jpg" in err and "corrupt or not an image" in err

    checkpoint = tmp_path / "best.pt"
    checkpoint.write_bytes(b"not a checkpoint")
    err = _one_error_line(capsys, ["predict", "--checkpoint", str(checkpoint), "--image", str(image),
                                   "--expression", "the red circle", "--out", out])
    assert f"{checkpoint} is not a readable seqtr checkpoint" in err

    with pytest.raises(BadImageError):  # --debug: the exception itself, with its traceback
        main(["--debug", "predict", "--checkpoint", str(RELEASED), "--image", str(image),
              "--expression", "the red circle", "--out", out])


def test_images_above_the_pixel_limit_are_refused_from_their_header(tmp_path, capsys, monkeypatch):
    import cv2

    huge = tmp_path / "huge.png"
    huge.write_bytes(_png_header_only(12000, 9000))
    assert header_size(huge) == (12000, 9000)
    assert 12000 * 9000 > MAX_IMAGE_PIXELS

    def no_decoding(*args, **kwargs):
        raise AssertionError("the pixels were decoded")

    monkeypatch.setattr(cv2, "imdecode", no_decoding)
    with pytest.raises(ImageTooLarge, match=r"huge.png is 12000 x 9000 pixels \(108 MP\), above the limit of 40 MP"):
        read_image(huge, MAX_IMAGE_PIXELS)
    with pytest.raises(ImageTooLarge, match="upload.png is 12000 x 9000"):
        decode_image_bytes(huge.read_bytes(), "upload.png")
    grounder = Grounder.from_checkpoint(RELEASED, device="cpu")
    with pytest.raises(ImageTooLarge):
        grounder.predict(huge, "the red circle")
    err = _one_error_line(capsys, ["predict", "--checkpoint", str(RELEASED), "--image", str(huge),
                                   "--expression", "the red circle", "--out", str(tmp_path / "o.png")])
    assert "12000 x 9000 pixels" in err and "--max-pixels" in err
    monkeypatch.undo()

    # The limit is the Grounder's: arrays are measured too, and a raised limit lets the image through.
    small = Grounder.from_checkpoint(RELEASED, device="cpu", max_pixels=30 * 30)
    with pytest.raises(ImageTooLarge, match="40 x 31 pixels"):
        small.predict(np.zeros((31, 40, 3), np.uint8), "the red circle")
    assert small.predict(np.zeros((30, 30, 3), np.uint8), "the red circle").box.shape == (4,)


def test_one_header_check_serves_files_and_bytes(tmp_path):
    path = tmp_path / "wide.png"
    path.write_bytes(_png_header_only(400, 300))
    message = r"wide.png is 400 x 300 pixels \(0 MP\), above the limit of 0 MP"
    for source in (path, str(path), path.read_bytes()):
        with pytest.raises(ImageTooLarge, match=message):
            check_header(source, 400 * 300 - 1, "wide.png")
        check_header(source, 400 * 300, "wide.png")  # at the limit: allowed
        check_header(source, None, "wide.png")  # no limit
    check_header(b"no image at all", 1, "junk")  # an unreadable header passes: the decoder reports it
    check_header(tmp_path / "absent.png", 1, "absent")


def test_a_checkpoint_holding_pickled_code_is_refused_naming_it(tmp_path):
    import argparse

    import torch

    from seqtr_lib.checkpoint import UnreadableCheckpoint, load

    code = tmp_path / "code.pt"
    torch.save({"format": 1, "arguments": argparse.Namespace(run="anything")}, code)
    with pytest.raises(UnreadableCheckpoint, match=r"code.pt: refused: it holds pickled objects .*"
                                                   r"\(first: argparse.Namespace\)"):
        load(code)
    with pytest.raises(FileNotFoundError, match=r"seqtr checkpoint .*absent.pt does not exist"):
        load(tmp_path / "absent.pt")


def test_model_summary_needs_no_dataset(tmp_path, capsys):
    def summary(size: int) -> dict[str, int]:
        main(["model-summary", "--params", str(ROOT / "params" / "synthetic_det.yaml"), "--set",
              f"data.data_root={tmp_path / 'absent'}", "--vocabulary-size", str(size)])
        out = capsys.readouterr().out
        assert f"stand-in vocabulary of {size} words" in out
        rows = [line.split() for line in out.splitlines()[1:] if line and not line.startswith("word embedding")]
        return {row[0]: int(row[1].replace(",", "")) for row in rows}

    small, large = summary(100), summary(110)
    word_dim = 64  # params/synthetic_det.yaml: only the embedding grows, by one row of word_dim per word
    assert {k: large[k] - small[k] for k in small} == {**{k: 0 for k in small}, "language": 10 * word_dim,
                                                       "total": 10 * word_dim}


@pytest.mark.parametrize("given, expected", [
    (["train.epochs=5"], ["train.epochs=5"]),
    ('["train.epochs=5", "train.lr=1e-4"]', ["train.epochs=5", "train.lr=1e-4"]),  # papermill -p, JSON
    ("[train.epochs=5]", ["train.epochs=5"]),  # YAML flow list
    ("", []),
    ("[6, 12]", [6, 12]),
])
def test_list_parameters_accept_the_text_papermill_passes(given, expected):
    assert parameter_list(given, "overrides") == expected


def test_a_list_parameter_that_is_no_list_is_refused_with_the_y_form():
    with pytest.raises(ValueError, match=r"parameter overrides must be a list, got 'train.epochs=5'.*"
                                         r"-y 'overrides: \[a, b\]'"):
        parameter_list("train.epochs=5", "overrides")


def test_predict_with_a_checkpoint_runs_from_any_folder_without_params(tmp_path, monkeypatch, capsys):
    import cv2

    image = tmp_path / "scene.png"
    canvas = np.full((96, 96, 3), 200, dtype=np.uint8)
    cv2.circle(canvas, (30, 40), 12, (0, 0, 255), -1)  # a red disc (BGR)
    cv2.imwrite(str(image), canvas)
    monkeypatch.chdir(tmp_path)  # no params/ here
    main(["predict", "--checkpoint", str(RELEASED), "--image", str(image), "--expression", "the red circle",
          "--out", "out.png"])
    out = capsys.readouterr().out
    assert f"using checkpoint {RELEASED}" in out
    # out.png landed in the folder it was run from, showing the printed box where it lies in the scene
    box = ast.literal_eval(re.search(r"box \(x1, y1, x2, y2\): (\[.*\])", out).group(1))
    x1, y1, x2, y2 = box
    assert x2 - x1 >= 8 and y2 - y1 >= 8, box  # a box around the 24 px disc, with a middle far from its sides
    pixels = cv2.cvtColor(cv2.imread(str(tmp_path / "out.png")), cv2.COLOR_BGR2RGB)
    away = [((x1 + x2) / 2, (y1 + y2) / 2)] + [(x, y) for x in (2.0, 94.0) for y in (2.0, 94.0)
                                               if x <= x1 - 4 or x >= x2 + 4 or y <= y1 - 4 or y >= y2 + 4]
    assert len(away) > 1  # some corner of the scene lies 4 px or more outside the box
    assert_box_drawn(pixels, image_locator(pixels, (200, 200, 200), canvas.shape[:2]), box, PRED_COLOR, away)
    err = _one_error_line(capsys, ["predict", "--image", str(image), "--expression", "the red circle"])
    assert "params/synthetic_det.yaml does not exist" in err  # without a checkpoint the params name the run


def test_debug_shows_the_traceback_before_or_after_the_command(tmp_path, capsys):
    image = tmp_path / "scene.jpg"
    image.write_bytes(b"these bytes are no JPEG")
    command = ["predict", "--checkpoint", str(RELEASED), "--image", str(image), "--expression", "the red circle",
               "--out", str(tmp_path / "overlay.png")]
    for argv in (["--debug", *command], [*command, "--debug"], ["--debug", *command, "--debug"]):
        with pytest.raises(BadImageError):
            main(argv)
    err = _one_error_line(capsys, command)  # without it: one line, which says where --debug goes
    assert "corrupt or not an image" in err and "(--debug, before or after the command, shows the traceback)" in err
