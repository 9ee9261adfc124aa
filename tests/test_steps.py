"""Stage steps (hfstage/steps/): each stage gets the steps its own fields ask for, in registration order."""

from __future__ import annotations

from hfstage.config import load_config
from hfstage.steps import steps_for


def test_each_stage_gets_the_steps_its_fields_ask_for(recipe):
    cfg = load_config(recipe([{"name": "plain", "epochs": 1},
                              {"name": "refit", "epochs": 1, "train_on_eval": True, "early_stopping_patience": 2}]))
    names = [[type(s).__name__ for s in steps_for(stage)] for stage in cfg.stages]
    assert names[0] == ["Surgery", "TunedDecision"]
    assert names[1] == ["TrainOnEval", "Surgery", "EarlyStopping", "TunedDecision"]
