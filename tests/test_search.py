"""hfstage search (#34): the space parser, the flags and the search: block, one stage searched from a base trained
once, pruning, resume after a killed trial, best.yaml, the greedy all mode, and trials side by side on Ray."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from hfstage.cli import main
from hfstage.errors import ConfigError
from hfstage.stage_search.settings import SearchSettings, parse_duration, search_block
from hfstage.stage_search.space import Dist, parse_dist, parse_space

import optuna  # noqa: E402  (the search extra; make test installs it)

TWO_STAGES = [{"name": "baseline", "epochs": 1}, {"name": "finetune", "epochs": 2, "lr": 1e-3}]


# --------------------------------------------------------------------------------------------------
# The space


@pytest.mark.parametrize("text, dist", [
    ("loguniform(1e-5,1e-2)", Dist("loguniform", (1e-5, 1e-2))),
    ("uniform(0, 0.5)", Dist("uniform", (0.0, 0.5))),
    ("int(0,20)", Dist("int", (0, 20))),
    ("int(3,3)", Dist("int", (3, 3))),
    ("choice(32,64,128)", Dist("choice", (32, 64, 128))),
    ("choice(adamw_torch, sgd, 1e-3, true)", Dist("choice", ("adamw_torch", "sgd", 1e-3, True))),
])
def test_every_distribution_parses(text, dist):
    assert parse_dist(text, "--space k") == dist
    assert parse_dist(dist.text, "--space k") == dist  # the text recorded in the study reads back the same


@pytest.mark.parametrize("text, message", [
    ("normal(0,1)", "unknown distribution 'normal'"),
    ("logunifrom(1e-5,1e-2)", "did you mean 'loguniform'"),
    ("0.1", "is not a distribution"),
    ("uniform(0)", "takes two numbers, LOW and HIGH; got 1"),
    ("uniform(0,1,2)", "got 3"),
    ("uniform(a,1)", "takes numbers, got 'a'"),
    ("uniform(0,inf)", "takes numbers"),
    ("uniform(1,1)", "empty range"),
    ("uniform(2,1)", "empty range"),
    ("loguniform(0,1)", "needs 0 < LOW"),
    ("int(5,2)", "empty range"),
    ("int(0.5,2)", "takes integers"),
    ("choice()", "choice() is empty"),
    ("choice(1,1)", "names a value twice"),
    ("choice(1,[2])", "numbers, strings or booleans"),
])
def test_every_bad_distribution_is_refused(text, message):
    with pytest.raises(ConfigError, match=None) as info:
        parse_dist(text, "--space k")
    assert message in str(info.value) and str(info.value).startswith("--space k: ")


def test_space_items_and_mapping():
    assert parse_space(["lr=loguniform(1e-5,1e-2)", "loss.gamma=uniform(0,5)"]) == parse_space(
        {"lr": "loguniform(1e-5,1e-2)", "loss.gamma": "uniform(0,5)"})
    for bad, message in ((["lr"], "expected KEY=DIST"), (["lr=uniform(0,1)", "lr=uniform(0,2)"], "given twice"),
                         (["=uniform(0,1)"], "empty key"), (["a..b=uniform(0,1)"], "empty key")):
        with pytest.raises(ConfigError, match=message):
            parse_space(bad)


def test_durations_and_the_search_block():
    assert [parse_duration(t, "x") for t in ("90", "90s", "15m", "2h", "1h30m", "1.5m")] == [90, 90, 900, 7200, 5400, 90]
    for bad in ("soon", "0s", "-5m", ""):
        with pytest.raises(ConfigError, match="x: "):
            parse_duration(bad, "x")
    assert search_block({"trials": 5, "space": {"lr": "uniform(0.1,1)"}}, "search") == {
        "trials": 5, "space": {"lr": "uniform(0.1,1)"}}
    for block, message in (({"trails": 5}, "search.trails: unknown argument of search.*did you mean 'trials'"),
                           ({"trials": 0}, "search.trials: 0 must be an integer >= 1"),
                           ({"pruner": "asha"}, "search.pruner: 'asha' is not a pruner"),
                           ({"space": {"lr": "uniform(1,0)"}}, "search.space lr: uniform.*empty range"),
                           ({"timeout": "later"}, "search.timeout: 'later' is not a duration"),
                           ({"executor": {"type": "slurm"}}, "search.executor.type: unknown executor 'slurm'")):
        with pytest.raises(ConfigError, match=message):
            search_block(block, "search")
    merged = SearchSettings(trials=5, space={"lr": "uniform(0.1,1)"}).merged(trials=7, space={"dropout": "uniform(0,0.5)"},
                                                                             metric=None)
    assert merged.trials == 7 and merged.space == {"lr": "uniform(0.1,1)", "dropout": "uniform(0,0.5)"}


@pytest.mark.parametrize("args, message", [
    (["finetune", "--space", "nope=uniform(0,1)"], "--space nope=uniform(0,1): the value 0.0 is refused: .*unknown"),
    (["finetune", "--space", "lr=uniform(0,1)"], "--space lr=uniform(0,1): the value 0.0 is refused: .*lr"),
    (["finetune", "--space", "augmentation.rotate=int(0,20)", "--space", "lr=unifrom(0,1)"], "did you mean 'uniform'"),
    (["finetune", "--space", "lr=loguniform(1e-2,1e-5)"], "empty range"),
    (["finetune", "--space", "model.dropout=uniform(0,0.5)"], "model fields are searched with stage 1 only"),
    (["finetune", "--space", "training_args.warmup_stepz=int(0,5)"], "warmup_stepz"),
    (["finetune"], "nothing to search"),
    (["polish", "--space", "lr=uniform(0.1,1)"], "STAGE: 'polish' is not a stage of the recipe"),
    (["2", "--space", "lr=uniform(0.1,1)", "--through", "1"], "comes before the searched stage"),
    (["1", "--space", "lr=uniform(0.1,1)", "--from", "x"], "stage 1 starts from nothing"),
    (["2", "--space", "lr=uniform(0.1,1)", "--timeout", "soon"], "is not a duration"),
])
def test_bad_searches_exit_2_before_anything_trains(recipe, tmp_path, capsys, args, message):
    path = recipe(TWO_STAGES)
    assert main(["search", "--config", str(path), *args]) == 2
    err = capsys.readouterr().err
    at = 0
    for part in message.split(".*"):  # the parts, in this order
        assert part in err[at:], (part, err)
        at = err.index(part, at) + len(part)
    assert not (tmp_path / "run").exists()  # no base trained, no study written


def test_model_fields_and_training_args_are_searchable_where_they_apply(recipe, tmp_path):
    from hfstage.stage_search.runner import check_space, load_recipe

    spec = load_recipe(recipe([{**TWO_STAGES[0], "loss": "focal"}, TWO_STAGES[1]]))
    with pytest.raises(ConfigError, match="loss.gamma=uniform.*unknown argument of loss 'cross_entropy'"):
        check_space(spec, 2, parse_space(["loss.gamma=uniform(0,5)"]))  # stage 2 trains with cross-entropy
    check_space(spec, 1, parse_space(["model.dropout=uniform(0,0.5)", "training_args.adam_beta2=uniform(0.9,0.999)",
                                      "loss.gamma=uniform(0,5)", "augmentation.rotate=int(0,20)",
                                      "batch_size=choice(16,32)", "epochs=int(1,3)"]))


# --------------------------------------------------------------------------------------------------
# A search


def _trial_numbers(out: Path) -> list[int]:
    return sorted(int(p.name.split("_")[1]) for p in out.glob("trial_*"))


def test_three_trials_of_one_stage_train_the_base_once_and_best_yaml_reproduces_the_best(recipe, tmp_path, capsys):
    path = recipe(TWO_STAGES)
    assert main(["search", "--config", str(path), "finetune", "--trials", "3", "--space", "lr=loguniform(1e-4,1e-2)",
                 "--pruner", "none"]) == 0
    table = capsys.readouterr().out
    out = tmp_path / "run" / "search_finetune"
    base = out / "base"
    assert [p.name for p in base.glob("stage_*")] == ["stage_1_baseline"]
    assert _trial_numbers(out) == [0, 1, 2]
    base_weights = next((base / "stage_1_baseline").glob("*.safetensors"))
    for k in range(3):
        trial = out / f"trial_{k}"
        copied = trial / "stage_1_baseline" / base_weights.name
        assert copied.stat().st_ino == base_weights.stat().st_ino  # linked, not trained again
        log = (trial / "training.log").read_text()
        assert "stage 1 'baseline' already finished; skipping" in log and "stage 2/2 'finetune'" in log
        record = json.loads((trial / "stage_2_finetune" / "stage.json").read_text())
        assert record["started_from"] == "stage_1_baseline"
        assert record["test_metrics"] == {}  # trials never look at the test split
    assert (base / "training.log").read_text().count("stage 1/1 'baseline'") == 1

    rows = list(__import__("csv").DictReader((out / "trials.csv").open()))
    assert [r["trial"] for r in rows] == ["0", "1", "2"] and {r["state"] for r in rows} == {"complete"}
    lrs = [float(r["lr"]) for r in rows]
    assert len(set(lrs)) == 3 and all(1e-4 <= lr <= 1e-2 for lr in lrs)
    for r in rows:  # the table's metric is the trial's stage metric
        record = json.loads((out / f"trial_{r['trial']}" / "stage_2_finetune" / "stage.json").read_text())
        assert float(r["eval_loss"]) == pytest.approx(record["metrics"]["eval_loss"], rel=1e-5)
        assert record["stage_config"]["lr"] == pytest.approx(float(r["lr"]), rel=1e-5)
    best = min(rows, key=lambda r: float(r["eval_loss"]))
    assert "trial" in table and "pruned_at_step" in table and f"{float(best['eval_loss']):.6g}" in table
    tested = json.loads((out / f"trial_{best['trial']}" / "stage_2_finetune" / "eval" / "test.json").read_text())
    assert (f"best trial {best['trial']}: stage_2_finetune eval_loss = {float(best['eval_loss']):.6g}; on the test "
            f"split (evaluated once): test_loss = {tested['metrics']['loss']:.6g}") in table
    for name in ("history.png", "importance.png", "study.db"):
        assert (out / name).stat().st_size > 0

    best_yaml = yaml.safe_load((out / "best.yaml").read_text())
    assert best_yaml["stages"][1]["lr"] == pytest.approx(float(best["lr"]), rel=1e-9)
    assert best_yaml["stages"][0] == TWO_STAGES[0] and "search" not in best_yaml
    assert main(["train", "--config", str(out / "best.yaml")]) == 0
    again = json.loads((out / "best" / "stage_2_finetune" / "stage.json").read_text())
    assert again["metrics"]["eval_loss"] == pytest.approx(float(best["eval_loss"]), abs=1e-6)

    # a rerun of the same command continues the study: nothing to do, nothing retrained
    assert main(["search", "--config", str(path), "finetune", "--trials", "3", "--space", "lr=loguniform(1e-4,1e-2)",
                 "--pruner", "none"]) == 0
    assert _trial_numbers(out) == [0, 1, 2]
    # another space, or another base, is refused with the difference named
    assert main(["search", "--config", str(path), "finetune", "--trials", "4", "--space", "lr=loguniform(1e-3,1e-2)",
                 "--pruner", "none"]) == 2
    assert "space.lr: 'loguniform(0.0001,0.01)' -> 'loguniform(0.001,0.01)'" in capsys.readouterr().err
    assert main(["search", "--config", str(path), "finetune", "--trials", "4", "--space", "lr=loguniform(1e-4,1e-2)",
                 "stages.baseline.lr=0.01"]) == 2
    assert "stages.1.lr: 0.003 -> 0.01" in capsys.readouterr().err
    assert main(["search", "--config", str(path), "finetune", "--trials", "4", "--space", "lr=loguniform(1e-4,1e-2)",
                 "seed=1", f"--from={out / 'trial_0'}", f"--out={tmp_path / 'other'}"]) == 2
    assert "that run differs from the recipe beyond its stages (seed: 0 -> 1)" in capsys.readouterr().err
    assert _trial_numbers(out) == [0, 1, 2] and not (tmp_path / "other").exists()


def test_a_hopeless_trial_is_pruned_and_kept(recipe, tmp_path):
    """Two good learning rates queued first, then one that cannot learn: the median pruner stops it at its first
    evaluation (worse than both finished trials there); the trial is recorded as pruned, its folder kept."""
    import hfstage

    path = recipe([{"name": "baseline", "epochs": 1}, {"name": "finetune", "epochs": 3, "lr": 1e-3}])
    out = tmp_path / "search"
    out.mkdir()
    study = optuna.create_study(storage=f"sqlite:///{out / 'study.db'}", study_name="hfstage-stage_2_finetune",
                                direction="minimize")
    for lr in (3e-3, 5e-3, 1e-8):
        study.enqueue_trial({"lr": lr})
    result = hfstage.search(str(path), "finetune", space={"lr": "loguniform(1e-8,1e-2)"}, trials=3, out=str(out),
                            pruner="median")
    states = {r.trial: r.state for r in result.rows}
    assert states == {0: "complete", 1: "complete", 2: "pruned"}, result.rows
    pruned = result.rows[2]
    assert pruned.params["lr"] == 1e-8 and pruned.pruned_at_step is not None
    record = json.loads((out / "trial_2" / "stage_2_finetune" / "stage.json").read_text())
    assert record["global_steps"] == pruned.pruned_at_step < json.loads(
        (out / "trial_0" / "stage_2_finetune" / "stage.json").read_text())["global_steps"]
    assert result.best.trial in (0, 1)
    assert "pruned" in (out / "trials.csv").read_text()


@pytest.mark.slow
def test_a_killed_trial_is_marked_failed_and_retried_once_on_rerun(recipe, tmp_path):
    path = recipe([{"name": "baseline", "epochs": 1}, {"name": "finetune", "epochs": 15, "lr": 1e-3}])
    out = tmp_path / "search"
    cmd = [sys.executable, "-m", "hfstage", "search", "--config", str(path), "finetune", "--trials", "2", "--space",
           "lr=loguniform(1e-4,1e-2)", "--pruner", "none", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 180
    log = out / "trial_1" / "training.log"
    while time.time() < deadline and not (log.is_file() and "stage_2_finetune step" in log.read_text()):
        time.sleep(0.2)
    assert log.is_file(), "trial 1 never started"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    base_record = (out / "base" / "stage_1_baseline" / "stage.json").read_text()

    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "trial 1 was left running by a process that stopped; marked failed, retried once" in done.stderr
    rows = list(__import__("csv").DictReader((out / "trials.csv").open()))
    assert [(r["trial"], r["state"]) for r in rows] == [("0", "complete"), ("1", "failed"), ("2", "complete")]
    assert rows[2]["lr"] == rows[1]["lr"]
    assert (out / "base" / "stage_1_baseline" / "stage.json").read_text() == base_record  # not retrained


def test_all_stages_greedily_make_a_run_of_the_best_trials(recipe, tmp_path, capsys):
    path = recipe(TWO_STAGES)
    out = tmp_path / "all"
    assert main(["search", "--config", str(path), "all", "--trials-per-stage", "2", "--space",
                 "lr=loguniform(1e-4,1e-2)", "--pruner", "none", "--out", str(out)]) == 0
    first = list(__import__("csv").DictReader((out / "search_baseline" / "trials.csv").open()))
    second = list(__import__("csv").DictReader((out / "search_finetune" / "trials.csv").open()))
    assert len(first) == len(second) == 2
    best1 = min(first, key=lambda r: float(r["eval_loss"]))
    best2 = min(second, key=lambda r: float(r["eval_loss"]))
    run = json.loads((out / "run" / "run.json").read_text())
    assert run["status"] == "finished" and [s["dir"] for s in run["stages"]] == ["stage_1_baseline",
                                                                                        "stage_2_finetune"]
    assert run["config"]["stages"][0]["lr"] == pytest.approx(float(best1["lr"]), rel=1e-5)
    assert run["config"]["stages"][1]["lr"] == pytest.approx(float(best2["lr"]), rel=1e-5)
    # stage 2's trials started from stage 1's best trial
    linked = out / "search_finetune" / f"trial_{best2['trial']}" / "stage_1_baseline" / "model.safetensors"
    best1_weights = out / "search_baseline" / f"trial_{best1['trial']}" / "stage_1_baseline" / "model.safetensors"
    assert linked.stat().st_ino == best1_weights.stat().st_ino
    best_yaml = yaml.safe_load((out / "best.yaml").read_text())
    assert [s["lr"] for s in best_yaml["stages"]] == pytest.approx([float(best1["lr"]), float(best2["lr"])], rel=1e-9)
    capsys.readouterr()
    assert main(["evaluate", str(out / "run")]) == 0
    assert "test" in capsys.readouterr().out


@pytest.mark.slow
def test_two_trials_side_by_side_on_a_local_ray(recipe, tmp_path):
    ray = pytest.importorskip("ray")
    import hfstage

    path = recipe([{"name": "baseline", "epochs": 1}, {"name": "finetune", "epochs": 6, "lr": 1e-3}])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        result = hfstage.search(str(path), "finetune", space=["lr=loguniform(1e-4,1e-2)"], trials=2, pruner="none",
                                out=str(tmp_path / "search"), executor={"type": "ray"})
    finally:
        ray.shutdown()
    assert [r.state for r in result.rows] == ["complete", "complete"]
    spans = []
    for row in result.rows:
        lines = (Path(row.folder) / "training.log").read_text().splitlines()
        stamps = [line[:8] for line in lines if "'finetune'" in line]
        spans.append((stamps[0], stamps[-1]))
    (a0, a1), (b0, b1) = spans
    assert a0 <= b1 and b0 <= a1, spans  # the two trials trained at the same time


def test_every_trial_is_a_tracker_run_grouped_under_the_search(recipe, tmp_path, monkeypatch):
    import hfstage
    import mlflow

    store = tmp_path / "mlruns"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.as_uri())
    path = recipe(TWO_STAGES, report_to=["mlflow", "tensorboard"], project="demo")
    hfstage.search(str(path), "finetune", space=["lr=loguniform(1e-4,1e-2)"], trials=2, pruner="none",
                   out=str(tmp_path / "search"))
    mlflow.set_tracking_uri(store.as_uri())
    runs = mlflow.search_runs(experiment_names=["demo-search-finetune"], output_format="list")
    assert sorted(r.info.run_name for r in runs) == ["search-base", "search-trial_0", "search-trial_1"]
    for k in range(2):  # and TensorBoard, pointed at the search folder, shows each trial
        assert list((tmp_path / "search" / f"trial_{k}" / "logs").glob("events.out.tfevents.*"))


def test_a_recipe_search_block_from_a_finished_run_through_a_later_stage(recipe, finished_run, tmp_path):
    """The recipe's search: block (metric eval_accuracy, a journal-file storage, --through) with --from a finished
    run: no base is trained, each trial trains the searched stage and the one after it, the best trial is the one
    with the highest accuracy over those two stages."""
    import hfstage

    journal = tmp_path / "journal.log"
    path = recipe([*TWO_STAGES[:1], {"name": "finetune", "epochs": 1, "lr": 1e-3}, {"name": "polish", "epochs": 1,
                                                                                       "lr": 3e-4}],
                  search={"trials": 2, "space": {"lr": "loguniform(1e-4,1e-2)"}, "pruner": "none",
                          "metric": "eval_accuracy", "through": "polish", "storage": f"journal:{journal}"})
    out = tmp_path / "search"
    result = hfstage.search(str(path), "finetune", from_run=str(finished_run), out=str(out))
    assert not (out / "base").exists() and not (out / "study.db").exists() and journal.stat().st_size > 0
    weights = finished_run / "stage_1_baseline" / "model.safetensors"
    for k in (0, 1):
        trial = out / f"trial_{k}"
        assert (trial / "stage_1_baseline" / "model.safetensors").stat().st_ino == weights.stat().st_ino
        assert (trial / "stage_3_polish" / "stage.json").is_file()
    accuracies = {r.trial: max(json.loads((out / f"trial_{r.trial}" / d / "stage.json").read_text())["metrics"]
                               ["eval_accuracy"] for d in ("stage_2_finetune", "stage_3_polish")) for r in result.rows}
    assert {r.trial: r.metric for r in result.rows} == pytest.approx(accuracies)
    assert result.best.trial == max(accuracies, key=accuracies.get) and result.metric == "eval_accuracy"
    study = optuna.load_study(study_name="hfstage-stage_2_finetune", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))))
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE and len(study.trials) == 2


def test_no_trial_starts_after_the_timeout(recipe, tmp_path):
    import hfstage

    # a trial outlasts half a second on any machine (30 epochs of the tiny set: 2.0 s on an idle 2-core one; 8 took
    # under 1 s there, so the first trial ended before a 1 s timeout and a second one started)
    path = recipe([TWO_STAGES[0], {"name": "finetune", "epochs": 30, "lr": 1e-3}])
    result = hfstage.search(str(path), "finetune", space=["lr=loguniform(1e-4,1e-2)"], trials=5,
                            timeout="0.5s", pruner="none", out=str(tmp_path / "search"))
    assert [r.state for r in result.rows] == ["complete"]  # none starts after the first


def test_a_metric_no_stage_records_stops_the_search_after_one_trial(recipe, tmp_path, capsys):
    path = recipe(TWO_STAGES)
    assert main(["search", "--config", str(path), "finetune", "--space", "lr=loguniform(1e-4,1e-2)", "--trials", "3",
                 "--metric", "auc", "--pruner", "hyperband", "--out", str(tmp_path / "s")]) == 2
    assert "--metric eval_auc: not among the stage metrics (eval_accuracy, eval_f1, eval_loss" in capsys.readouterr().err
    assert _trial_numbers(tmp_path / "s") == [0]
