"""Plug-ins from outside packages: tests/fixtures/hfstage_tabular (a tabular classification task and an MLP, declared
as entry points) trains with stages, evaluates and stacks through the ``hfstage`` command without a line of hfstage
changed; a plug-in that fails to load is reported once and the rest keeps working, and a recipe naming its part
exits 2 naming the package and its error. The packages are put on sys.path with their entry points (a dist-info
folder beside them, as pip would write), in the subprocesses only."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "hfstage_tabular"
pytestmark = pytest.mark.slow  # every check is a fresh `python -m hfstage` process


def _dist_info(site: Path, name: str, version: str, groups: dict[str, dict[str, str]]) -> None:
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in entries.items()) + "\n" for group, entries in groups.items()))


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """hfstage-tabular as installed (its package and its entry points), and hfstage-broken, whose task cannot load."""
    site = tmp_path_factory.mktemp("site")
    shutil.copytree(FIXTURE / "hfstage_tabular", site / "hfstage_tabular")
    project = tomllib.loads((FIXTURE / "pyproject.toml").read_text())["project"]
    _dist_info(site, project["name"], project["version"], project["entry-points"])
    _dist_info(site, "hfstage-broken", "0.1.0", {"hfstage.tasks": {"broken_task": "hfstage_broken_missing.task:Task"}})
    (site / "hfstage_extras.py").write_text(EXTRAS)
    _dist_info(site, "hfstage-extras", "0.1.0", {"hfstage.steps": {"stamp": "hfstage_extras:Stamp"},
                                                 "hfstage.executors": {"journal": "hfstage_extras:JournalExecutor"}})
    return site


# a stage step and an executor from an outside package: the step stamps the record of every stage whose
# description asks for it; the executor trains the units here, in turn, and writes down each one it ran
EXTRAS = """
from pathlib import Path

from hfstage.executors.base import Executor
from hfstage.steps.base import StageStep


class Stamp(StageStep):
    @classmethod
    def applies(cls, stage):
        return "stamp" in stage.description

    def on_record(self, ctx, trainer, record):
        record.extra["stamped_by"] = "hfstage-extras"


class JournalExecutor(Executor):
    name = "journal"

    def __init__(self, journal: str = "units.txt"):
        self.journal = journal

    def run(self, units, callbacks=()):
        from hfstage.curriculum import run

        for unit in units:
            with open(self.journal, "a") as f:
                f.write(unit.name + "\\n")
            run(unit.cfg, unit.config_file, [*callbacks, *unit.callbacks])
"""


@pytest.fixture(scope="module")
def wine(tmp_path_factory) -> Path:
    """scikit-learn's wine set (178 samples, 13 measurements, 3 cultivars) as train/validation/test CSV files."""
    import numpy as np
    from sklearn.datasets import load_wine

    data = load_wine(as_frame=True).frame.rename(columns={"target": "cultivar"})
    data["cultivar"] = data["cultivar"].map({0: "barolo", 1: "grignolino", 2: "barbera"})
    order = np.random.default_rng(0).permutation(len(data))
    folder = tmp_path_factory.mktemp("wine")
    for split, rows in (("train", order[:106]), ("validation", order[106:142]), ("test", order[142:])):
        data.iloc[rows].to_csv(folder / f"{split}.csv", index=False)
    return folder


def _hfstage(site: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    return subprocess.run([sys.executable, "-m", "hfstage", *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=600)


def _recipe(path: Path, data: Path, out: Path, task: str = "tabular_classification", seed: int = 0) -> Path:
    path.write_text(yaml.safe_dump({
        "task": task, "output_dir": str(out), "seed": seed, "report_to": ["none"],
        "data": {"path": str(data), "columns": {"label": "cultivar"}},
        "model": {"type": "tabular_mlp", "hidden_dim": 32}, "metric_for_best_model": "eval_accuracy",
        "defaults": {"batch_size": 16, "eval_batch_size": 64},
        "stages": [{"name": "baseline", "epochs": 15, "lr": 3e-3},
                   {"name": "finetune", "epochs": 5, "lr": 5e-4, "freeze_patterns": ["body.0.*"]}],
    }))
    return path


def test_an_outside_task_and_model_train_evaluate_and_stack_through_the_command_line(site, wine, tmp_path):
    runs = []
    for seed in (0, 1):
        out = tmp_path / f"run_{seed}"
        proc = _hfstage(site, "train", "--config", str(_recipe(tmp_path / f"r{seed}.yaml", wine, out, seed=seed)),
                        cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        # the broken package is reported once, by name and error, and training goes on
        assert proc.stderr.count("plug-in task 'broken_task' from package hfstage-broken failed to load "
                                 "(ModuleNotFoundError: No module named 'hfstage_broken_missing')") == 1
        run = json.loads((out / "run.json").read_text())
        assert run["status"] == "finished" and [s["status"] for s in run["stages"]] == ["finished"] * 2
        best = json.loads((out / run["best_stage_dir"] / "stage.json").read_text())
        assert best["test_metrics"]["test_accuracy"] >= 0.7  # 3 cultivars: chance is 0.4
        config = json.loads((out / "stage_2_finetune" / "config.json").read_text())
        assert config["model_type"] == "hfstage_tabular_mlp" and set(config["id2label"].values()) == {
            "barolo", "grignolino", "barbera"}
        runs.append((out, best))
    out, best = runs[0]
    proc = _hfstage(site, "evaluate", str(out), "--split", "test", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["metrics"]["accuracy"] == pytest.approx(best["test_metrics"]["test_accuracy"])
    proc = _hfstage(site, "stack", "--models", str(runs[0][0]), str(runs[1][0]), "--out", str(tmp_path / "stack"),
                    "--meta", "mean", "--folds", "3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stacked = json.loads((tmp_path / "stack" / "stack.json").read_text())
    methods = {m["method"]: m["test_accuracy"] for m in stacked["methods"]}
    assert stacked["meta_learner"] == "mean" and methods["mean of probabilities"] >= 0.7


def test_a_recipe_naming_a_part_whose_plugin_failed_exits_2_naming_the_package(site, wine, tmp_path):
    proc = _hfstage(site, "train", "--config", str(_recipe(tmp_path / "r.yaml", wine, tmp_path / "run", "broken_task")),
                    cwd=tmp_path)
    assert proc.returncode == 2
    assert ("task 'broken_task' comes from the plug-in package hfstage-broken, which failed to load: "
            "ModuleNotFoundError: No module named 'hfstage_broken_missing'") in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()



def test_an_outside_stage_step_and_executor_take_part_in_a_run(site, wine, tmp_path):
    path = _recipe(tmp_path / "r.yaml", wine, tmp_path / "run")
    recipe = yaml.safe_load(path.read_text())
    recipe.update(seeds=[0, 1], executor={"type": "journal", "journal": str(tmp_path / "units.txt")})
    recipe["stages"][1]["description"] = "stamp this one"
    path.write_text(yaml.safe_dump(recipe))
    proc = _hfstage(site, "train", "--config", str(path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "units.txt").read_text().split() == ["seed_0", "seed_1"]
    for seed in (0, 1):
        stages = [json.loads((tmp_path / "run" / f"seed_{seed}" / d / "stage.json").read_text())
                  for d in ("stage_1_baseline", "stage_2_finetune")]
        assert [s.get("stamped_by") for s in stages] == [None, "hfstage-extras"]  # record extras: top-level keys
