"""One stage (stage.py): train_stage fires every step's events, in order, and the record carries what they add."""

from __future__ import annotations

import json

from hfstage.config import load_config
from hfstage.curriculum import run
from hfstage.steps import STEPS, StageStep


def test_a_registered_step_sees_every_event_of_its_stage_in_order(recipe, tmp_path):
    seen = []

    class Probe(StageStep):
        @staticmethod
        def applies(stage) -> bool:
            return stage.name == "probed"

        def on_data(self, ctx):
            seen.append(("on_data", len(ctx.train_set)))

        def on_model(self, ctx):
            seen.append(("on_model", ctx.start.dir if ctx.start else None))

        def on_callbacks(self, ctx):
            seen.append(("on_callbacks", len(ctx.callbacks)))

        def after_evaluation(self, ctx, trainer, metrics):
            seen.append(("after_evaluation", "eval_loss" in metrics))

        def on_record(self, ctx, trainer, record):
            record.extra["probe"] = len(seen)
            seen.append(("on_record", record.stage_index))

    STEPS.register("probe")(Probe)
    try:
        run(load_config(recipe([{"name": "first", "epochs": 1}, {"name": "probed", "epochs": 1}])))
    finally:
        STEPS._items.pop("probe")
    assert seen == [("on_data", 320), ("on_model", "stage_1_first"), ("on_callbacks", 1),
                    ("after_evaluation", True), ("on_record", 2)]
    record = json.loads((tmp_path / "run" / "stage_2_probed" / "stage.json").read_text())
    assert record["probe"] == 4 and "probe" not in json.loads((tmp_path / "run/stage_1_first/stage.json").read_text())
