"""hfstage auto: the cost model on hand-made timings, the planner that never starts a unit which cannot finish, the
deadline stop that keeps a run's last kept stage, task detection (every form each task takes is checked in
test_conformance, on the very sources the conformance matrix trains on; here the ambiguous and the unknown case),
the portfolio, and a 3-minute auto run on a tiny pair set that resumes, reports and predicts with its ensemble."""

import csv
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from hfstage.automl.budget import Budget, CostModel, DeadlineCallback, OutOfTime, Unit, next_unit
from hfstage.cli import main
from hfstage.errors import ConfigError


class Clock:
    def __init__(self, now: float = 0.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_the_cost_model_learns_from_timed_stages():
    cost = CostModel(prior={"cnn": 1e-3, "resnet": 4e-3}, stage_overhead=2.0)
    cnn = Unit("cnn full", "cnn", "full", [2, 1], samples=1000)
    resnet = Unit("resnet full", "resnet", "full", [1], samples=1000)
    assert cost.estimate(cnn) == pytest.approx(1e-3 * 1000 * 3 + 2 * 2.0)
    # this machine trains the cnn twice as slowly as the portfolio measured, with 0.5 s per stage besides
    cost.observe("cnn", 1000, 1.0, train_seconds=2.0, stage_seconds=2.5)
    cost.observe("cnn", 500, 2.0, train_seconds=2.0, stage_seconds=2.5)
    assert cost.rate("cnn") == pytest.approx(2e-3)
    assert cost.rate("resnet") == pytest.approx(8e-3)  # not timed yet: scaled as the cnn was
    assert cost.estimate(resnet) == pytest.approx(8e-3 * 1000 + 0.5)
    with pytest.raises(KeyError, match="no cost known for recipe 'lgbm'"):
        cost.rate("lgbm")


@pytest.mark.parametrize("left", [1, 5, 30, 90, 300, 1000])
def test_the_planner_never_starts_a_unit_that_cannot_finish(left):
    clock = Clock()
    budget = Budget(left, margin=0.1, clock=clock)
    cost = CostModel(prior={"quick": 1e-3, "full": 1e-2, "bag": 5e-2}, stage_overhead=1.0)
    units = [Unit("quick", "quick", "quick", [1], 2000, value_per_second=3.0),   # ~3 s
             Unit("full", "full", "full", [2, 1, 1], 2000, value_per_second=2.0),  # ~84 s
             Unit("bag", "bag", "bag", [3], 2000, value_per_second=1.0)]       # ~301 s
    chosen, why = next_unit(units, cost, budget)
    fitting = [u for u in units if cost.estimate(u) * 1.1 <= left]
    if not fitting:
        assert chosen is None and why.startswith("nothing fits: the cheapest, quick, needs ~3 s")
    else:
        assert chosen is max(fitting, key=lambda u: u.value_per_second)
        assert cost.estimate(chosen) * 1.1 <= budget.left()
        assert why.startswith(f"training {chosen.name} (est. ")


def test_measured_slowness_stops_a_unit_that_no_longer_fits():
    clock = Clock()
    budget = Budget(100, margin=0.1, clock=clock)
    cost = CostModel(prior={"cnn": 1e-3}, stage_overhead=0.0)
    full = Unit("full", "cnn", "full", [4], 10_000)  # 40 s by the prior
    assert next_unit([full], cost, budget)[0] is full
    clock.now = 40.0  # 60 s left; the quick run measured 3x the prior
    cost.observe("cnn", 2000, 1.0, train_seconds=6.0, stage_seconds=6.0)
    assert cost.estimate(full) == pytest.approx(120.0)
    chosen, why = next_unit([full], cost, budget)
    assert chosen is None and "needs ~120 s, 60 s left" in why


def test_the_stack_keeps_5_percent_of_the_budget_but_never_less_than_a_few_seconds():
    from hfstage.automl.runner import reserve_s

    assert reserve_s(600) == pytest.approx(30.0)  # 5% of 10 minutes
    assert reserve_s(40) == pytest.approx(8.0)  # a stack of two bags took 6 s on a loaded CI: 5% (2 s) was short
    assert reserve_s(15) == pytest.approx(3.75)  # at most a quarter of a tiny budget


def test_a_tiny_estimate_is_recorded_positive():
    from hfstage.automl.runner import estimate_seconds

    assert estimate_seconds(0.0412) == 0.0412 and estimate_seconds(123.456) == 123.0  # a logreg bag took ~0.04 s


@pytest.mark.slow  # two runs of a 3-stage recipe
def test_the_deadline_stops_a_run_after_its_current_stage_and_a_rerun_resumes_it(recipe, tmp_path):
    from hfstage.config import load_config
    from hfstage.curriculum import run
    from hfstage.run_dir import RunDir

    times = iter([0.0, 10.0, 20.0])  # stage 1 begins before the deadline (5), stage 2 after it
    deadline = DeadlineCallback(5.0, clock=lambda: next(times))
    path = recipe()
    with pytest.raises(OutOfTime, match="stage 2 'augmentation' not started: the time budget ran out"):
        run(load_config(path), callbacks=[deadline])
    folder = RunDir(tmp_path / "run")
    records = folder.records()
    assert [r.stage_name for r in records] == ["baseline"] and folder.best().stage_name == "baseline"
    weights = (tmp_path / "run" / "stage_1_baseline" / "model.safetensors").stat().st_mtime_ns
    final = run(load_config(path))  # a larger budget: the rerun trains only what is missing
    assert final.status == "finished" and len(final.stages) == 3
    assert (tmp_path / "run" / "stage_1_baseline" / "model.safetensors").stat().st_mtime_ns == weights
    log = (tmp_path / "run" / "training.log").read_text()
    assert log.count("stage 1/3 'baseline'") == 1 and "stage 1 'baseline' already finished; skipping" in log
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "finished"


def test_progress_is_a_line_per_decision_and_a_budget_bar_on_a_terminal(caplog):
    import io
    import logging

    from hfstage.automl.runner import Progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    clock = Clock()
    budget = Budget(600, clock=clock)
    screen, pipe = Terminal(), io.StringIO()
    clock.now = 150.0
    with caplog.at_level(logging.INFO, logger="hfstage"):
        Progress(budget, screen).line("training cnn_5stage (est. 4.0 min, 7 min left)")
        Progress(budget, pipe).line("training stats_logreg (est. 0.1 min, 7 min left)")
    assert "training cnn_5stage (est. 4.0 min, 7 min left)" in caplog.text
    assert screen.getvalue() == "\r[" + "#" * 7 + " " * 23 + "]  25% of the budget  \n"
    assert pipe.getvalue() == ""  # a log file or a pipe gets the lines only


# --- task detection -------------------------------------------------------------------------------------------------

def _table(folder, columns: dict) -> str:
    import datasets

    folder.mkdir(parents=True)
    datasets.Dataset.from_dict(columns).save_to_disk(str(folder))
    return str(folder)


def test_data_that_could_be_two_kinds_names_both_and_takes_task(tmp_path, capsys):
    """Float arrays in [0, 1] may be grey images or feature sequences: the error says both and asks for --task."""
    from hfstage.automl.detect import detect

    rng = np.random.default_rng(0)
    path = _table(tmp_path / "matrix", {"x": list(rng.random((12, 16, 16), dtype=np.float32)), "label": [0, 1, 2] * 4})
    with pytest.raises(ConfigError, match="could be image_classification or sequence_classification .*Give --task"):
        detect(path)
    found = detect(path, "sequence_classification")
    assert found.task == "sequence_classification" and found.data["columns"] == {"features": "x"}
    assert found.samples == 12
    assert main(["auto", "--data", path, "--budget", "1m", "--out", str(tmp_path / "auto")]) == 2
    assert "could be image_classification or sequence_classification" in capsys.readouterr().err
    assert not (tmp_path / "auto").exists()  # nothing written before the data is understood


@pytest.mark.parametrize("columns, message", [
    ({"a": [1.0, 2.0], "b": [3, 4]}, "no task kind fits"),  # scalars only
    ({"a": ["x.png", "y.png"], "b": ["x.png", "y.png"], "c": ["x.png", "y.png"], "y": [0, 1]}, "no task kind fits"),
])
def test_data_no_kind_fits_is_refused_with_what_each_kind_needs(tmp_path, columns, message):
    from hfstage.automl.detect import detect

    with pytest.raises(ConfigError, match=message) as caught:
        detect(_table(tmp_path / "t", columns))
    assert "pair_classification: two image columns" in str(caught.value) and "Give --task" in str(caught.value)


def test_a_task_that_does_not_fit_the_data_is_refused(sequence_data):
    from hfstage.automl.detect import detect

    with pytest.raises(ConfigError, match="--task pair_classification: .*train.npz does not hold what it needs"):
        detect(str(sequence_data), "pair_classification")
    with pytest.raises(ConfigError, match="unknown task"):
        detect(str(sequence_data), "pairs")


def test_a_metric_the_models_do_not_report_stops_after_the_first_model(pair_data, tmp_path, capsys):
    out = str(tmp_path / "a")
    assert main(["auto", "--data", str(pair_data), "--budget", "2m", "--out", out, "--metric", "auc"]) == 2
    err = capsys.readouterr().err
    assert "--metric auc: the pair_classification models report no eval_auc; choose one of accuracy, f1" in err
    decisions = json.loads((tmp_path / "a" / "auto.json").read_text())["decisions"]
    assert [d["action"] for d in decisions].count("train") == 1


@pytest.mark.parametrize("stack_cv, earned", [(0.92, True), (0.91, False), (0.90, False), (0.87, False)])
def test_the_stack_is_the_answer_only_when_it_beats_the_best_member_beyond_fold_noise(stack_cv, earned):
    """400 samples at 0.9: one standard error is sqrt(0.9 * 0.1 / 400) = 0.015, so 0.92 wins, 0.91 and 0.90 tie
    (the single model stands) and 0.87 loses."""
    from hfstage.automl.runner import stack_earns_it

    result = {"meta_learner": "logreg", "samples": {"meta_train": 400}, "methods": [
        {"method": "base: runs/a", "cv_accuracy": 0.90}, {"method": "base: runs/b", "cv_accuracy": 0.85},
        {"method": "best single (runs/a)", "cv_accuracy": 0.90},
        {"method": "logreg stack", "meta": "logreg", "cv_accuracy": stack_cv, "chosen": True}]}
    chosen, why = stack_earns_it(result)
    assert chosen is earned
    if earned:
        assert why.startswith(f"--meta auto chose logreg: CV accuracy {stack_cv:.4f}") and "noise 0.0150" in why
    else:
        assert "does not beat the best single member's 0.9000 beyond fold noise (0.0150 on 400 samples)" in why


def test_a_refit_on_train_and_eval_is_scored_held_out_bagged_without_it_and_kept_out_of_an_eval_stack(
        recipe, sequence_data, tmp_path):
    """A recipe whose last stage refits on train + eval (sequences_long.yaml's, the portfolio's inception): its eval
    metrics are in-sample, so auto ranks it by the stage it started from, its bags leave the refit out (a fold's
    eval part is its held-out part) and a stack over eval predictions leaves it out."""
    from hfstage.automl.leaderboard import score
    from hfstage.automl.runner import Auto, Model, last_held_out_stage
    from hfstage.config import load_config
    from hfstage.curriculum import run
    from hfstage.run_dir import RunDir

    stages = [{"name": "fit", "epochs": 1}, {"name": "refit", "epochs": 1, "lr": 1e-3, "train_on_eval": True}]
    cfg = load_config(recipe(stages=stages))
    run(cfg)
    folder = RunDir(cfg.output_dir)
    fit, refit = folder.records()
    assert folder.best().dir == refit.dir and refit.extra["trained_on_eval"]
    model = Model("m", "full", "tiny", Path(cfg.output_dir), [], 1.0)
    assert score(model, "accuracy") == fit.metrics["eval_accuracy"]  # held out, not the refit's in-sample figure
    assert score(model, "accuracy", "test") == refit.test_metrics["test_accuracy"]  # the answer is the refit

    auto = Auto(str(sequence_data), 60, None, tmp_path / "auto", None, None, "best", [])
    inception = auto.portfolio.get("inception")
    full = auto.config(inception, "inception")
    assert full.stages[-1].train_on_eval and last_held_out_stage(full.stages) == "augmentation"  # searched through
    unit, extra = auto.unit(inception, "bag", 3)
    assert "stages.polishing.train_on_eval=false" in extra
    assert not any(s.train_on_eval for s in auto.config(inception, unit.name, extra).stages)
    assert auto._refitted(model) and not auto._refitted(Model("b", "bag", "tiny", tmp_path, [], 1.0))


@pytest.mark.slow  # a few small units
def test_preset_quick_trains_the_portfolio_quickly_then_only_the_best_in_full(pair_data, tmp_path, capsys, hub):
    out = tmp_path / "quick"
    assert main(["auto", "--data", str(pair_data), "--budget", "1m", "--out", str(out), "--preset", "quick"]) == 0
    state = json.loads((out / "auto.json").read_text())
    kinds = [r["kind"] for r in csv.DictReader(open(out / "leaderboard.csv"))]
    assert "quick" in kinds and "bag" not in kinds and "search" not in kinds and "stack" not in kinds
    started = [d["unit"] for d in state["decisions"] if d["action"] == "train"]
    # estimators on 320 samples train in full in the quick phase; after it, at most the best recipe in full
    assert len([u for u in started if f"{u}_quick" in started]) <= 1
    rows = list(csv.DictReader(open(out / "leaderboard.csv")))
    [answer] = [r for r in rows if r["final"] == "True"]
    assert state["final"]["kind"] == "model" and answer["kind"] == "full"
    assert float(answer["eval_accuracy"]) == max(float(r["eval_accuracy"]) for r in rows if r["kind"] == "full")
    # its one model is the answer that is pushed, pulled and predicts the same
    assert main(["predict", str(out), "--data", str(pair_data), "--out", str(tmp_path / "p.csv")]) == 0
    push_pull_predict(out, tmp_path, pair_data, "tester/auto-quick", (tmp_path / "p.csv").read_text(), capsys)


# --- the portfolio --------------------------------------------------------------------------------------------------

def test_every_portfolio_recipe_builds_and_the_portfolio_is_ordered_by_score_per_second(tmp_path):
    from hfstage.automl.portfolio import read_portfolios
    from hfstage.config import build_run_config
    from hfstage.stage_search.settings import search_block
    from hfstage.tasks import TASKS

    portfolios = read_portfolios()
    assert set(portfolios) == set(TASKS.names()) - {"tabular_classification"}
    for task, portfolio in portfolios.items():
        assert portfolio.measured and portfolio.recommended in portfolio.names()
        assert len(set(portfolio.names())) == len(portfolio.names())
        values = [c.value for c in portfolio.candidates]
        assert values == sorted(values, reverse=True)
        for c in portfolio.candidates:
            raw = {**c.raw(), "data": {"path": str(tmp_path)}, "output_dir": str(tmp_path / c.name)}
            search_block(raw.get("search"), f"{task}.{c.name}.search")
            cfg = build_run_config(raw, f"{task}.{c.name}")
            assert cfg.task == task and c.rate > 0 and 0 < c.score <= 1
    with pytest.raises(ConfigError, match="needs exactly name, score, seconds, rate, recipe"):
        read_portfolios("pair_classification: {recommended: a, measured: m, candidates: [{name: a, score: 1}]}")


# --- end to end ---------------------------------------------------------------------------------------------------

@pytest.mark.slow  # a 3-minute budget, spent in two runs
def test_auto_on_a_tiny_pair_set_resumes_reports_and_predicts_with_its_ensemble(pair_data, tmp_path, capsys, hub):
    out = tmp_path / "auto"
    began = time.monotonic()
    small = "data.max_train_samples=200"  # an override every recipe gets (and part of what the rerun must repeat)
    assert main(["auto", "--data", str(pair_data), "--budget", "40s", "--out", str(out), small]) == 0
    first = json.loads((out / "auto.json").read_text())
    trained = {d["unit"] for d in first["decisions"] if d["action"] == "finished"}
    assert trained and first["spent_s"] <= 40 * 1.1
    weights = {p: p.stat().st_mtime_ns for p in (out / "models").rglob("model.safetensors")}
    assert weights

    # the same command with a larger budget continues: nothing finished retrains, the total stays in the budget
    assert main(["auto", "--data", str(pair_data), "--budget", "3m", "--out", str(out), small]) == 0
    wall = time.monotonic() - began
    state = json.loads((out / "auto.json").read_text())
    assert state["spent_s"] <= 180 * 1.1 and wall <= 180 * 1.1 + 30  # + two start-ups of the command
    assert all(p.stat().st_mtime_ns == t for p, t in weights.items())
    again = state["decisions"][len(first["decisions"]):]
    assert {d["unit"] for d in again if d["action"] == "reuse"} >= {u for u in trained if not u.endswith("_quick")} - {
        d["unit"] for d in again if d["action"] == "finished"}
    # (a search resumes its study with the trials the larger budget adds; its finished trials stay: test_search)
    retrained = {d["unit"] for d in again if d["action"] == "finished"}
    assert not retrained & {u for u in trained if not u.endswith("_search")}
    for d in state["decisions"]:  # every start was estimated, and fitted the time left; its actual time recorded
        if d["action"] == "train":
            assert d["estimate_s"] > 0 and "min left" in d["why"]
        if d["action"] == "finished" and d["unit"] and not d["unit"].endswith("_search"):
            assert d["actual_s"] > 0 and d["estimate_s"] > 0

    with open(out / "leaderboard.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["model", "kind", "recipe", "overrides", "eval_accuracy", "test_accuracy", "fit_seconds",
                             "predict_ms_per_sample", "stack_weight", "final"]
    assert sum(r["final"] == "True" for r in rows) == 1
    assert {"quick", "full", "search", "bag"} <= {r["kind"] for r in rows}  # every phase had its turn
    final = state["final"]
    printed = capsys.readouterr().out
    assert f"answer: {final['name']}" in printed
    if final["kind"] == "stack":
        stack_row = rows[0]
        assert stack_row["kind"] == "stack" and stack_row["final"] == "True"
        members = [r for r in rows if r["stack_weight"] and r["kind"] != "stack"]
        assert len(members) >= 2 and sum(float(r["stack_weight"]) for r in members) == pytest.approx(1.0, abs=1e-6)
    card = (out / "README.md").read_text()
    assert f"**Answer: {final['name']}**" in card and all(f"| {r['model']} | {r['kind']} |" in card for r in rows)
    models = [r for r in rows if r["kind"] != "stack"]
    assert all(r["eval_accuracy"] and r["test_accuracy"] and float(r["predict_ms_per_sample"]) > 0 for r in models)

    # the answer predicts new data and evaluates like any run or stack
    assert main(["predict", str(out), "--data", str(pair_data), "--out", str(tmp_path / "p.csv")]) == 0
    predicted = capsys.readouterr().out
    assert main(["evaluate", str(out), "--split", "test", "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert f"accuracy {evaluated['metrics']['accuracy']:.4f}" in predicted
    lines = (tmp_path / "p.csv").read_text().splitlines()
    assert len(lines) == 161 and lines[0].startswith("id,label,prediction")
    best_row = next(r for r in rows if r["final"] == "True")
    assert float(best_row["test_accuracy"]) == pytest.approx(evaluated["metrics"]["accuracy"], abs=1e-6)
    push_pull_predict(out, tmp_path, pair_data, "tester/auto-pairs", (tmp_path / "p.csv").read_text(), capsys)


def push_pull_predict(out, tmp_path, data, repo_id, predictions: str, capsys) -> None:
    """``hfstage push`` of an auto folder sends its answer and card; ``hfstage pull`` gives back a folder that
    predicts the same, wherever it lands."""
    from huggingface_hub import HfApi

    final = json.loads((out / "auto.json").read_text())["final"]
    assert main(["push", str(out), "--repo-id", repo_id, "--stage", "2"]) == 2  # an answer goes whole
    assert main(["push", str(out), "--repo-id", repo_id]) == 0
    assert f"{out} -> {repo_id} @" in capsys.readouterr().out
    remote = set(HfApi().list_repo_files(repo_id))
    assert {"README.md", "auto.json", "leaderboard.csv"} <= remote
    answer = Path(final["path"])
    members = [answer / d["reference"] for d in json.loads((answer / "stack_meta.json").read_text())["base_models"]
               ] if final["kind"] == "stack" else [answer]  # a search trial's run lives outside models/
    used = {m.resolve().relative_to(out.resolve()).as_posix() for m in members}
    folders = used | ({answer.resolve().relative_to(out.resolve()).as_posix()} if final["kind"] == "stack" else set())
    assert all(any(f.startswith(u + "/") for f in remote) for u in used)  # each member is sent
    assert all(any(f.startswith(u + "/") for u in folders) for f in remote if "/" in f)  # the answer only
    assert not any("/checkpoints/" in f or f.endswith("training.log") for f in remote)
    pulled = tmp_path / "elsewhere" / "pulled"
    assert main(["pull", repo_id, "--out", str(pulled)]) == 0
    capsys.readouterr()
    shutil.rmtree(out)  # nothing of the pulled answer points back at the original folder
    assert main(["predict", str(pulled), "--data", str(data), "--out", str(tmp_path / "pulled.csv")]) == 0
    assert (tmp_path / "pulled.csv").read_text() == predictions
    assert json.loads((pulled / "auto.json").read_text())["final"]["name"] == final["name"]
