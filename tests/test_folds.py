"""k-fold curricula: one run per stratified fold, out-of-fold probabilities nobody trained on."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import write_recipe

from hfstage.config import load_config
from hfstage.sweeps import run_seeds
from hfstage.errors import ConfigError
from hfstage.evaluation import resolve_checkpoint
from hfstage.folds import fold_indices
from hfstage.tasks import TASKS

ONE_STAGE = [{"name": "baseline", "epochs": 1}]


def test_two_folds_write_out_of_fold_probabilities(pair_data, tmp_path, capsys):
    path = write_recipe(tmp_path / "r.yaml", pair_data, tmp_path / "run", ONE_STAGE, folds=2)
    [summary] = run_seeds(load_config(path))
    out = tmp_path / "run"
    assert (out / "fold_0" / "run.json").is_file() and (out / "fold_1" / "run.json").is_file()
    oof, ids, labels = (np.load(out / f) for f in ("oof.npy", "oof_ids.npy", "oof_labels.npy"))
    task = TASKS.get("pair_classification")()
    train = task.load_split(pair_data / "train.npz")
    assert oof.shape == (320,) and ids.tolist() == list(range(320)) and labels.tolist() == train.y.tolist()
    assert ((oof > 0) & (oof < 1)).all()
    # every sample's probability comes from the fold model that held it out
    folds = fold_indices(train.y.numpy(), 2, 0)
    for k, (train_idx, held) in enumerate(folds):
        assert not set(train_idx) & set(held)
        model = resolve_checkpoint(out / f"fold_{k}").stage_dir
        from transformers import AutoModel

        m = AutoModel.from_pretrained(model).eval()
        batch = task.collator(None, training=False)([train[i] for i in held[:16]])
        with torch.no_grad():
            p = torch.sigmoid(m(pixel_values=batch["pixel_values"]).logits.reshape(-1)).numpy()
        np.testing.assert_allclose(oof[held[:16]], p, rtol=1e-4, atol=1e-5)
        stage = json.loads((out / f"fold_{k}" / "stage_1_baseline" / "stage.json").read_text())
        assert stage["metrics"]["eval_samples_per_second"] > 0
        assert json.loads((out / f"fold_{k}" / "run.json").read_text())["config"]["fold"] == k
    cv = json.loads((out / "cv.json").read_text())
    assert cv["folds"] == 2 and len(cv["per_fold"]) == 2 and summary["oof_accuracy"] == cv["oof_accuracy"]
    assert abs(cv["eval_loss_mean"] - np.mean([f["eval_loss"] for f in cv["per_fold"]])) < 1e-9
    assert np.load(out / "test_probs.npy").shape == (160,)
    assert "out-of-fold accuracy" in capsys.readouterr().out


def test_one_fold_only_and_bad_fold_settings(pair_data, tmp_path):
    path = write_recipe(tmp_path / "r.yaml", pair_data, tmp_path / "run", ONE_STAGE, folds=3, fold=2)
    run_seeds(load_config(path))
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["fold_2"]  # no OOF until every fold is done
    for fields, message in (({"folds": 1}, "folds: 1 must be 0 \\(no folds\\) or >= 2"),
                            ({"folds": 2, "fold": 2}, "fold: 2 must name one of the 2 folds"),
                            ({"fold": 0}, "fold: set only together with folds")):
        with pytest.raises(ConfigError, match=message):
            load_config(write_recipe(tmp_path / "bad.yaml", pair_data, tmp_path / "x", ONE_STAGE, **fields))
    with pytest.raises(ConfigError, match="200 stratified folds need at least 200 training samples of every class"):
        run_seeds(load_config(write_recipe(tmp_path / "many.yaml", pair_data, tmp_path / "y", ONE_STAGE, folds=200)))
