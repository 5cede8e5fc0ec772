"""The interactive grounding demo: pick or upload an image, type an expression, see the box or mask.

    demo = GroundingDemo(Grounder.from_checkpoint("outputs/synthetic_mask/best.pt"),
                         samples=dataset_samples(experiment, "val"))
    demo            # as the last line of a notebook cell

Any Grounder runs it, an exported one too (``Grounder.from_export``: OpenVINO or ONNX Runtime); the status line
names what ran (`Prediction.description`).

Every callback goes through `GroundingDemo.run`, which never raises: a bad input (empty expression,
unreadable or oversized upload, no image) is reported in the status line and hides the overlay, so what
is on screen always matches the status, and the app keeps working.
Tests drive the widgets as a user would (set ``expression.value``, ``upload.value``, ``sample.value``,
``show_attention.value``) and read ``image.value`` (the PNG shown), ``attention_image.value`` and
``status.value``.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from seqtr_lib.config import Experiment
from seqtr_lib.images import decode_image_bytes, to_rgb_uint8
from seqtr_lib.predict import Grounder, Prediction


@dataclass(frozen=True)
class DemoSample:
    """A dataset image offered in the demo's drop-down, with the expressions annotated for it."""

    label: str  # the drop-down's text: image name and first expression
    name: str  # e.g. "image 420"
    image_path: Path
    expressions: tuple[str, ...]


def dataset_samples(experiment: Experiment, split: str = "val", count: int = 20) -> list[DemoSample]:
    """The first ``count`` annotated objects of a split, labelled by image id and first expression."""
    from seqtr_lib.samples import split_dataset

    dataset = split_dataset(experiment, split)
    annotations = [dataset.annotation(i) for i in range(min(count, len(dataset)))]
    return [DemoSample(f"image {a['image_id']}: {a['expressions'][0]}", f"image {a['image_id']}",
                       dataset.image_path(a), tuple(a["expressions"]))
            for a in annotations]


def render_png(image: np.ndarray, prediction: Prediction, expression: str) -> bytes:
    """The overlay the demo shows: the prediction (numbered points for masks) over the image, as PNG."""
    from seqtr_lib.viz import draw_prediction, figure_png, new_figure

    height, width = image.shape[:2]
    scale = 6.0 / max(height, width)
    figure, ax = new_figure(max(width * scale, 2.5), max(height * scale, 2.5) + 0.4)
    draw_prediction(ax, image, prediction, expression)
    return figure_png(figure, dpi=100)


def render_attention_png(image: np.ndarray, prediction: Prediction, expression: str) -> bytes:
    """The attention panels the demo shows under the overlay: where the decoder looked for each token."""
    from seqtr_lib.viz import attention_figure, figure_png

    return figure_png(attention_figure(image, prediction, expression), dpi=80)


class GroundingDemo:
    """An ipywidgets app around a Grounder; display the instance (or ``demo.widget``) in a notebook.

    Widgets: ``sample`` (drop-down of dataset images), ``upload`` (any image file), ``expression``
    (Enter or the button runs), ``task`` (the checkpoint's tasks), ``submit``, ``show_attention`` (a
    checkbox), ``image`` (PNG overlay), ``attention_image`` (the per-token attention panels, shown while
    the checkbox is ticked), ``status`` (HTML: the result in numbers, or what to fix).
    """

    def __init__(self, grounder: Grounder, samples: Sequence[DemoSample] = ()) -> None:
        import ipywidgets as widgets

        self.grounder = grounder
        self.samples = list(samples)
        self.rgb: np.ndarray | None = None  # the current image, (H, W, 3) uint8
        self.source = ""
        wide_label = {"description_width": "90px"}
        self.sample = widgets.Dropdown(options=[(s.label, i) for i, s in enumerate(self.samples)], value=None,
                                       description="dataset", style=wide_label, layout=widgets.Layout(width="60%"))
        self.upload = widgets.FileUpload(accept="image/*", multiple=False, description="upload an image",
                                         layout=widgets.Layout(width="auto"))
        self.expression = widgets.Text(placeholder="e.g. the red circle left of the blue square",
                                       description="expression", continuous_update=False, style=wide_label,
                                       layout=widgets.Layout(width="60%"))
        # ToggleButtons put their description on a row of its own: a label of the descriptions' width instead.
        task_label = widgets.HTML('<div style="text-align:right;padding-right:8px">task</div>',
                                  layout=widgets.Layout(width="90px"))
        self.task = widgets.ToggleButtons(options=list(grounder.tasks), style={"button_width": "80px"})
        self.submit = widgets.Button(description="ground it", button_style="primary")
        self.show_attention = widgets.Checkbox(value=False, description="show where it looked", indent=False,
                                               layout=widgets.Layout(width="auto", margin="0 0 0 16px"))
        if grounder.codec.layout.generalised:  # its answers have no per-token attention maps yet (predict refuses)
            self.show_attention.disabled = True
            self.show_attention.description = "where it looked: not for answers of several objects"
        elif grounder.exported is not None:  # an exported network returns tokens only
            self.show_attention.disabled = True
            self.show_attention.description = "where it looked: needs the torch backend"
        self.image = widgets.Image(format="png", layout=widgets.Layout(max_width="640px", display="none"))
        self.attention_image = widgets.Image(format="png", layout=widgets.Layout(max_width="960px", display="none"))
        self.status = widgets.HTML()
        self.sample.observe(self._on_sample, "value")
        self.upload.observe(self._on_upload, "value")
        self.expression.observe(lambda _: self.run(), "value")  # Enter, or leaving the field
        self.task.observe(lambda _: self.run(), "value")
        self.show_attention.observe(lambda _: self.run(), "value")
        self.submit.on_click(lambda _: self.run())
        row = widgets.Layout(align_items="center", flex_flow="row wrap")
        self.widget = widgets.VBox([widgets.HBox([self.sample, self.upload], layout=row), self.expression,
                                    widgets.HBox([task_label, self.task, self.submit, self.show_attention], layout=row),
                                    self.image, self.status, self.attention_image])
        if self.samples:
            self.sample.value = 0

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    def _message(self, text: str, error: bool = True) -> None:
        """Show ``text`` under the image; an error also hides the overlay, which no longer matches the input."""
        color = "#b00020" if error else "#1b5e20"
        self.status.value = f'<span style="color:{color}">{html.escape(text)}</span>'
        if error:
            self.image.layout.display = "none"
            self.attention_image.layout.display = "none"

    def _show(self, png: bytes, attention_png: bytes | None) -> None:
        self.image.value = png
        self.image.layout.display = None
        if attention_png is not None:
            self.attention_image.value = attention_png
        self.attention_image.layout.display = None if attention_png is not None else "none"

    def _on_sample(self, change: dict[str, Any]) -> None:
        if change["new"] is None:
            return
        chosen = self.samples[change["new"]]
        try:
            self.rgb, self.source = to_rgb_uint8(chosen.image_path, self.grounder.max_pixels), chosen.name
        except Exception as error:  # noqa: BLE001 - a missing file must become a message, not a traceback
            self.rgb = None
            self._message(f"cannot read {chosen.image_path}: {error}")
            return
        if self.expression.value == chosen.expressions[0]:
            self.run()
        else:
            self.expression.value = chosen.expressions[0]  # its observer runs the prediction

    def _on_upload(self, change: dict[str, Any]) -> None:
        if not change["new"]:
            return
        uploaded = change["new"][0]
        try:
            self.rgb = decode_image_bytes(bytes(uploaded["content"]), uploaded["name"], self.grounder.max_pixels)
            self.source = uploaded["name"]
        except ValueError as error:
            self.rgb = None
            self.sample.value = None
            self._message(f"cannot use the upload: {error}")
            return
        self.sample.value = None
        self.run()

    def run(self) -> Prediction | None:
        """Ground the current expression in the current image and show it; report bad input, never raise."""
        expression = self.expression.value.strip()
        if self.rgb is None:
            self._message("choose a dataset image or upload one")
            return None
        if not expression:
            self._message("type an expression first, e.g. 'the small blue square at the top'")
            return None
        try:
            with_attention = self.show_attention.value
            prediction = self.grounder.predict(self.rgb, expression, task=self.task.value,
                                               return_attention=with_attention)
            self._show(render_png(self.rgb, prediction, expression),
                       render_attention_png(self.rgb, prediction, expression) if with_attention else None)
        except Exception as error:  # noqa: BLE001 - the app must survive any input; show what went wrong
            self._message(f"could not ground {expression!r}: {type(error).__name__}: {error}")
            return None
        self._message(f"{self.source}, {expression!r}: {prediction.description()}", error=False)
        return prediction
