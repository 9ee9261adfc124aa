"""Feature sequences: loading and its refusals, masking, augmentation, the 5-stage recipe."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModel

from hfstage.cli import main
from hfstage.data.npz_sequences import (
    SequenceCollator,
    augment_sequences,
    load_sequence_arrays,
)
from hfstage.errors import DataError
from hfstage.evaluation import evaluate_checkpoint
from hfstage.models import build_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("arch", ["cnn", "gru", "lstm", "transformer", "resnet1d", "inception"])
def test_padding_does_not_change_the_output_and_models_reload(arch, tmp_path):
    torch.manual_seed(0)
    model = build_model({"type": "sequence", "arch": arch, "hidden_dim": 16, "num_layers": 2, "num_heads": 2},
                        input_dim=3, num_labels=5).eval()
    lengths = torch.tensor([4, 7, 2])
    short = torch.randn(3, 7, 3) * (torch.arange(7)[None, :, None] < lengths[:, None, None])
    longer = torch.cat([short, torch.zeros(3, 6, 3)], dim=1)
    mask = lambda t: (torch.arange(t)[None, :] < lengths[:, None]).long()  # noqa: E731
    with torch.no_grad():
        a = model(input_values=short, attention_mask=mask(7)).logits
        b = model(input_values=longer, attention_mask=mask(13)).logits
    assert a.shape == (3, 5)
    assert torch.allclose(a, b, atol=1e-5)
    model.train()
    model(input_values=short, attention_mask=mask(7)).logits.sum().backward()  # BatchNorm statistics move
    model.eval().save_pretrained(tmp_path)
    again = AutoModel.from_pretrained(tmp_path).eval()
    assert again.config.arch == arch and again.config.num_labels == 5
    with torch.no_grad():
        ref = model(input_values=short, attention_mask=mask(7)).logits
        assert torch.allclose(again(input_values=short, attention_mask=mask(7)).logits, ref, atol=1e-6)


@pytest.mark.parametrize("arch, layers, shortcuts", [("resnet1d", 3, 3), ("inception", 6, 2)])
def test_time_series_architectures_shapes_and_batchnorm_over_valid_frames(arch, layers, shortcuts):
    from hfstage.models.sequence import MaskedBatchNorm1d

    torch.manual_seed(1)
    model = build_model({"type": "sequence", "arch": arch, "hidden_dim": 8, "num_layers": layers},
                        input_dim=2, num_labels=3)
    found = [name for name, _ in model.named_modules() if re.fullmatch(r".*(\.shortcut|\.shortcuts\.\d+)", name)]
    assert len(found) == shortcuts
    assert model.config.kernel_sizes == ([7, 5, 3] if arch == "resnet1d" else [39, 19, 9])
    lengths = torch.tensor([50, 20])
    x = torch.randn(2, 50, 2) * (torch.arange(50)[None, :, None] < lengths[:, None, None])
    mask = (torch.arange(50)[None, :] < lengths[:, None]).long()
    padded_x = torch.cat([x, torch.zeros(2, 30, 2)], 1)
    padded_mask = torch.cat([mask, torch.zeros(2, 30, dtype=torch.long)], 1)
    stats = []
    for inputs, m in ((x, mask), (padded_x, padded_mask)):  # one training forward each, from the same start
        trained = build_model({"type": "sequence", "arch": arch, "hidden_dim": 8, "num_layers": layers},
                              input_dim=2, num_labels=3)
        trained.load_state_dict(model.state_dict())
        trained.train()
        assert trained(input_values=inputs, attention_mask=m).logits.shape == (2, 3)
        stats.append(torch.cat([b.running_mean for b in trained.modules() if isinstance(b, MaskedBatchNorm1d)]))
    assert torch.allclose(stats[0], stats[1], atol=1e-6)  # padded frames never reach the batch statistics
    with pytest.raises(ValueError, match="kernel_sizes is for arch resnet1d or inception"):
        from hfstage.models.sequence import SequenceConfig

        SequenceConfig(arch="gru", kernel_sizes=[3, 3, 3])


def test_augmentations_touch_valid_frames_only():
    torch.manual_seed(0)
    x = torch.randn(4, 10, 3)
    lengths = torch.tensor([10, 5, 3, 8])
    x = x * (torch.arange(10)[None, :, None] < lengths[:, None, None])
    out, new_lengths = augment_sequences(x, lengths, {"jitter": 0.1, "scale": 0.2, "time_warp": 0.3, "frame_drop": 0.2,
                                                      "time_shift": 0.2})
    pad = torch.arange(10)[None, :] >= new_lengths[:, None]
    assert (out[pad] == 0).all() and (new_lengths >= 2).all() and (new_lengths <= 10).all()
    batch = SequenceCollator()({"input_values": x, "lengths": lengths, "labels": torch.zeros(4, dtype=torch.long)})
    assert batch["attention_mask"].sum(1).tolist() == [10, 5, 3, 8]
    assert torch.equal(batch["input_values"], x)  # no augmentation asked: untouched


GOOD = {"x": np.zeros((3, 5, 2), np.float32), "y": np.array([0, 1, 2])}


@pytest.mark.parametrize("arrays, message", [
    ({**GOOD, "lengths": np.array([1, 6, 2])}, "key 'lengths' must be in [1, 5] (the padded length); sample 1 has 6"),
    ({**GOOD, "lengths": np.array([1, 0, 2])}, "sample 1 has 0"),
    ({**GOOD, "x": np.zeros((3, 5), np.float32)}, "key 'x' must have shape (N, T, F)"),
    ({**GOOD, "x": np.zeros((3, 5, 2), np.int64)}, "key 'x' must be float"),
    ({**GOOD, "y": np.array([0, -1, 2])}, "key 'y' must be >= 0; sample 1 has -1"),
    ({**GOOD, "y": np.array([0.0, 1.0, 2.0])}, "key 'y' must hold integer class ids"),
    ({**GOOD, "classes": np.array(["a", "b"])}, "key 'y' has class 2 but 'classes' names only 2"),
    ({**GOOD, "extra": np.zeros(3)}, "unexpected key 'extra'"),
])
def test_bad_sequence_files(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError) as err:
        load_sequence_arrays(path)
    assert message in str(err.value) and str(path) in str(err.value)


def test_prepared_japanese_vowels(sequence_data):
    train = load_sequence_arrays(sequence_data / "train.npz")
    test = load_sequence_arrays(sequence_data / "test_public.npz")
    assert train["x"].shape[1:] == (29, 12) and len(train["y"]) == 216 and len(test["y"]) == 370
    assert set(np.unique(train["y"])) == set(range(9)) and list(train["classes"][:2]) == ["speaker_1", "speaker_2"]
    assert 7 <= train["lengths"].min() and train["lengths"].max() <= 29
    padded = np.arange(29)[None, :] >= train["lengths"][:, None]
    assert (train["x"][padded] == 0).all()


def test_label_outside_the_training_classes_is_refused(sequence_data, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("train.npz", "test_public.npz"):
        (data / name).write_bytes((sequence_data / name).read_bytes())
    val = dict(np.load(sequence_data / "val.npz"))
    val.pop("classes")
    val["y"] = val["y"].copy()
    val["y"][3] = 12
    np.savez(data / "val.npz", **val)
    assert main(["plan", "--config", str(ROOT / "configs/sign_5stage.yaml")]) == 0
    capsys.readouterr()
    assert main(["train", "--config", str(ROOT / "configs/sign_5stage.yaml"), f"data.path={data}",
                 f"output_dir={tmp_path / 'run'}"]) == 2
    assert "val.npz: key 'y' has class 12, outside the 9 classes" in capsys.readouterr().err


@pytest.mark.slow  # a full recipe
@pytest.mark.parametrize("arch", ["gru", "transformer", "inception"])
def test_sign_5stage_recipe_quick_test(sequence_data, tmp_path, arch):
    out = tmp_path / "run"
    # the recipe's finetune stage freezes the input projection, which the convolutional time-series nets lack
    extra = ["stages.4.freeze_patterns=[]"] if arch == "inception" else []
    assert main(["train", "--config", str(ROOT / "configs/sign_5stage.yaml"), "quick_test=true",
                 f"data.path={sequence_data}", f"output_dir={out}", "report_to=[none]", f"model.arch={arch}",
                 *extra]) == 0
    run = json.loads((out / "run.json").read_text())
    assert [s["status"] for s in run["stages"]] == ["finished"] * 5
    record = json.loads((out / "stage_1_baseline/stage.json").read_text())
    assert {"eval_accuracy", "eval_f1"} <= set(record["metrics"]) and record["metrics"]["eval_accuracy"] > 1 / 9
    assert record["train_data_sha256"]
    # evaluation of a sequence checkpoint reproduces the recorded (macro) metrics
    result = evaluate_checkpoint(out / "stage_1_baseline", split="val", save_predictions=True)
    assert result["metrics"]["accuracy"] == pytest.approx(record["metrics"]["eval_accuracy"])
    assert result["metrics"]["f1"] == pytest.approx(record["metrics"]["eval_f1"])
    header, *rows = (out / "stage_1_baseline/eval/val_predictions.csv").read_text().splitlines()
    assert header.split(",")[:5] == ["id", "label", "prediction", "probability", "p_0"] and len(rows) == 54
    cells = rows[0].split(",")
    assert sum(float(v) for v in cells[4:]) == pytest.approx(1.0, abs=1e-4)
    # the feature-sequence-classification pipeline scores one clip as evaluate did
    from transformers import pipeline

    import hfstage  # noqa: F401  (registers the pipeline)

    classify = pipeline("feature-sequence-classification", model=str(out / "stage_1_baseline"))
    val = np.load(sequence_data / "val.npz")
    clips = [val["x"][i, : val["lengths"][i]] for i in range(len(val["x"]))]
    results = classify(clips)
    names = json.loads((out / "stage_1_baseline/config.json").read_text())["id2label"]
    for result, row in zip(results, rows):
        cells = row.split(",")
        assert result["label"] == names[cells[2]] and result["score"] == pytest.approx(float(cells[3]), abs=1e-4)
    # ONNX with a dynamic batch and time axis, checked on clips of other lengths
    from hfstage.export import export_stage

    exported = export_stage(out / "stage_1_baseline", "onnx", tmp_path / "onnx")
    assert exported["max_abs_difference"] <= 1e-4 and exported["inputs"]["input_values"] == ["batch", "time"]
