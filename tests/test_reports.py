"""Reading a run back (seqtr_lib.reports): its log, its metrics table, and 02's analysis of its predictions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from seqtr_lib import reports
from seqtr_lib.evaluation import metrics_from_records
from seqtr_lib.sequence import mask_to_rle


def _saved(records: list[dict]) -> list[dict]:
    """Records as notebook 02 reads them back: through JSON, where RLE counts are str."""
    return json.loads(json.dumps(records, default=lambda counts: counts.decode("ascii")))


def _mask(box: tuple[int, int, int, int], shape: tuple[int, int] = (32, 32)) -> np.ndarray:
    x1, y1, x2, y2 = box
    mask = np.zeros(shape, dtype=np.uint8)
    mask[y1:y2, x1:x2] = 1
    return mask


def test_box_ious_are_the_ones_the_evaluation_stored_in_the_records():
    records = [{"pred_box": [0, 0, 10, 10], "gt_box": [5, 0, 15, 10]},
               {"pred_box": [0, 0, 4, 4], "gt_box": [0, 0, 4, 4]}]
    metrics_from_records(records, "box")  # gives each record its box_iou
    assert reports.expression_ious(_saved(records), "box") == pytest.approx([50 / 150, 1.0])
    assert reports.expression_ious([{"box_iou": 0.25}], "multi") == pytest.approx([0.25])  # read, not recomputed


def test_mask_ious_are_the_ones_the_evaluation_stored_in_the_records():
    gt = mask_to_rle(_mask((0, 0, 20, 10)))  # 20 x 10 pixels
    records = [{"pred_rle": mask_to_rle(_mask((0, 0, 10, 10))), "gt_rle": gt, "gt_box": [0, 0, 20, 10]},  # left half
               {"pred_rle": mask_to_rle(_mask((0, 0, 20, 10))), "gt_rle": gt, "gt_box": [0, 0, 20, 10]},  # all of it
               {"pred_rle": mask_to_rle(_mask((25, 20, 30, 30))), "gt_rle": gt, "gt_box": [0, 0, 20, 10]}]  # elsewhere
    metrics = metrics_from_records(records, "mask")  # gives each record its mask_iou
    saved = _saved([{k: v for k, v in r.items() if not k.endswith("rle")} for r in records])  # as evaluate writes them
    ious = reports.expression_ious(saved, "mask")
    assert ious == pytest.approx([0.5, 1.0, 0.0])
    assert 100 * ious.mean() == pytest.approx(metrics["miou"])
    with pytest.raises(KeyError, match="no mask_iou"):
        reports.expression_ious([{"pred_polygon": [0, 0, 4, 0, 4, 4]}], "mask")


def test_category_breakdown_groups_by_length_and_expression_type():
    annotations = [{"expression_types": ["attribute", "relation"]}, {"expression_types": ["relation"]}]
    records = [{"ann_index": 0, "expression_index": 0, "expression": "the red circle"},
               {"ann_index": 0, "expression_index": 1, "expression": "the red circle left of the blue square"},
               {"ann_index": 1, "expression_index": 0, "expression": "the star below the big green shape"}]
    ious = np.array([0.9, 0.2, 0.6])
    breakdown = reports.category_breakdown(records, ious, annotations.__getitem__)
    assert list(breakdown["expression length"]) == ["up to 3 words", "7-9 words"]
    assert breakdown["expression length"]["7-9 words"] == pytest.approx({"n": 2, "miou": 40.0, "acc@0.5": 50.0})
    assert breakdown["expression type"]["attribute"] == pytest.approx({"n": 1, "miou": 90.0, "acc@0.5": 100.0})
    assert breakdown["expression type"]["relation"]["n"] == 2
    assert "relation" in reports.breakdown_table(breakdown)
    assert list(reports.category_breakdown(records, ious, lambda index: {})) == ["expression length"]


def test_metrics_table_has_a_row_per_split_and_weights():
    results = {"splits": {"val": {"raw": {"acc@0.5": 12.345, "miou": 20.0, "num_expressions": 7},
                                  "ema": {"acc@0.5": 50.0, "miou": 45.5, "num_expressions": 7}}}}
    lines = reports.metrics_table(results).splitlines()
    assert lines[0].split() == ["split", "weights", "acc@0.5", "miou", "expressions"]
    assert lines[1].split() == ["val", "raw", "12.35", "20.00", "7"]
    assert lines[2].split() == ["val", "ema", "50.00", "45.50", "7"]


def test_read_predictions_names_what_to_evaluate_when_they_are_missing(tmp_path):
    from seqtr_lib.config import load_params

    experiment = load_params(None, [f"output_dir={tmp_path}", "name=run"])
    with pytest.raises(FileNotFoundError, match="evaluate split 'val' first"):
        reports.read_predictions(experiment, "val", "raw")
    (experiment.run_dir / "predictions").mkdir(parents=True)
    (experiment.run_dir / "predictions" / "val_raw.json").write_text('[{"box_iou": 0.5}]')
    assert reports.read_predictions(experiment, "val", "raw") == [{"box_iou": 0.5}]
