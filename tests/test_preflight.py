"""Checks before training (preflight.py): stage settings against the task and the model, refused by plan and train alike."""

from __future__ import annotations

from pathlib import Path

import pytest

from hfstage.cli import main


@pytest.mark.parametrize("override, message", [
    ("stages.1.freeze_patterns=[nothing.*]", "stages.1 (baseline).freeze_patterns: 'nothing.*' matches no parameter"),
    ("stages.1.freeze_patterns=['*']", "every parameter would be frozen"),
    ("stages.2.lr_multipliers={tail.*: 2}", "stages.2 (augmentation).lr_multipliers: 'tail.*' matches no parameter"),
    ("stages.2.augmentation.blur=1", "unknown pair augmentation 'blur'"),
    ("stages.2.augmentation.shift=0.9", "augmentation.shift: 0.9 must be in [0, 0.5]"),
    ("stages.1.mixed_precision=fp16", "fp16 needs a GPU"),
    ("stages.1.loss=hinge", "unknown loss 'hinge'"),
    ("task=pairs", "unknown task 'pairs' (did you mean 'pair_classification'?)"),
    ("model.widht=3", "widht"),
])
def test_plan_and_train_refuse_bad_stage_settings(recipe, tmp_path, capsys, override, message):
    path = recipe()
    for command in ("plan", "train"):
        assert main([command, "--config", str(path), override]) == 2
        err = capsys.readouterr().err
        assert message in err and f"error: {path}: " in err  # the recipe file and the field, in one line
    assert not (tmp_path / "run").exists()


def test_teacher_of_another_task_is_refused_clearly(recipe, tmp_path, sequence_data, capsys):
    seq_out = tmp_path / "seq"
    assert main(["train", "--config", str(Path(__file__).resolve().parents[1] / "configs/sign_5stage.yaml"),
                 "quick_test=true", f"data.path={sequence_data}", f"output_dir={seq_out}", "report_to=[none]",
                 "stages.2.epochs=1"]) == 0
    capsys.readouterr()
    path = recipe(stages=[{"name": "distil", "epochs": 1, "teacher": str(seq_out)}])
    assert main(["train", "--config", str(path)]) == 2
    assert "solves sequence_classification, this run pair_classification" in capsys.readouterr().err
