"""Non-neural bases (models/estimator.py) and the stacking recipe (ensemble.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from conftest import ROOT, TINY_MODEL, write_recipe

from hfstage.cli import main
from hfstage.config import load_config
from hfstage.models.estimator import fit_patch_features, pair_patches, pair_stats, sequence_stats
from hfstage.sweeps import run_seeds

ESTIMATOR_STAGE = [{"name": "fit"}]


def estimator_recipe(path, data, out, estimator="lightgbm", stages=ESTIMATOR_STAGE, **fields):
    params = {"num_boost_round": 40, "early_stopping_rounds": 10} if estimator == "lightgbm" else {"C": 0.1}
    return write_recipe(path, data, out, stages, model={"type": "estimator", "estimator": estimator,
                                                                 "params": params},
                        defaults={"batch_size": 64, "eval_batch_size": 64}, **fields)


def test_pair_and_sequence_features_are_what_they_say():
    rng = np.random.default_rng(0)
    pair = rng.random((3, 2, 8, 8)).astype(np.float32)
    f = pair_stats(pair, pool=2)
    swapped = pair_stats(pair[:, ::-1].copy(), pool=2)
    assert np.allclose(f, swapped)  # symmetric in the two images
    assert np.allclose(f[:, :16], np.abs(pair[:, 0].reshape(3, 4, 2, 4, 2).mean((2, 4)) -
                                          pair[:, 1].reshape(3, 4, 2, 4, 2).mean((2, 4))).reshape(3, 16))
    same = pair_stats(np.repeat(pair[:, :1], 2, axis=1), pool=2)
    assert np.allclose(same[:, -1], 0) and np.allclose(same[:, -2], 1, atol=1e-5)  # distance 0, cosine 1
    x = np.zeros((2, 6, 1), dtype=np.float32)
    x[0, :4, 0] = [1, 2, 3, 4]
    x[0, 4:, 0] = 100.0  # padding must not count
    x[1, :, 0] = [5, 5, 5, 5, 5, 5]
    mask = np.array([[1, 1, 1, 1, 0, 0], [1] * 6])
    s = sequence_stats(x, mask)  # mean, std, min, max, first, last, slope, mean |step|, length
    assert s[0].tolist() == pytest.approx([2.5, np.std([1, 2, 3, 4]), 1, 4, 1, 4, 1, 1, 4])
    assert s[1].tolist() == pytest.approx([5, 0, 5, 5, 5, 5, 0, 0, 6])


def test_pair_patch_features_fit_on_training_images_and_reload(pair_data, tmp_path, capsys):
    rng = np.random.default_rng(1)
    pairs = rng.random((20, 2, 12, 12)).astype(np.float32)
    state = fit_patch_features(pairs, centroids=8, size=4, seed=0)
    assert state["patch_centroids"].shape == (8, 16) and state["patch_whitening"].shape == (16, 16)
    f = pair_patches(pairs, state, size=4)
    assert f.shape == (20, 2 * 4 * 8 + 2)  # |a - b| and a * b of 8 centroids x 4 quadrants, cosine, distance
    assert np.allclose(f, pair_patches(pairs[:, ::-1].copy(), state, size=4))  # symmetric
    same = pair_patches(np.repeat(pairs[:, :1], 2, axis=1), state, size=4)
    assert np.allclose(same[:, :32], 0) and np.allclose(same[:, -1], 0) and np.allclose(same[:, -2], 1, atol=1e-5)
    # through a run: the centroids are fitted on the training split, saved, and reloaded by from_pretrained
    from transformers import AutoModel

    from hfstage.data.npz_pairs import PairCollator
    from hfstage.tasks import TASKS

    out = tmp_path / "run"
    recipe = estimator_recipe(tmp_path / "r.yaml", pair_data, out)
    assert main(["train", "--config", str(recipe), "model.features=pair_patches", "model.centroids=16"]) == 0
    capsys.readouterr()
    stage = out / "stage_1_fit"
    record = json.loads((stage / "stage.json").read_text())
    assert record["test_metrics"]["test_accuracy"] > 0.6  # real digits: better than chance
    model = AutoModel.from_pretrained(stage)
    assert model.patch_centroids.shape == (16, 36) and model.config.features == "pair_patches"
    train = TASKS.get("pair_classification")().load_split(pair_data / "train.npz")
    fitted = fit_patch_features(np.stack([np.asarray(train[i]["pixel_values"], dtype=np.float32) / 255
                                          for i in range(len(train))]), 16, 6, model.config.seed)
    assert np.allclose(model.patch_centroids.numpy(), fitted["patch_centroids"], atol=1e-5)
    test = TASKS.get("pair_classification")().load_split(pair_data / "test_public.npz")
    batch = PairCollator()([test[i] for i in range(16)])
    batch.pop("labels")
    with torch.no_grad():
        assert torch.isfinite(model(**batch).logits).all()
    assert main(["evaluate", str(stage), "--split", "test", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"]["accuracy"] == pytest.approx(
        record["test_metrics"]["test_accuracy"])
    for override, message in (("model.centroids=1", "centroids must be an integer >= 2"),
                              ("model.patch_size=40", "patch_size 40 needs images of at least 42 pixels")):
        assert main(["train", "--config", str(recipe), f"output_dir={tmp_path / 'no'}", "model.features=pair_patches",
                     override]) == 2
        assert message in capsys.readouterr().err


@pytest.mark.parametrize("estimator", ["lightgbm", "logreg"])
def test_estimator_base_k_fold_files_reload_and_leak_refusal(estimator, pair_data, tmp_path, capsys):
    out = tmp_path / "run"
    cfg = load_config(estimator_recipe(tmp_path / "r.yaml", pair_data, out, estimator, folds=2))
    summary = run_seeds(cfg)[0]
    capsys.readouterr()
    oof, ids = np.load(out / "oof.npy"), np.load(out / "oof_ids.npy")
    assert oof.shape == (320,) and ids.shape == (320,) and np.load(out / "test_probs.npy").shape == (160,)
    assert ((oof > 0) & (oof < 1)).all() and summary["oof_accuracy"] > 0.6  # real digits: better than chance
    stage = out / "fold_0" / "stage_1_fit"
    record = json.loads((stage / "stage.json").read_text())
    assert record["global_steps"] == 0 and record["metrics"]["eval_accuracy"] > 0.6
    # the saved stage is a transformers model: from_pretrained gives the same predictions
    from transformers import AutoModel

    from hfstage.data.npz_pairs import PairCollator
    from hfstage.tasks import TASKS

    model = AutoModel.from_pretrained(stage)
    assert type(model).__name__ == "EstimatorModel" and model.config.estimator == estimator
    test = TASKS.get("pair_classification")().load_split(pair_data / "test_public.npz")
    batch = PairCollator()([test[i] for i in range(16)])
    batch.pop("labels")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (16,) and torch.isfinite(logits).all()
    assert main(["evaluate", str(stage), "--split", "test", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["metrics"]["accuracy"] == pytest.approx(record["test_metrics"]["test_accuracy"])
    # stacking an estimator on its own training split is a leak: refused by name
    plain = tmp_path / "plain"
    assert main(["train", "--config", str(estimator_recipe(tmp_path / "p.yaml", pair_data, plain, estimator))]) == 0
    capsys.readouterr()
    code = main(["stack", "--models", str(plain), str(stage), "--out", str(tmp_path / "s"), "--train-split", "train"])
    assert code == 2 and f"{plain}: trained on" in capsys.readouterr().err


def test_estimator_on_sequences_and_refused_stage_fields(sequence_data, tmp_path, capsys):
    out = tmp_path / "seq"
    recipe = estimator_recipe(tmp_path / "r.yaml", sequence_data, out, "logreg", task="sequence_classification")
    assert main(["train", "--config", str(recipe)]) == 0
    record = json.loads((out / "stage_1_fit" / "stage.json").read_text())
    assert record["test_metrics"]["test_accuracy"] > 0.5  # 9 classes: chance is 0.11
    for override, message in (("stages.1.lr=0.1", "stages.1.lr: model.type estimator is fitted in one pass"),
                              ("model.params.max_iters=3", "logreg takes C, max_iter"),
                              ("model.estimator=lightgbm", "C is not a LightGBM parameter")):
        assert main(["train", "--config", str(recipe), f"output_dir={tmp_path / 'no'}", override]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "no").exists()


def stack_recipe(tmp_path, pair_data, **fields):
    write_recipe(tmp_path / "cnn.yaml", pair_data, tmp_path / "unused", [{"name": "base", "epochs": 1}])
    estimator_recipe(tmp_path / "lgbm.yaml", pair_data, tmp_path / "unused")
    job = {"output_dir": str(tmp_path / "job"), "data": {"path": str(pair_data)},
           "bases": [{"name": "cnn", "recipe": "cnn.yaml", "overrides": {"seed": 3}},
                     {"name": "cnn_folds", "recipe": "cnn.yaml", "folds": 2},
                     {"name": "lgbm", "recipe": "lgbm.yaml"}],
           "meta_folds": 3, **fields}
    path = tmp_path / "stack.yaml"
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


def test_stack_recipe_trains_missing_bases_then_stacks_and_resumes(pair_data, tmp_path, capsys):
    path = stack_recipe(tmp_path, pair_data)
    assert main(["train", "--config", str(path), "meta_train_samples=120"]) == 0
    job = tmp_path / "job"
    table = capsys.readouterr().out
    result = json.loads((job / "stack.json").read_text())
    assert result["samples"] == {"meta_train": 120, "test": 160} and result["meta_train"] == "val"
    assert [r["method"] for r in result["methods"]][:3] == [f"base: {job / n}" for n in ("cnn", "cnn_folds", "lgbm")]
    assert sum(bool(r.get("chosen")) for r in result["methods"]) == 1 and "ensemble selection" in table
    assert json.loads((job / "stack_meta.json").read_text())["meta_learner"] == result["meta_learner"]
    assert json.loads((job / "cnn" / "run.json").read_text())["config"]["seed"] == 3
    assert (job / "cnn_folds" / "oof.npy").is_file() and (job / "cnn_folds" / "fold_1" / "run.json").is_file()
    # the stack evaluates like a run: its test accuracy is metrics.accuracy
    assert main(["evaluate", str(job), "--split", "test", "--json"]) == 0
    chosen = next(r for r in result["methods"] if r.get("chosen"))
    assert json.loads(capsys.readouterr().out)["metrics"]["accuracy"] == pytest.approx(chosen["test_accuracy"])
    # a rerun skips the finished bases, also one saved before a newer stage field existed (it reads as its
    # default); a missing one is trained again, alone
    saved = json.loads((job / "lgbm" / "run.json").read_text())
    for stage in saved["config"]["stages"]:
        del stage["train_on_eval"]
    (job / "lgbm" / "run.json").write_text(json.dumps(saved))
    stamps = {n: (job / n / "run.json").stat().st_mtime_ns for n in ("cnn", "lgbm")}
    import shutil

    shutil.rmtree(job / "cnn_folds")
    assert main(["train", "--config", str(path), "meta_train_samples=120"]) == 0
    assert {n: (job / n / "run.json").stat().st_mtime_ns for n in ("cnn", "lgbm")} == stamps
    assert (job / "cnn_folds" / "oof.npy").is_file()
    again = json.loads((job / "stack.json").read_text())
    assert [r["test_accuracy"] for r in again["methods"]][:2] == [r["test_accuracy"] for r in result["methods"]][:2]
    # so does a k-fold base whose cv.json predates a stage field (its out-of-fold files are not rewritten)
    cv = json.loads((job / "cnn_folds" / "cv.json").read_text())
    for stage in cv["config"]["stages"]:
        del stage["train_on_eval"]
    (job / "cnn_folds" / "cv.json").write_text(json.dumps(cv))
    stamp = (job / "cnn_folds" / "oof.npy").stat().st_mtime_ns
    assert main(["train", "--config", str(path), "meta_train_samples=120"]) == 0
    assert (job / "cnn_folds" / "oof.npy").stat().st_mtime_ns == stamp


def test_stack_recipe_overrides_reach_every_base_and_bad_recipes_are_refused(pair_data, tmp_path, capsys):
    from hfstage.ensemble import base_config, load_stack_job

    path = stack_recipe(tmp_path, pair_data)
    job = load_stack_job(path, ["quick_test=true", "quick_test_samples=100", f"output_dir={tmp_path / 'other'}",
                                "data.max_eval_samples=40"])
    from hfstage.ensemble import _as_overrides

    assert job.bases[2].overrides == []
    assert _as_overrides({"model": {"estimator": "logreg"}, "model.params": {"C": 0.1}}, "x") == [
        'model.estimator="logreg"', 'model.params={"C": 0.1}']
    job.bases[2].overrides = ["model.estimator=logreg", "model.params={C: 0.5}"]
    lgbm = base_config(job, job.bases[2])
    assert lgbm.model["estimator"] == "logreg" and lgbm.model["params"] == {"C": 0.5}
    for base in job.bases:
        cfg = base_config(job, base)
        assert cfg.quick_test and cfg.data.max_train_samples == 100 and cfg.data.max_eval_samples == 40
        assert cfg.output_dir == str(tmp_path / "other" / base.name) and cfg.data.path == str(pair_data)
    for override, message in (("metaa=auto", "metaa: not a stacking-recipe field (did you mean 'meta'?)"),
                              ("meta=xgboost", "meta: 'xgboost'; choose one of mean, selection, logreg, lightgbm, auto"),
                              ("bases.1.recipe=nope.yaml", "bases.1.recipe: "),
                              ("bases.2.folds=1", "bases.2.folds: must be 0 (no folds) or >= 2"),
                              ("bases.1.overrides.seeds=[1,2]", "seeds: a stack base is one model"),
                              ("bases.3.overrides.model.pool=0", "base 'lgbm' (")):
        assert main(["train", "--config", str(path), override]) == 2, override
        assert message in capsys.readouterr().err
    assert not (tmp_path / "job").exists()
    assert main(["plan", "--config", str(path)]) == 0
    shown = capsys.readouterr().out
    assert "## base 3/3 'lgbm'" in shown and "fitted in one pass: lightgbm(num_boost_round=40" in shown
    assert "## stack into" in shown and "meta auto, 3-fold CV on the 'val' split" in shown
    from hfstage.config import load_config

    with pytest.raises(Exception, match="this is a stacking recipe"):
        load_config(path)


def test_shipped_stack_recipes_load():
    from hfstage.ensemble import base_config, load_stack_job

    job = load_stack_job(ROOT / "configs" / "pairs_stack.yaml")
    assert len(job.bases) >= 4 and any(b.recipe.endswith("pairs_lightgbm.yaml") for b in job.bases)
    job = load_stack_job(ROOT / "configs" / "sequences_stack.yaml", ["data.path=data/ucr_GunPoint"])
    configs = [base_config(job, b) for b in job.bases]
    assert all(c.folds == 5 and c.data.path == "data/ucr_GunPoint" for c in configs)
    assert configs[3].model == {"type": "estimator", "estimator": "lightgbm", "features": "sequence_stats",
                                "params": {"num_boost_round": 500}}
    assert TINY_MODEL  # the shared tiny model stays importable for the recipes above


def test_minirocket_base_on_an_aeon_set_saves_its_transform(tmp_path, capsys):
    """MiniRocket features (aeon) with a logistic regression, on GunPoint as `hfstage prepare aeon` writes it:
    the fitted transform is saved with the model and the reloaded stage predicts what training measured."""
    data, out = tmp_path / "gunpoint", tmp_path / "mr"
    assert main(["prepare", "aeon", "--dataset", "GunPoint", "--out", str(data)]) == 0
    assert np.load(data / "train.npz")["x"].shape == (40, 150, 1) and np.load(data / "test_public.npz")["y"].shape == (150,)
    assert main(["train", "--config", str(ROOT / "configs/sequences_minirocket.yaml"), f"data.path={data}",
                 f"output_dir={out}", "report_to=[none]"]) == 0
    record = json.loads((out / "stage_2_refit" / "stage.json").read_text())  # the fit on train + eval
    assert record["test_metrics"]["test_accuracy"] >= 0.9  # MiniRocket's published GunPoint accuracy is ~0.99
    assert record["trained_on_eval"]["train_samples"] == 50
    saved = json.loads((out / "stage_2_refit" / "config.json").read_text())
    assert saved["series_length"] == 150 and "mr_biases" in saved["state_shapes"]
    capsys.readouterr()
    assert main(["evaluate", str(out), "--split", "test", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)["metrics"]
    assert metrics["accuracy"] == pytest.approx(record["test_metrics"]["test_accuracy"])
    assert main(["prepare", "aeon", "--dataset", "GunPointt", "--out", str(tmp_path / "no")]) == 2
    assert "did you mean 'GunPoint'" in capsys.readouterr().err


def test_digits_pairs_is_a_second_pair_set_split_by_image(tmp_path):
    from hfstage.data.prepare import prepare_digits_pairs

    summary = prepare_digits_pairs(tmp_path, train_pairs=300, val_pairs=100, test_pairs=100)
    assert {k: v["images"] for k, v in summary["splits"].items()} == {"train": 1078, "val": 360, "test_public": 359}
    train, test = (np.load(tmp_path / f"{s}.npz") for s in ("train", "test_public"))
    assert train["x"].shape == (300, 2, 28, 28) and train["x"].dtype == np.uint8 and train["y"].mean() == 0.5
    seen = {img.tobytes() for img in train["x"].reshape(-1, 28, 28)}
    assert not seen & {img.tobytes() for img in test["x"].reshape(-1, 28, 28)}  # no image in two splits


def test_train_on_eval_refits_on_all_labelled_data_and_stacking_refuses_it(pair_data, tmp_path, capsys):
    out = tmp_path / "refit"
    recipe = estimator_recipe(tmp_path / "r.yaml", pair_data, out,
                              stages=[{"name": "fit"}, {"name": "refit", "train_on_eval": True}])
    assert main(["train", "--config", str(recipe), "model.params.learning_rate=0.5"]) == 0  # early-stops < 40
    table = capsys.readouterr().out
    assert "2 refit * +" in table and "eval metrics are in-sample" in table
    fit, refit = (json.loads((out / s / "stage.json").read_text()) for s in ("stage_1_fit", "stage_2_refit"))
    assert "trained_on_eval" not in fit and refit["trained_on_eval"]["train_samples"] == 320 + 160
    assert refit["train_data_sha256"] == fit["train_data_sha256"] != refit["trained_on_eval"]["eval_data_sha256"]
    rounds = [next(e["boosting_rounds"] for e in r["log_history"] if "boosting_rounds" in e) for r in (fit, refit)]
    assert rounds[0] == rounds[1] < 40  # the refit keeps the rounds early stopping chose; it cannot early-stop
    assert refit["metrics"]["eval_accuracy"] > fit["metrics"]["eval_accuracy"]  # in-sample now
    # a neural stage trains on both splits too
    cnn = write_recipe(tmp_path / "cnn.yaml", pair_data, tmp_path / "cnn",
                       [{"name": "base", "epochs": 1}, {"name": "all", "epochs": 1, "train_on_eval": True}])
    assert main(["train", "--config", str(cnn)]) == 0
    record = json.loads((tmp_path / "cnn" / "stage_2_all" / "stage.json").read_text())
    assert record["global_steps"] == 15 and record["trained_on_eval"]["train_samples"] == 480  # 480 / 32
    assert "on train + eval (480 samples" in (tmp_path / "cnn" / "training.log").read_text()
    # predictions of the eval split by a stage that trained on it are in-sample: stacking on them is refused
    for refitted in (out / "stage_2_refit", tmp_path / "cnn"):  # a run stands for its best stage: the refit here
        code = main(["stack", "--models", str(refitted), str(out / "stage_1_fit"), "--out", str(tmp_path / "s")])
        assert code == 2 and f"{refitted}: was refitted on its eval split" in capsys.readouterr().err
    assert main(["stack", "--models", str(tmp_path / "cnn" / "stage_1_base"), str(out / "stage_1_fit"),
                 "--out", str(tmp_path / "s"), "--meta", "mean"]) == 0
    capsys.readouterr()
    # k-fold runs and a second plain fit are refused
    for args, message in (([str(cnn), "folds=2"], "stages.2 (all).train_on_eval: with folds: 2 the eval split is"),
                          ([str(recipe), "stages.refit.train_on_eval=false"], "give it one stage, or two whose second")):
        assert main(["train", "--config", args[0], f"output_dir={tmp_path / 'no'}", *args[1:]]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "no").exists()


def test_sklearn_estimator_by_import_path_saves_without_pickle(pair_data, sequence_data, tmp_path, capsys):
    """Any scikit-learn classifier by import path: fitted like the built-in estimators, saved in skops' format
    inside model.safetensors, reloaded by from_pretrained; bad paths and params are refused before training, and
    a saved state holding a foreign type is refused on loading."""
    out = tmp_path / "trees"
    recipe = estimator_recipe(tmp_path / "r.yaml", pair_data, out)
    trees = ["model.estimator=sklearn.ensemble.ExtraTreesClassifier", "model.params={n_estimators: 60, min_samples_leaf: 2}"]
    assert main(["train", "--config", str(recipe), *trees]) == 0
    record = json.loads((out / "stage_1_fit" / "stage.json").read_text())
    assert record["test_metrics"]["test_accuracy"] > 0.6 and record["log_history"][0]["features"] > 100
    capsys.readouterr()
    assert main(["evaluate", str(out), "--split", "test", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"]["accuracy"] == pytest.approx(
        record["test_metrics"]["test_accuracy"])
    from safetensors.numpy import load_file, save_file

    state = load_file(out / "stage_1_fit" / "model.safetensors")
    assert "sklearn_model" in state and state["classes"].tolist() == [0, 1]
    # a skops file is not a pickle: a state that would call os.system is refused on loading
    import os

    import skops.io as sio
    from sklearn.preprocessing import FunctionTransformer

    state["sklearn_model"] = np.frombuffer(sio.dumps(FunctionTransformer(os.system)), dtype=np.uint8).copy()
    save_file(state, out / "stage_1_fit" / "model.safetensors")
    config = json.loads((out / "stage_1_fit" / "config.json").read_text())
    config["state_shapes"]["sklearn_model"][0] = list(state["sklearn_model"].shape)
    (out / "stage_1_fit" / "config.json").write_text(json.dumps(config))
    assert main(["evaluate", str(out / "stage_1_fit"), "--split", "test", "--json"]) == 2
    assert "holds types outside sklearn, numpy, scipy, builtins" in capsys.readouterr().err
    # multi-class: a class missing from a small training split gets probability 0, not a shifted column
    seq = tmp_path / "seq"
    seq_recipe = estimator_recipe(tmp_path / "s.yaml", sequence_data, seq, "logreg", task="sequence_classification")
    assert main(["train", "--config", str(seq_recipe), "model.estimator=sklearn.naive_bayes.GaussianNB",
                 "model.params={}"]) == 0
    assert json.loads((seq / "stage_1_fit" / "stage.json").read_text())["test_metrics"]["test_accuracy"] > 0.5
    for override, message in (
            ("model.estimator=sklearn.ensemble.NoSuchForest", "cannot import it"),
            ("model.estimator=os.path.join", "is not a scikit-learn estimator class"),
            ("model.estimator=sklearn.linear_model.RidgeClassifier", "gives no class probabilities"),
            ("model.params.n_estimator=5", "not n_estimator")):
        args = [*trees, override] if "params" in override else [override, "model.params={}"]
        assert main(["train", "--config", str(recipe), f"output_dir={tmp_path / 'no'}", *args]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "no").exists()
