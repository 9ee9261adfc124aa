"""Folds, seeds and stack bases fanned out as tasks on a real local Ray (2 CPUs), against the sequential path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from hfstage.cli import main
from hfstage.config import config_from_dict, load_config
from hfstage.errors import ConfigError, StageError
from hfstage.plan import plan
from hfstage.sweeps import run_seeds

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def small(recipe, **fields):
    stages = [{"name": "baseline", "epochs": 1}, {"name": "second", "epochs": 1, "lr": 1e-3}]
    return recipe(stages=stages, **fields)


@pytest.mark.slow
def test_folds_on_ray_write_what_the_sequential_path_writes_and_a_rerun_skips_them(local_ray, recipe, tmp_path):
    path = small(recipe, folds=4)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each Ray task (num_cpus 1): the same arithmetic, so the same numbers
    try:
        run_seeds(load_config(path, [f"output_dir={tmp_path / 'sequential'}"]))
    finally:
        torch.set_num_threads(threads)
    fanned = tmp_path / "ray"
    run_seeds(load_config(path, [f"output_dir={fanned}", "executor.type=ray"]))
    a, b = (json.loads((tmp_path / d / "cv.json").read_text()) for d in ("sequential", "ray"))
    assert a.pop("config")["executor"] == b.pop("config")["executor"] == {"type": "local"}  # the job's, not the runs'
    assert a == b and len(b["per_fold"]) == 4
    for name in ("oof.npy", "oof_ids.npy", "oof_labels.npy", "test_probs.npy"):
        assert np.array_equal(np.load(tmp_path / "sequential" / name), np.load(fanned / name))
    for k in range(4):
        run = json.loads((fanned / f"fold_{k}" / "run.json").read_text())
        assert run["status"] == "finished" and run["config"]["fold"] == k
    stamps = {k: (fanned / f"fold_{k}" / "run.json").stat().st_mtime_ns for k in range(4)}
    run_seeds(load_config(path, [f"output_dir={fanned}", "executor.type=ray"]))  # every unit finished: none retrains
    assert stamps == {k: (fanned / f"fold_{k}" / "run.json").stat().st_mtime_ns for k in range(4)}


@pytest.mark.slow
def test_a_failing_unit_fails_the_job_by_name_while_the_others_finish(local_ray, recipe, tmp_path):
    path = small(recipe, seeds=[1, 2])
    out = tmp_path / "run"
    (out / "seed_2").mkdir(parents=True)  # seed 2's folder holds another run: that unit refuses to start
    (out / "seed_2" / "run.json").write_text(json.dumps({"config": {"task": "x"}, "format_version": 1}))
    with pytest.raises(StageError) as caught:
        run_seeds(load_config(path, ["executor.type=ray"]))
    message = str(caught.value)
    assert message.startswith("executor ray: 1 of 2 unit(s) failed") and f"seed_2 ({out / 'seed_2'}): " in message
    assert json.loads((out / "seed_1" / "run.json").read_text())["status"] == "finished"
    stamp = (out / "seed_1" / "run.json").stat().st_mtime_ns
    (out / "seed_2" / "run.json").unlink()
    (out / "seed_2").rmdir()
    finals = run_seeds(load_config(path, ["executor.type=ray"]))
    assert [f.status for f in finals] == ["finished", "finished"]
    assert (out / "seed_1" / "run.json").stat().st_mtime_ns == stamp  # the finished seed was not trained again


@pytest.mark.slow
def test_a_stacking_job_trains_its_bases_on_ray_then_stacks(local_ray, recipe, tmp_path, capsys):
    base = small(recipe)
    job = tmp_path / "stack.yaml"
    job.write_text(yaml.safe_dump({
        "output_dir": str(tmp_path / "stack"), "executor": {"type": "ray", "resources": {"num_cpus": 1}}, "meta": "mean",
        "bases": [{"name": "cnn_a", "recipe": str(base), "folds": 2, "overrides": ["seed=1"]},
                  {"name": "cnn_b", "recipe": str(base), "folds": 2, "overrides": ["seed=2"]}]}))
    assert main(["train", "--config", str(job)]) == 0
    out = tmp_path / "stack"
    for name in ("cnn_a", "cnn_b"):
        assert (out / name / "oof.npy").is_file() and (out / name / "fold_1" / "stage_2_second").is_dir()
    stacked = json.loads((out / "stack.json").read_text())
    assert stacked["meta_learner"] == "mean" and "mean of probabilities" in {m["method"] for m in stacked["methods"]}


@pytest.mark.slow
def test_auto_with_executor_ray_trains_a_bag_s_folds_as_ray_tasks(local_ray, pair_data, tmp_path, caplog):
    """``hfstage auto --executor ray``: a bag unit's folds go to Ray (its log line), under auto's deadline, and the
    bag answers as one trained sequentially would (cv.json, every fold's run)."""
    import logging

    from hfstage.automl.runner import Auto
    from hfstage.executors.base import executor_spec

    auto = Auto(str(pair_data), 300, None, tmp_path / "auto", None, executor_spec({"type": "ray"}, "--executor"),
                "best", ["data.max_train_samples=200"])
    candidate = auto.portfolio.get("stats_logreg")
    unit, extra = auto.unit(candidate, "bag", 3)
    with caplog.at_level(logging.INFO, logger="hfstage"):
        model = auto.train(candidate, unit, extra, "a bag on Ray")
    assert "executor ray: 3 unit(s)" in caplog.text
    assert model is not None and model.kind == "bag" and (model.path / "cv.json").is_file()
    for k in range(3):
        assert json.loads((model.path / f"fold_{k}" / "run.json").read_text())["status"] == "finished"
    assert json.loads((tmp_path / "auto" / "auto.json").read_text())["decisions"][-1]["action"] == "finished"

    # the deadline travels with the folds (the wall clock every process shares): past it, no fold starts a stage
    auto.train_deadline = auto.clock() - 1
    unit, extra = auto.unit(candidate, "bag", 3, "_late", ["seed=1"])
    assert auto.train(candidate, unit, extra, "a bag past the deadline") is None
    last = json.loads((tmp_path / "auto" / "auto.json").read_text())["decisions"][-1]
    assert last["action"] == "failed" and "the time budget ran out" in last["why"]
    assert not any((model.path.parent / unit.name / f"fold_{k}" / "stage_1_fit").exists() for k in range(3))


def test_executor_settings_are_checked(recipe, tmp_path, capsys):
    path = small(recipe)
    with pytest.raises(ConfigError, match="executor: ray fans out the independent units of a run"):
        load_config(path, ["executor.type=ray"])
    with pytest.raises(ConfigError, match="executor: ray trains every fold side by side"):
        load_config(path, ["executor.type=ray", "folds=2", "fold=1"])
    with pytest.raises(ConfigError, match=r"executor.resources.num_gpu: not a resource a unit can ask for \(did you mean"):
        load_config(path, ["executor={type: ray, resources: {num_gpu: 1}}", "folds=2"])
    with pytest.raises(ConfigError, match=r"executor.resources: unknown argument of executor 'local'; it takes no"):
        load_config(path, ["folds=2", "executor={type: local, resources: {num_cpus: 2}}"])
    with pytest.raises(ConfigError, match=r"executor.type: missing; name the executor \(local, ray\) that takes address"):
        load_config(path, ["folds=2", "executor.address=auto"])
    with pytest.raises(ConfigError, match=r"executor.type: unknown executor 'dask'; choose one of: local, ray"):
        load_config(path, ["executor.type=dask", "folds=2"])
    # the flat keys of before are refused with the new form; a run saved with them is read in the new form
    with pytest.raises(ConfigError, match=r"executor: the executor is a mapping: executor: \{type: ray\}"):
        load_config(path, ["executor=ray", "folds=2"])
    with pytest.raises(ConfigError, match=r"ray_address: belongs to the executor now: executor: \{type: \.\.\., address: auto\}"):
        load_config(path, ["ray_address=auto", "folds=2"])
    with pytest.raises(ConfigError, match=r"resources: belongs to the executor now: executor: \{type: \.\.\., resources: "):
        load_config(path, ["resources={num_cpus: 2}", "folds=2"])
    saved = {**load_config(path, ["folds=2"]).to_dict(), "executor": "local", "ray_address": None, "resources": {}}
    assert config_from_dict(saved).executor == {"type": "local"}
    assert main(["train", "--config", str(path), "--executor", "ray"]) == 2
    assert "executor: ray fans out" in capsys.readouterr().err
    cfg = load_config(path, ["executor={type: ray, resources: {num_cpus: 1, num_gpus: 0.25}}", "folds=2",
                             "executor.address=auto"])
    assert cfg.executor == {"type": "ray", "address": "auto", "resources": {"num_cpus": 1.0, "num_gpus": 0.25}}
    assert "executor ray: each seed/fold a Ray task (num_cpus 1, num_gpus 0.25) on auto" in plan(cfg)
