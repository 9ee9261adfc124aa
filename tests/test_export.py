"""hfstage export: ONNX (and torch.export) checked against PyTorch on real batches of another size."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime
import pytest
import torch

from hfstage.cli import main
from hfstage.errors import StageError
from hfstage.export import export_stage
from hfstage.resolve import load_stage_model


def test_pair_stage_exports_to_onnx_and_pt2(finished_run, pair_data, tmp_path, capsys):
    best = finished_run / json.loads((finished_run / "run.json").read_text())["best_stage_dir"]
    assert main(["export", str(finished_run), "--out", str(tmp_path / "onnx"), "--opset", "17"]) == 0
    printed = capsys.readouterr().out
    assert "model.onnx: onnx, dynamic batch; max abs difference vs PyTorch" in printed
    record = json.loads((tmp_path / "onnx" / "export.json").read_text())
    assert record["max_abs_difference"] <= 1e-4 and record["inputs"] == {"pixel_values": ["batch"]}
    # any batch size, checked here once more on 17 test pairs
    x = torch.from_numpy(np.load(pair_data / "test_public.npz")["x"][:17]).float() / 255
    session = onnxruntime.InferenceSession(str(tmp_path / "onnx" / "model.onnx"))
    (logits,) = session.run(None, {"pixel_values": x.numpy()})
    with torch.no_grad():
        expected = load_stage_model(best)(pixel_values=x).logits.numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-4)

    assert main(["export", str(best), "--format", "pt2", "--out", str(tmp_path / "pt2")]) == 0
    program = torch.export.load(str(tmp_path / "pt2" / "model.pt2")).module()
    with torch.no_grad():
        np.testing.assert_allclose(program(x)[0].numpy(), expected, atol=1e-5)


def test_an_export_that_does_not_match_is_refused_and_leaves_nothing(finished_run, tmp_path):
    with pytest.raises(StageError, match="differs from PyTorch by .* above 1e-12; nothing was written"):
        export_stage(finished_run, "onnx", tmp_path / "strict", tolerance=1e-12)
    assert not (tmp_path / "strict").exists() and not list(tmp_path.glob(".strict*"))
