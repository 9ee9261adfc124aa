"""hfstage auto's budget (#35, first slice): the cost model on hand-made timings, the planner that never starts a
unit which cannot finish, and the deadline stop that keeps a run's last kept stage (and resumes later)."""

import json

import pytest

from hfstage.automl.budget import Budget, CostModel, DeadlineCallback, OutOfTime, Unit, next_unit


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
