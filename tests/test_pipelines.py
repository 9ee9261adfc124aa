"""transformers pipelines on saved stages: one sample scored from Python equals hfstage evaluate's prediction."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image
from transformers import pipeline

import hfstage  # noqa: F401  (registers the pipelines)
from hfstage.errors import DataError
from hfstage.evaluation import evaluate_checkpoint


def test_pair_pipeline_equals_evaluate(finished_run, pair_data, tmp_path):
    best = finished_run / json.loads((finished_run / "run.json").read_text())["best_stage_dir"]
    assert json.loads((best / "preprocessor_config.json").read_text())["hfstage_processor"] == "pairs"
    evaluate_checkpoint(best, split="test", save_predictions=True, out=str(tmp_path / "eval"))
    rows = list(csv.DictReader((tmp_path / "eval" / "test_predictions.csv").open()))
    x = np.load(pair_data / "test_public.npz")["x"]
    same = pipeline("pair-classification", model=str(best))
    results = same([{"image_a": a, "image_b": b} for a, b in x])  # a list in, a list out
    assert len(results) == len(rows) == 160
    for row, result in zip(rows, results):
        assert result["label"] == ("same" if row["prediction"] == "1" else "different")
        p_same = result["score"] if result["label"] == "same" else 1 - result["score"]
        assert p_same == pytest.approx(float(row["probability"]), abs=2e-6)
    # PIL images and paths give the same answer as the arrays they hold
    Image.fromarray(x[0, 0]).save(tmp_path / "a.png")
    single = same({"image_a": str(tmp_path / "a.png"), "image_b": Image.fromarray(x[0, 1])})
    assert single["label"] == results[0]["label"] and single["score"] == pytest.approx(results[0]["score"], abs=1e-6)
    floats = same({"image_a": x[0, 0] / np.float32(255), "image_b": x[0, 1] / np.float32(255)})
    assert floats["score"] == pytest.approx(results[0]["score"], abs=1e-5)
    with pytest.raises(DataError, match=r"image_b has shape \(3, 3\); this model takes \(28, 28\)"):
        same({"image_a": x[0, 0], "image_b": np.zeros((3, 3), np.uint8)})
    with pytest.raises(DataError, match="give {'image_a'"):
        same({"image": x[0, 0]})
