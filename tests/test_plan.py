"""hfstage plan (plan.py): what each stage will do, for every shipped recipe, without training."""

from __future__ import annotations

from pathlib import Path

import pytest

from hfstage.cli import main


def test_plan_prints_what_each_stage_changes(recipe, capsys):
    path = recipe()
    assert main(["plan", "--config", str(path), "stages.3.freeze_patterns=[encoder.*]", "stages.3.loss=focal"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:6] == ["#", "name", "epochs", "lr", "scheduler", "loss"]
    row3 = next(line for line in lines if line.startswith("3 "))
    assert "focal(alpha=1,gamma=2,label_smoothing=0.1)" in row3 and "dropout=0.3" in row3
    frozen, total = row3.split()[6].split("/")
    assert 0 < int(frozen) < int(total)
    assert "shift=0.1,swap=0.5" in next(line for line in lines if line.startswith("2 "))


@pytest.mark.parametrize("recipe_file", sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")))
def test_every_shipped_recipe_plans(recipe_file, capsys):
    assert main(["plan", "--config", str(recipe_file)]) == 0
    assert "task " in capsys.readouterr().out
