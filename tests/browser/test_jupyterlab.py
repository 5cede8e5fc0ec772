"""The notebooks as a user meets them: opened in JupyterLab in Chromium after the fast demo, Run All, and the
04 widget driven with the keyboard, the mouse and file uploads. Screenshots go to outputs/browser/."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import cv2
import nbformat
import numpy as np
import pytest


# One xdist worker runs every test of the fast project, which is built once per worker.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("fast_project")]

ROOT = Path(__file__).resolve().parents[2]

NOTEBOOKS = ["00_prepare_data", "01_train", "02_evaluate", "03_visualize_sequences", "04_demo", "05_compare_runs"]
# Run All on the notebooks opened as they are: 00-02 and 04 show the box experiment, 03 the mask one. 04 runs
# in the widget tests below; 05 compares the project's runs.
SHOTS = ROOT / "outputs" / "browser"
# Run All is over when every code cell has its execution count, or a cell failed (the rest never run).
RUN_ALL_OVER = ("() => { const p = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')];"
                " const failed = [...document.querySelectorAll(\"[data-mime-type='application/vnd.jupyter.stderr']\")]"
                ".some(e => /Traceback|Error/.test(e.textContent));"
                " return failed || (p.length > 0 && p.every(e => /\\[\\d+\\]/.test(e.textContent))); }")
# The status bar's kernel item reads "Python 3 (ipykernel) | Idle" once a kernel is connected and idle (the
# toolbar's indicator already says idle while it reads "No Kernel | Initializing", and Run All then does nothing).
KERNEL_IDLE = ("() => [...document.querySelectorAll('.jp-StatusBar-TextItem')]"
               ".some(e => /^(?!No Kernel).+ [|] Idle$/.test(e.textContent.trim()))")
# Error outputs render as stderr text; progress bars and warnings on stderr are not errors.
ERROR_TEXT = re.compile(r"Traceback|\w+Error\b|Exception\b")


@pytest.fixture
def page(browser):
    """A fresh page that records console errors and uncaught page errors."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.errors = []
    page.on("console", lambda message: page.errors.append(f"console: {message.text}") if message.type == "error" else None)
    page.on("pageerror", lambda error: page.errors.append(f"page: {error}"))
    yield page
    context.close()


def _accept_dialogs(page) -> None:
    """JupyterLab asks which kernel to start when its kernel list arrives after the notebook: accept its choice."""
    if page.locator(".jp-Dialog .jp-mod-accept").count():
        page.locator(".jp-Dialog .jp-mod-accept").first.click()


def _wait(page, condition: str, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(condition):
        _accept_dialogs(page)
        if time.monotonic() > deadline:
            SHOTS.mkdir(parents=True, exist_ok=True)
            shot = SHOTS / f"timeout_{int(time.time())}.png"
            page.screenshot(path=str(shot))
            raise AssertionError(f"{what} did not happen within {timeout_s:.0f} s; screenshot {shot}")
        page.wait_for_timeout(500)


def open_and_run_all(page, lab, name: str, timeout_s: float = 300) -> None:
    """Open a notebook as a user would, accept the kernel it asks for, Run > Run All Cells, wait for every cell."""
    page.goto(lab.notebook_url(f"{name}.ipynb"))
    page.wait_for_selector(".jp-NotebookPanel .jp-CodeCell", timeout=60_000)
    _wait(page, KERNEL_IDLE, 90, f"the kernel of {name} starting")
    page.click(".lm-MenuBar-itemLabel:text-is('Run')")
    page.click(".lm-Menu-itemLabel:text-is('Run All Cells')")
    _wait(page, RUN_ALL_OVER, timeout_s, f"Run All of {name}")
    _wait(page, KERNEL_IDLE, 60, f"the kernel of {name} going idle")


def errors_on_page(page) -> list[str]:
    """Error outputs in any cell, the log console's errors and uncaught page errors."""
    stderr = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']").all_inner_texts()
    return [text[:500] for text in stderr if ERROR_TEXT.search(text)] + page.errors


def overlay_src(page) -> str:
    return page.locator(".widget-image").first.get_attribute("src") or ""


def upload(page, path: Path) -> None:
    """Click the widget's upload button and choose ``path`` in the file dialog."""
    with page.expect_file_chooser() as chooser:
        page.locator(".widget-upload").first.click()
    chooser.value.set_files(str(path))


def wait_for_status(page, text: str) -> str:
    status = page.locator(".widget-html-content").filter(has_text=text)
    status.first.wait_for(timeout=60_000)
    return status.first.inner_text()


@pytest.mark.parametrize("name", [*NOTEBOOKS[:4], "05_compare_runs"])
def test_each_notebook_runs_all_without_an_error(page, lab, name):
    open_and_run_all(page, lab, name)
    assert errors_on_page(page) == []
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"))


def test_an_error_in_a_cell_is_caught_by_these_checks(page, lab):
    broken = lab.notebooks / "zz_broken.ipynb"
    document = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print('fine')"),
                                               nbformat.v4.new_code_cell("raise ValueError('broken on purpose')"),
                                               nbformat.v4.new_code_cell("print('never runs')")])
    document.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nbformat.write(document, broken)
    try:
        open_and_run_all(page, lab, "zz_broken", timeout_s=60)
        assert any("broken on purpose" in error for error in errors_on_page(page))
    finally:
        broken.unlink()


def _png(path: Path, height: int, width: int) -> Path:
    scene = np.full((height, width, 3), 90, np.uint8)
    cv2.circle(scene, (width // 4, height // 2), min(height, width) // 6, (40, 40, 220), -1)  # red in BGR
    cv2.rectangle(scene, (width // 2, height // 4), (3 * width // 4, height // 2), (220, 90, 30), -1)
    cv2.imwrite(str(path), scene)
    return path


def an_expression_for_the_first_image(project: Path) -> str:
    """What a user would type about the image the widget shows first (the first val object's): an annotated
    expression of another object in that image, or the object's second expression when it is alone."""
    from seqtr_lib.config import load_params

    experiment = load_params(project / "params" / "synthetic_det.yaml")
    val = json.loads((project / experiment.annotation_path).read_text())["val"]
    first, *others = [a for a in val if a["image_id"] == val[0]["image_id"]]
    return others[0]["expressions"][0] if others else first["expressions"][1]


def test_the_box_widget_follows_what_the_user_types_clicks_picks_and_uploads(page, lab, tmp_path, fast_project):
    open_and_run_all(page, lab, "04_demo")
    expression = page.locator(".widget-text input").first
    button = page.locator("button.widget-button", has_text="ground it")
    widget = page.locator(".widget-vbox").first
    first = overlay_src(page)

    typed_text = an_expression_for_the_first_image(fast_project)
    expression.fill(typed_text)
    expression.press("Enter")
    assert f"'{typed_text}': box" in wait_for_status(page, typed_text)
    typed = overlay_src(page)
    assert typed != first
    widget.screenshot(path=str(SHOTS / "widget_typed.png"))

    expression.fill("the big square at the top")
    button.click()
    assert "'the big square at the top': box" in wait_for_status(page, "the big square at the top")
    assert overlay_src(page) != typed

    dropdown = page.locator(".widget-dropdown select").first
    dropdown.select_option(index=3)
    chosen = dropdown.locator("option").nth(3).inner_text()
    image_name, first_expression = chosen.replace("\xa0", " ").split(": ", 1)
    wait_for_status(page, f"{image_name}, '{first_expression}'")
    assert expression.input_value() == first_expression

    upload(page, _png(tmp_path / "my scene.png", 300, 500))
    status = wait_for_status(page, "my scene.png")
    x1, y1, x2, y2 = map(float, re.search(r"box \(x1, y1, x2, y2\) ([\d.]+), ([\d.]+), ([\d.]+), ([\d.]+)", status).groups())
    # In the upload's own pixels. The corners are the model's tokens as emitted (as the reference, never
    # reordered), and on a blank upload it may emit x2 < x1, so only the range is this test's business.
    assert all(0 <= x <= 500 for x in (x1, x2)) and all(0 <= y <= 300 for y in (y1, y2))
    widget.screenshot(path=str(SHOTS / "widget_upload.png"))

    corrupt = tmp_path / "holiday.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this JPEG stops here")
    upload(page, corrupt)
    status = wait_for_status(page, "holiday.jpg is not an image")
    assert "BytesIO" not in status and "\n" not in status.strip()
    assert not page.locator(".widget-image").first.is_visible()  # no stale overlay under the message
    widget.screenshot(path=str(SHOTS / "widget_corrupt_upload.png"))

    dropdown.select_option(index=1)
    wait_for_status(page, "box (x1")
    assert page.locator(".widget-image").first.is_visible()
    toggle = page.locator(".widget-checkbox input").first  # "show where it looked"
    toggle.check()
    panels = page.locator(".widget-image").nth(1)
    panels.wait_for(state="visible", timeout=60_000)
    assert panels.get_attribute("src")
    widget.screenshot(path=str(SHOTS / "widget_attention.png"))
    toggle.uncheck()
    panels.wait_for(state="hidden", timeout=60_000)
    expression.fill("   ")
    expression.press("Enter")
    wait_for_status(page, "type an expression first")
    assert not page.locator(".widget-image").first.is_visible()
    assert errors_on_page(page) == []


def test_the_mask_widget_draws_a_contour(page, lab, fast_project):
    copy = lab.notebooks / "04_demo_mask.ipynb"
    document = nbformat.read(lab.notebooks / "04_demo.ipynb", as_version=4)
    (parameters,) = [c for c in document.cells if "parameters" in c.metadata.get("tags", [])]
    parameters.source = parameters.source.replace("params/synthetic_det.yaml", "params/synthetic_mask.yaml")
    nbformat.write(document, copy)
    try:
        open_and_run_all(page, lab, "04_demo_mask")
        expression = page.locator(".widget-text input").first
        typed_text = an_expression_for_the_first_image(fast_project)
        expression.fill(typed_text)
        expression.press("Enter")
        status = wait_for_status(page, f"'{typed_text}': mask from")
        assert re.search(r"mask from \d+ points, \d+ pixels", status)
        assert page.locator(".widget-image").first.is_visible()
        page.locator(".widget-vbox").first.screenshot(path=str(SHOTS / "widget_mask.png"))
        assert errors_on_page(page) == []
    finally:
        copy.unlink()


def test_the_notebook_files_are_unchanged_and_no_checkpoint_folder_is_left(lab, fast_project):
    for name in NOTEBOOKS:
        assert (lab.notebooks / f"{name}.ipynb").read_bytes() == (ROOT / "notebooks" / f"{name}.ipynb").read_bytes()
    assert not list(fast_project.rglob(".ipynb_checkpoints"))
