"""One curriculum, one tracker run, one timeline: MLflow (a local file store), trackio (local) and W&B (offline)
each get exactly one run per curriculum, on a global step that continues across stages, resumed with the run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hfstage.config import load_config
from hfstage.curriculum import run

THREE_STAGES = [{"name": "baseline", "epochs": 1}, {"name": "finetune", "epochs": 1, "lr": 1e-3},
                {"name": "polish", "epochs": 1, "lr": 3e-4}]


def _increasing(steps: list[int]) -> bool:
    return all(a < b for a, b in zip(steps, steps[1:]))


def test_mlflow_and_trackio_get_one_run_per_curriculum_even_across_a_resume(recipe, tmp_path, monkeypatch):
    import mlflow
    from trackio.sqlite_storage import SQLiteStorage

    from test_trainer_arguments import _Explode

    store = tmp_path / "mlruns"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.as_uri())
    path = recipe(THREE_STAGES, report_to=["mlflow", "trackio"], project="hfstage-tests", logging_steps=2)
    with pytest.raises(RuntimeError):  # stage 3 fails half-way; the rerun resumes into the same tracker runs
        run(load_config(path), callbacks=[_Explode(stage=3, step=3)])
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert set(record["trackers"]) == {"mlflow", "trackio"}
    final = run(load_config(path))
    assert final.trackers == record["trackers"]

    mlflow.set_tracking_uri(store.as_uri())
    runs = mlflow.search_runs(experiment_names=["hfstage-tests"], output_format="list")
    assert len(runs) == 1 and runs[0].info.run_name == "run" and runs[0].info.status == "FINISHED"
    client = mlflow.MlflowClient(store.as_uri())
    steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, "eval/loss")]
    assert len(steps) == 3 and _increasing(steps)  # one evaluation per stage, each after the one before
    assert len(client.get_metric_history(runs[0].info.run_id, "test/accuracy")) == 3
    params = runs[0].data.params
    assert params["stages.2_finetune.lr"] == "0.001" and params["task"] == "pair_classification"

    assert SQLiteStorage.get_runs("hfstage-tests") == ["run"]
    logs = SQLiteStorage.get_logs("hfstage-tests", "run")
    eval_steps = sorted({e["step"] for e in logs if "eval/loss" in e})
    assert eval_steps == steps  # the same global steps in both trackers


def test_wandb_offline_gets_one_run(recipe, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    path = recipe(THREE_STAGES[:2], report_to=["wandb"], project="hfstage-tests")
    final = run(load_config(path))
    offline = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and final.trackers["wandb"] in offline[0].name


def test_tensorboard_is_one_timeline_and_curves_png_is_drawn(recipe, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run(load_config(recipe(THREE_STAGES, report_to=["tensorboard"], logging_steps=2)))
    logs = tmp_path / "run" / "logs"
    events = EventAccumulator(str(logs))
    events.Reload()
    train = [e.step for e in events.Scalars("train/loss")]
    evals = [e.step for e in events.Scalars("eval/loss")]
    assert _increasing(train) and _increasing(evals) and len(evals) == 3
    boundaries = [(e.step, e.value) for e in events.Scalars("curriculum/stage")]
    assert [v for _, v in boundaries] == [1.0, 2.0, 3.0] and boundaries[1][0] == evals[0]  # stage 2 starts where 1 ended
    assert [e.step for e in events.Scalars("test/accuracy")] == evals
    assert train[-1] > evals[1]  # stage 3's steps come after stage 2's

    png = tmp_path / "run" / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    assert Image.open(png).size[0] >= 600


def test_curves_mark_stages_not_kept(finished_run, tmp_path):
    from hfstage.curves import draw_curves
    from hfstage.run_dir import RunDir

    records = RunDir(finished_run).records()
    records[1].kept = False
    out = draw_curves(tmp_path / "c.png", records, "eval_accuracy")
    assert out is not None and Path(out).read_bytes()[:4] == b"\x89PNG"
