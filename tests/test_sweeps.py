"""Many runs of one recipe (sweeps.py): one run per seed, and its table."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from hfstage.cli import main


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def test_seeds_train_one_run_per_seed(recipe, tmp_path, capsys):
    path = recipe(stages=[{"name": "only", "epochs": 1}], seeds=[3, 4])
    assert main(["plan", "--config", str(path)]) == 0
    plan = capsys.readouterr().out
    assert "seeds [3, 4]" in plan and "one run per seed" in plan
    assert main(["train", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    runs = [read(tmp_path / "run" / f"seed_{s}" / "run.json") for s in (3, 4)]
    assert [r["config"]["seed"] for r in runs] == [3, 4] and all(r["status"] == "finished" for r in runs)
    w3 = load_file(tmp_path / "run/seed_3/stage_1_only/model.safetensors")
    w4 = load_file(tmp_path / "run/seed_4/stage_1_only/model.safetensors")
    assert not torch.equal(w3["head.0.weight"], w4["head.0.weight"])  # really different seeds
    assert "mean +- std" in out and out.count("stage_1_only") >= 2
    assert main(["train", "--config", str(path), "seeds=[5, 5]"]) == 2
    assert "repeats a seed" in capsys.readouterr().err
