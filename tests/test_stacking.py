"""Stacking: the scores against hand computation, a known answer, the leak refusal, predict."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from conftest import ROOT

from hfstage.cli import main
from hfstage.stacking import (
    ProbabilityAverage,
    choose_meta,
    load_meta_predictor,
    log_loss,
    majority_vote,
    meta_features,
    save_meta_learner,
    score_methods,
)


def crafted(n, rng):
    """One informative model (right 90% of the time, confident) and two noise models."""
    y = rng.integers(0, 2, n)
    right = rng.random(n) < 0.9
    informative = np.where(right == (y == 1), 0.8, 0.2) + rng.normal(0, 0.05, n)
    noise = rng.random((n, 2))
    return np.column_stack([noise[:, 0], informative, noise[:, 1]]).clip(0, 1), y


def test_scores_match_hand_computation_and_the_stack_finds_the_informative_model():
    rng = np.random.default_rng(0)
    p, y = crafted(1000, rng)
    p_test, y_test = crafted(500, rng)
    X, names = meta_features(p, agreement=True, passthrough=None)
    X_test, _ = meta_features(p_test, agreement=True, passthrough=None)
    assert names == ["p0", "p1", "p2", "p_std", "p_max", "p_min"]
    assert np.allclose(X[:, 3], p.std(axis=1))
    rows, fitted = score_methods(["noise_a", "informative", "noise_b"], p, y, p_test, y_test, X, X_test, 5, 0)
    by = {r["method"]: r for r in rows}
    assert by["best single (informative)"]["test_accuracy"] == pytest.approx(((p_test[:, 1] > 0.5) == y_test).mean())
    assert by["mean of probabilities"]["cv_accuracy"] == pytest.approx(((p.mean(1) > 0.5) == y).mean())
    votes = (p > 0.5).sum(1) >= 2
    assert by["majority vote"]["test_accuracy"] == pytest.approx(((majority_vote(p_test) > 0.5) == y_test).mean())
    assert by["majority vote"]["cv_accuracy"] == pytest.approx((votes == y).mean())
    for kind in ("logreg stack", "lightgbm stack"):
        # the meta-learner learns to trust the informative model and ignore the noise
        assert by[kind]["cv_accuracy"] > by["mean of probabilities"]["cv_accuracy"] + 0.05
        assert by[kind]["test_accuracy"] >= by["best single (informative)"]["test_accuracy"] - 0.02
    coef = fitted["logreg"].coef_[0]
    assert abs(coef[1]) > 5 * max(abs(coef[0]), abs(coef[2]))


def test_ensemble_selection_known_answers(tmp_path):
    rng = np.random.default_rng(3)
    # one informative (under-confident) model and two noise models: every round adds the informative one
    p, y = crafted(800, rng)
    selection = ProbabilityAverage("selection").fit(p, y)
    assert selection.weights.tolist() == [0.0, 1.0, 0.0]
    # two models wrong on disjoint halves, a third right but hesitant everywhere: the 50/50 blend of the first two
    # is right and confident everywhere, so selection alternates between them and never adds the third
    y = np.ones(400, dtype=int)
    a = np.where(np.arange(400) < 200, 0.45, 0.95)
    b = np.where(np.arange(400) < 200, 0.95, 0.45)
    c = np.full(400, 0.55)
    probs = np.stack([a, b, c], axis=1)
    selection = ProbabilityAverage("selection", rounds=20).fit(probs, y)
    assert selection.weights.tolist() == [0.5, 0.5, 0.0]
    assert log_loss(selection.predict(probs), y) < min(log_loss(probs[:, i], y) for i in range(3))
    assert (selection.predict(probs) > 0.5).all() and ((probs[:, :2] > 0.5).mean(axis=0) == 0.5).all()
    # saved as its weights and read back to the same predictions (multi-class too)
    multi, y_multi = crafted_multiclass(300, rng)
    fitted = ProbabilityAverage("selection").fit(multi, y_multi)
    save_meta_learner(fitted, "selection", tmp_path)
    again = load_meta_predictor(tmp_path, "selection", 4)(None, multi)
    assert np.allclose(again, fitted.predict(multi)) and again.shape == (300, 4)
    assert fitted.weights.argmax() == 1 and fitted.weights.sum() == pytest.approx(1.0)


def test_meta_auto_chooses_by_cross_validation():
    rng = np.random.default_rng(4)
    # noise around one informative model: the mean is clearly worst and is never chosen
    p, y = crafted(1000, rng)
    X, _ = meta_features(p, agreement=False, passthrough=None)
    rows, _ = score_methods(["a", "informative", "b"], p, y, p, y, X, X, 5, 0)
    cv = {r["meta"]: r["cv_accuracy"] for r in rows if r.get("meta")}
    chosen, top = choose_meta(rows, 1000), max(cv.values())
    noise = np.sqrt(top * (1 - top) / 1000)
    assert chosen != "mean" and cv[chosen] >= top - noise  # within one standard error of the best ...
    losses = {r["meta"]: r["cv_log_loss"] for r in rows if r.get("meta") and r["cv_accuracy"] >= top - noise}
    assert losses[chosen] == min(losses.values())  # ... and the lowest log-loss of those
    assert cv["selection"] == pytest.approx(((p[:, 1] > 0.5) == y).mean())  # selection = the informative model
    # the label is the XOR of two models' decisions: only the trees can learn it
    y = rng.integers(0, 2, 1000)
    first = rng.integers(0, 2, 1000)
    second = first ^ y
    p = np.stack([np.where(first == 1, 0.8, 0.2), np.where(second == 1, 0.8, 0.2)], axis=1) + rng.normal(0, 0.03, (1000, 2))
    X, _ = meta_features(p, agreement=False, passthrough=None)
    rows, _ = score_methods(["first", "second"], p, y, p, y, X, X, 5, 0)
    assert choose_meta(rows, 1000) == "lightgbm"
    assert {r["meta"]: r for r in rows if r.get("meta")}["lightgbm"]["cv_accuracy"] > 0.95
    # 0.3 points ahead on 1,000 samples is fold noise (one standard error is 0.8 points): the log-loss decides;
    # on 100,000 samples it is not. The mean, 3 points behind, is out whatever its log-loss.
    rows = [{"meta": m, "cv_accuracy": a, "cv_log_loss": loss} for m, a, loss in
            (("mean", 0.90, 0.1), ("selection", 0.929, 0.19), ("logreg", 0.929, 0.17), ("lightgbm", 0.932, 0.2))]
    assert choose_meta(rows, 1000) == "logreg" and choose_meta(rows, 100_000) == "lightgbm"


def test_majority_vote_ties_are_negative():
    assert majority_vote(np.array([[0.9, 0.1], [0.9, 0.8], [0.2, 0.1]])).tolist() == [0.0, 1.0, 0.0]


@pytest.fixture
def two_runs(finished_run, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(finished_run, a)
    shutil.copytree(finished_run, b)
    return a, b


def test_stack_end_to_end_and_predict(two_runs, tmp_path, pair_data, capsys):
    a, b = two_runs
    out = tmp_path / "stack"
    assert main(["stack", "--models", str(a), str(b / "stage_1_baseline"), "--out", str(out), "--folds", "3",
                 "--agreement", "--meta", "logreg"]) == 0
    table = capsys.readouterr().out
    for method in ("best single", "mean of probabilities", "majority vote", "logreg stack", "lightgbm stack"):
        assert method in table
    result = json.loads((out / "stack.json").read_text())
    assert result["samples"] == {"meta_train": 160, "test": 160}
    meta = json.loads((out / "stack_meta.json").read_text())
    assert meta["features"] == ["p0", "p1", "p_std", "p_max", "p_min"] and len(meta["base_models"]) == 2
    assert (out / "meta_logreg.json").is_file()
    saved = np.load(out / "predictions.npz")
    assert saved["meta_train"].shape == (160, 2) and saved["test"].shape == (160, 2)
    assert saved["meta_train_labels"].shape == (160,) and len(saved["models"]) == 2
    # the saved probabilities are the ones the table scored: the mean-of-probabilities row reproduces
    mean_row = next(r for r in result["methods"] if r["method"] == "mean of probabilities")
    acc_mean = np.mean((saved["test"].mean(1) >= 0.5) == saved["test_labels"])
    assert acc_mean == pytest.approx(mean_row["test_accuracy"])

    preds = tmp_path / "preds.csv"
    assert main(["predict", "--stack", str(out), "--data", str(pair_data), "--out", str(preds)]) == 0
    printed = capsys.readouterr().out
    with open(preds) as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 160
    acc = np.mean([r["label"] == r["prediction"] for r in rows])
    logreg_test = next(r for r in result["methods"] if r["method"] == "logreg stack")["test_accuracy"]
    assert acc == pytest.approx(logreg_test)  # the saved meta-learner reproduces the reported number
    assert f"accuracy {acc:.4f}" in printed


def test_lightgbm_meta_learner_is_saved_as_text(two_runs, tmp_path, pair_data):
    a, b = two_runs
    out = tmp_path / "stack"
    assert main(["stack", "--models", str(a), str(b), "--out", str(out), "--folds", "2", "--meta", "lightgbm"]) == 0
    assert (out / "meta_model.txt").read_text().startswith("tree")
    assert main(["predict", "--stack", str(out), "--data", str(pair_data)]) == 0


def test_meta_auto_end_to_end_saves_and_predicts_its_choice(two_runs, tmp_path, pair_data, capsys):
    a, b = two_runs
    out = tmp_path / "auto"
    assert main(["stack", "--models", str(a), str(b / "stage_1_baseline"), "--out", str(out), "--folds", "3"]) == 0
    table = capsys.readouterr().out
    result = json.loads((out / "stack.json").read_text())
    chosen = [r for r in result["methods"] if r.get("chosen")]
    assert result["meta_requested"] == "auto" and len(chosen) == 1 and chosen[0]["meta"] == result["meta_learner"]
    assert json.loads((out / "stack_meta.json").read_text())["meta_learner"] == result["meta_learner"]
    for method in ("mean of probabilities", "ensemble selection", "logreg stack", "lightgbm stack"):
        assert method in table
    assert f"saved meta-learner: {result['meta_learner']}, chosen by CV (--meta auto" in table
    preds = tmp_path / "preds.csv"
    assert main(["predict", "--stack", str(out), "--data", str(pair_data), "--out", str(preds)]) == 0
    with open(preds) as fh:
        rows = list(csv.DictReader(fh))
    assert np.mean([r["label"] == r["prediction"] for r in rows]) == pytest.approx(chosen[0]["test_accuracy"])


def test_stacking_on_training_data_is_refused(two_runs, tmp_path, capsys):
    a, b = two_runs
    assert main(["stack", "--models", str(a), str(b), "--out", str(tmp_path / "s"), "--train-split", "train"]) == 2
    err = capsys.readouterr().err
    assert str(a) in err and "in-sample" in err and "leak" in err
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("args, message", [
    (["--folds", "1"], "--folds: 1 must be >= 2"),
    (["--meta", "xgboost"], "unknown meta-learner 'xgboost'"),
])
def test_bad_stack_options(two_runs, tmp_path, capsys, args, message):
    a, b = two_runs
    assert main(["stack", "--models", str(a), str(b), "--out", str(tmp_path / "s"), *args]) == 2
    assert message in capsys.readouterr().err


def test_one_model_is_not_a_stack(two_runs, tmp_path, capsys):
    assert main(["stack", "--models", str(two_runs[0]), "--out", str(tmp_path / "s")]) == 2
    assert "at least two base models" in capsys.readouterr().err


def crafted_multiclass(n, rng, classes=4):
    """(N, 3, C): one informative model (right 85 %), two uniform-noise models."""
    y = rng.integers(0, classes, n)
    right = rng.random(n) < 0.85
    guess = np.where(right, y, (y + rng.integers(1, classes, n)) % classes)
    informative = np.full((n, classes), 0.1 / (classes - 1))
    informative[np.arange(n), guess] = 0.9
    noise = rng.dirichlet(np.ones(classes), size=(n, 2))
    return np.stack([noise[:, 0], informative, noise[:, 1]], axis=1), y


def test_multiclass_stacking_by_hand_and_known_answer():
    rng = np.random.default_rng(1)
    p, y = crafted_multiclass(1200, rng)
    p_test, y_test = crafted_multiclass(600, rng)
    X, names = meta_features(p, agreement=True, passthrough=None)
    assert X.shape == (1200, 3 * 4 + 3 * 4) and names[:5] == ["p0_0", "p0_1", "p0_2", "p0_3", "p1_0"]
    assert names[12:16] == ["p_std_0", "p_std_1", "p_std_2", "p_std_3"] and np.allclose(X[:, 12], p[:, :, 0].std(1))
    X_test, _ = meta_features(p_test, agreement=True, passthrough=None)
    rows, fitted = score_methods(["a", "informative", "b"], p, y, p_test, y_test, X, X_test, 4, 0)
    by = {r["method"]: r for r in rows}
    assert by["best single (informative)"]["test_accuracy"] == pytest.approx((p_test[:, 1].argmax(1) == y_test).mean())
    assert by["mean of probabilities"]["cv_accuracy"] == pytest.approx((p.mean(1).argmax(1) == y).mean())
    for kind in ("logreg stack", "lightgbm stack"):
        assert by[kind]["test_accuracy"] >= by["best single (informative)"]["test_accuracy"] - 0.02
        assert by[kind]["cv_accuracy"] > by["mean of probabilities"]["cv_accuracy"]
    # majority vote over three models: two agree -> that class; all differ -> highest mean probability
    votes = majority_vote(np.array([[[0.6, 0.3, 0.1], [0.5, 0.4, 0.1], [0.1, 0.1, 0.8]],
                                    [[0.6, 0.3, 0.1], [0.1, 0.5, 0.4], [0.1, 0.1, 0.8]]]))
    assert votes.argmax(1).tolist() == [0, 2]


def test_stack_of_kfold_runs_uses_their_out_of_fold_predictions(pair_data, tmp_path, capsys):
    from conftest import write_recipe

    from hfstage.config import load_config
    from hfstage.sweeps import run_seeds

    runs = []
    for seed in (0, 1):
        path = write_recipe(tmp_path / f"r{seed}.yaml", pair_data, tmp_path / f"k{seed}", [{"name": "base", "epochs": 1}],
                            folds=2, seed=seed)
        run_seeds(load_config(path))
        runs.append(str(tmp_path / f"k{seed}"))
    capsys.readouterr()
    assert main(["stack", "--models", *runs, "--out", str(tmp_path / "s"), "--train-split", "val"]) == 2
    assert "train_split 'val': every base is a k-fold run" in capsys.readouterr().err  # it would do nothing
    assert main(["stack", "--models", *runs, "--out", str(tmp_path / "s"), "--folds", "3", "--meta", "logreg"]) == 0
    result = json.loads((tmp_path / "s" / "stack.json").read_text())
    assert result["meta_train"] == "out-of-fold" and result["samples"] == {"meta_train": 320, "test": 160}
    by = {r["method"]: r for r in result["methods"]}
    oof = np.load(tmp_path / "k0" / "oof.npy")
    labels = np.load(tmp_path / "k0" / "oof_labels.npy")
    assert by[f"base: {runs[0]}"]["cv_accuracy"] == pytest.approx(((oof > 0.5) == labels).mean())
    assert main(["predict", "--stack", str(tmp_path / "s"), "--data", str(pair_data)]) == 0
    assert "160 samples" in capsys.readouterr().out
    # a k-fold run and a plain run: both predict the validation split instead (no k-fold model trained on it)
    plain = write_recipe(tmp_path / "p.yaml", pair_data, tmp_path / "plain", [{"name": "base", "epochs": 1}])
    run_seeds(load_config(plain))
    assert main(["stack", "--models", runs[0], str(tmp_path / "plain"), "--out", str(tmp_path / "m"), "--folds", "3"]) == 0
    assert json.loads((tmp_path / "m" / "stack.json").read_text())["meta_train"] == "val"


def test_multiclass_stack_end_to_end_on_sequences(sequence_data, tmp_path, capsys):
    from hfstage.config import load_config
    from hfstage.curriculum import run

    runs = []
    for arch in ("gru", "cnn"):
        out = tmp_path / arch
        cfg = load_config(ROOT / "configs/sign_5stage.yaml",
                          ["quick_test=true", f"data.path={sequence_data}", f"output_dir={out}", "report_to=[none]",
                           f"model.arch={arch}", "stages=[{name: base, epochs: 3, lr: 0.003}]"])
        run(cfg)
        runs.append(str(out))
    assert main(["stack", "--models", *runs, "--out", str(tmp_path / "s"), "--folds", "3", "--agreement"]) == 0
    result = json.loads((tmp_path / "s" / "stack.json").read_text())
    meta = json.loads((tmp_path / "s" / "stack_meta.json").read_text())
    assert meta["classes"] == 9 and len(meta["features"]) == 2 * 9 + 3 * 9
    assert result["samples"] == {"meta_train": 54, "test": 370}
    assert main(["predict", "--stack", str(tmp_path / "s"), "--data", str(sequence_data), "--out",
                 str(tmp_path / "p.csv")]) == 0
    rows = (tmp_path / "p.csv").read_text().splitlines()
    assert len(rows) == 371 and rows[0].startswith("id,label,prediction,probability,p_0")
    lgbm = next(r for r in result["methods"] if r.get("chosen"))
    printed = capsys.readouterr().out
    assert f"accuracy {lgbm['test_accuracy']:.4f}" in printed


def test_lightgbm_never_spins_more_threads_than_the_process_has():
    """Two processes that each ran LightGBM on 2 OpenMP threads on a 2-core machine took 39 s for a fit that takes
    0.1 s alone (the CI's two test workers): LightGBM takes torch's thread count, at most 2."""
    import torch

    from hfstage.models.estimator import lightgbm_threads
    from hfstage.stacking import make_meta_learner

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert lightgbm_threads() == 1 and make_meta_learner("lightgbm", 0).n_jobs == 1
        torch.set_num_threads(4)
        assert lightgbm_threads() == 2 and make_meta_learner("lightgbm", 0).n_jobs == 2
    finally:
        torch.set_num_threads(before)
