"""The curriculum engine end to end: real Trainer, real files, real process kills."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_recipe
from safetensors.torch import load_file
from transformers import AutoModel, TrainerCallback

import hfstage  # noqa: F401  (registers the Auto classes)
from hfstage.cli import main
from hfstage.config import load_config
from hfstage.curriculum import run
from hfstage.run_dir import StageRecord, best_kept
from hfstage.errors import StageError

STAGE_KEYS = {"stage_index", "stage_name", "stage_description", "stage_config", "metrics", "training_time_s", "kept",
              "started_from"}


def read(path: Path) -> dict:
    return json.loads(path.read_text())


# ------------------------------------------------------------------------------------------------
# full runs


def accuracy_by_hand(stage_dir: Path, npz: Path) -> float:
    model = AutoModel.from_pretrained(stage_dir).eval()
    data = np.load(npz)
    x = torch.from_numpy(data["x"]).float() / 255
    with torch.no_grad():
        logits = model(pixel_values=x).logits
    return float(((logits > 0).long().numpy() == data["y"]).mean())


def test_quick_curriculum_writes_the_run_layout(recipe, pair_data, tmp_path, capsys):
    path = recipe(report_to=["tensorboard"])
    assert main(["train", "--config", str(path)]) == 0
    out = tmp_path / "run"
    table = capsys.readouterr().out
    assert "1 baseline" in table and "3 regularization" in table and "eval_accuracy" in table

    run_json = read(out / "run.json")
    assert run_json["status"] == "finished" and run_json["world_size"] == 1
    assert [s["status"] for s in run_json["stages"]] == ["finished"] * 3
    assert run_json["config"]["stages"][1]["augmentation"] == {"shift": 0.1, "swap": 0.5}
    assert {"torch", "transformers", "accelerate", "hfstage"} <= set(run_json["versions"])

    records = [read(out / d / "stage.json") for d in ("stage_1_baseline", "stage_2_augmentation", "stage_3_regularization")]
    for i, r in enumerate(records, 1):
        assert STAGE_KEYS <= set(r)
        assert r["stage_index"] == i and r["kept"] is True
        assert {"eval_loss", "eval_accuracy", "eval_f1", "eval_precision", "eval_recall"} <= set(r["metrics"])
        assert "test_accuracy" in r["test_metrics"]
        assert (out / f"stage_{i}_{r['stage_name']}" / "model.safetensors").is_file()
        assert r["log_history"] and r["log_history"][-1]["step"] == r["global_steps"]
    assert list((out / "logs").glob("events.out.tfevents.*"))  # one TensorBoard timeline for the run
    assert records[0]["started_from"] is None
    assert records[1]["started_from"] == "stage_1_baseline"
    assert records[2]["started_from"] == "stage_2_augmentation"  # threshold -1: every stage chains on
    assert records[2]["stage_config"]["label_smoothing"] == 0.1
    best = best_kept(load_config(path), [StageRecord.from_dict(r, "stage.json") for r in records])
    assert run_json["best_stage"] == best.stage_index

    # AutoModel rebuilds every stage, and its predictions reproduce the saved metrics
    for r in records:
        stage_dir = out / f"stage_{r['stage_index']}_{r['stage_name']}"
        assert accuracy_by_hand(stage_dir, pair_data / "val.npz") == pytest.approx(r["metrics"]["eval_accuracy"])
        assert accuracy_by_hand(stage_dir, pair_data / "test_public.npz") == pytest.approx(r["test_metrics"]["test_accuracy"])

    log = (out / "training.log").read_text()
    assert "stage 3 'regularization' kept" in log and "eval_loss=" in log
    assert not (out / "checkpoints" / "stage_1_baseline").exists()  # work folders are cleaned up
    assert not list(out.glob(".*.tmp"))

    # a finished run is not retrained
    before = {p: p.stat().st_mtime_ns for p in out.glob("stage_*/*")}
    assert main(["train", "--config", str(path)]) == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("stage_*/*")} == before

    # a different run in the same folder is refused, and nothing is touched
    assert main(["train", "--config", str(path), "seed=1"]) == 2
    assert "holds a different run" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in out.glob("stage_*/*")} == before

    # a run.json written before some config fields existed (an older hfstage) is the same run: the
    # missing fields read as their defaults, so the finished run is recognised, not refused
    run_json = read(out / "run.json")
    for key in ("seeds", "folds", "push_to_hub"):
        run_json["config"].pop(key)
    for stage in run_json["config"]["stages"]:
        stage.pop("pseudo_labels"), stage.pop("group_by_length")
    (out / "run.json").write_text(json.dumps(run_json))
    assert main(["train", "--config", str(path)]) == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("stage_*/*")} == before
    assert main(["train", "--config", str(path), "seed=1"]) == 2  # a real difference still is refused


def test_stage_not_kept_is_skipped_loudly(recipe, tmp_path):
    path = recipe(improvement_threshold=10.0)  # no stage can improve eval_loss by 10
    assert main(["train", "--config", str(path)]) == 0
    out = tmp_path / "run"
    r2, r3 = read(out / "stage_2_augmentation/stage.json"), read(out / "stage_3_regularization/stage.json")
    assert r2["kept"] is False and r3["kept"] is False
    assert r3["started_from"] == "stage_1_baseline"
    assert read(out / "run.json")["best_stage"] == 1
    assert "NOT KEPT" in (out / "training.log").read_text()


def test_frozen_encoder_does_not_change_even_batchnorm_statistics(recipe, tmp_path):
    path = recipe(stages=[{"name": "baseline", "epochs": 1},
                          {"name": "head_only", "epochs": 1, "freeze_patterns": ["encoder.*"]}])
    assert main(["train", "--config", str(path)]) == 0
    out = tmp_path / "run"
    before = load_file(out / "stage_1_baseline/model.safetensors")
    after = load_file(out / "stage_2_head_only/model.safetensors")
    encoder = [k for k in before if k.startswith("encoder.")]
    assert any("running_mean" in k for k in encoder)
    for k in encoder:
        assert torch.equal(before[k], after[k]), k
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("head."))
    r2 = read(out / "stage_2_head_only/stage.json")
    assert 0 < r2["frozen_parameters"] < r2["total_parameters"]


class _PoisonWeights(TrainerCallback):
    def on_step_end(self, args, state, control, model=None, **kwargs):
        if args.stage_index == 2 and state.global_step == 2:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))


@pytest.mark.parametrize("deferred", [False, True], ids=["immediate", "deferred"])
def test_nan_loss_stops_the_stage_and_keeps_earlier_ones(recipe, tmp_path, monkeypatch, deferred):
    # deferred: the accelerator path (the first bad step is recorded on the device and read back at the
    # next check), forced on the CPU; the step named is still the first bad one and nothing is saved
    from hfstage.trainer import StageTrainer

    monkeypatch.setattr(StageTrainer, "defer_nonfinite_check", deferred)
    cfg = load_config(recipe())
    with pytest.raises(StageError, match=r"stage 2 'augmentation'.*(nan|NaN or Inf) at step 3"):
        run(cfg, callbacks=[_PoisonWeights()])
    out = tmp_path / "run"
    run_json = read(out / "run.json")
    assert run_json["status"] == "failed" and "nan" in run_json["error"].lower()
    assert [s["status"] for s in run_json["stages"]] == ["finished", "pending", "pending"]
    assert not (out / "stage_2_augmentation").exists()
    AutoModel.from_pretrained(out / "stage_1_baseline")  # intact


@pytest.mark.parametrize("policy", ["skip", "stop"])
def test_a_nan_batch_is_skipped_when_configured(recipe, tmp_path, monkeypatch, policy):
    # the third training batch of stage 2 carries a NaN input (past the data checks, as a numeric blow-up
    # would): `skip` drops that batch alone and the stage finishes with finite weights; `stop` stops it
    from hfstage.data.npz_pairs import PairCollator

    real_call, calls = PairCollator.__call__, {"n": 0}

    def poisoned(self, batch):
        out = real_call(self, batch)
        if self.augmentation:  # stage 2 (augmentation) only: its collator is the one with augmentations
            calls["n"] += 1
            if calls["n"] == 3:
                out["pixel_values"][0, 0, 0, 0] = float("nan")
        return out

    monkeypatch.setattr(PairCollator, "__call__", poisoned)
    stages = [{"name": "baseline", "epochs": 1},
              {"name": "augmentation", "epochs": 1, "augmentation": {"swap": 0.5}, "on_nonfinite": policy}]
    cfg = load_config(recipe(stages=stages))
    out = tmp_path / "run"
    if policy == "stop":
        with pytest.raises(StageError, match=r"stage 2 'augmentation'.*(nan|NaN or Inf) at step 3"):  # (on a GPU)
            run(cfg)
        return
    final = run(cfg)
    assert final.status == "finished"
    record = read(out / "stage_2_augmentation/stage.json")
    assert record["skipped_steps"] == 1 and math.isfinite(record["metrics"]["eval_loss"])
    weights = load_file(out / "stage_2_augmentation/model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())
    assert "that batch was skipped" in (out / "training.log").read_text()


def test_disk_full_while_saving_a_stage_keeps_earlier_stages_and_resumes(recipe, tmp_path, monkeypatch):
    import errno

    from transformers import PreTrainedModel

    real_save = PreTrainedModel.save_pretrained

    def full_disk(where):
        def save(self, folder, *args, **kwargs):
            if where in str(folder):
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_save(self, folder, *args, **kwargs)
        return save

    cfg = load_config(recipe())
    # the disk fills up when the Trainer writes stage 2's checkpoint ...
    monkeypatch.setattr(PreTrainedModel, "save_pretrained", full_disk("checkpoint-"))
    with pytest.raises(StageError, match=r"stage 1 'baseline': could not write its checkpoint under .*"
                                         r"\(No space left on device\); earlier stages are intact"):
        run(cfg)
    assert read(tmp_path / "run" / "run.json")["status"] == "failed"
    monkeypatch.setattr(PreTrainedModel, "save_pretrained", real_save)
    run(load_config(recipe(stages=[{"name": "baseline", "epochs": 1}])))  # stage 1 only
    # ... or when hfstage publishes the finished stage 2
    monkeypatch.setattr(PreTrainedModel, "save_pretrained", full_disk(".stage_2"))
    with pytest.raises(StageError, match=r"stage 2 'augmentation': could not save .*stage_2_augmentation "
                                         r"\(No space left on device\); earlier stages are intact"):
        run(cfg)
    out = tmp_path / "run"
    run_json = read(out / "run.json")
    assert run_json["status"] == "failed" and "No space left" in run_json["error"]
    assert not (out / "stage_2_augmentation").exists() and not [p for p in out.iterdir() if p.name.startswith(".")]
    AutoModel.from_pretrained(out / "stage_1_baseline")  # intact
    monkeypatch.setattr(PreTrainedModel, "save_pretrained", real_save)
    final = run(load_config(recipe()))  # space freed: the same command resumes and finishes
    assert final.status == "finished" and [s.status for s in final.stages] == ["finished"] * 3


KILL_SCRIPT = """
import os, sys
from transformers import TrainerCallback
from hfstage.callbacks import StageCallback
from hfstage.config import load_config
from hfstage.curriculum import run

mode = sys.argv[2]

class Kill(StageCallback):
    def on_stage_end(self, stage_index, stage, run_config, record, **kwargs):
        if mode == "between" and stage_index == 1:
            os._exit(9)

    def on_save(self, args, state, control, **kwargs):
        if mode == "inside" and args.stage_index == 2 and state.global_step == 5:
            os._exit(9)

run(load_config(sys.argv[1]), callbacks=[Kill()])
"""


def killed_run(path: Path, mode: str, tmp_path: Path) -> None:
    script = tmp_path / "kill.py"
    script.write_text(textwrap.dedent(KILL_SCRIPT))
    proc = subprocess.run([sys.executable, str(script), str(path), mode], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 9, proc.stderr[-3000:]


def test_resume_after_kill_between_stages(recipe, tmp_path):
    path = recipe()
    killed_run(path, "between", tmp_path)
    out = tmp_path / "run"
    assert (out / "stage_1_baseline/stage.json").is_file()
    assert not (out / "stage_2_augmentation").exists()
    assert read(out / "run.json")["status"] == "running"
    first = read(out / "stage_1_baseline/stage.json")
    assert main(["train", "--config", str(path)]) == 0
    assert read(out / "stage_1_baseline/stage.json") == first  # not retrained
    assert read(out / "run.json")["status"] == "finished"
    assert "stage 1 'baseline' already finished" in (out / "training.log").read_text()


def test_resume_inside_a_stage_from_its_checkpoint(recipe, tmp_path):
    path = recipe(stages=[{"name": "baseline", "epochs": 1},
                          {"name": "longer", "epochs": 2, "eval_steps": 5}])
    killed_run(path, "inside", tmp_path)
    out = tmp_path / "run"
    assert (out / "checkpoints/stage_2_longer/checkpoint-5").is_dir()
    assert not (out / "stage_2_longer").exists()
    assert main(["train", "--config", str(path)]) == 0
    r2 = read(out / "stage_2_longer/stage.json")
    assert r2["global_steps"] == 20  # 320 pairs / 32 per step * 2 epochs: the resumed run finished the stage
    assert "resuming" in (out / "training.log").read_text()
    assert not (out / "checkpoints/stage_2_longer").exists()


def test_editing_an_unfinished_stage_is_allowed_on_resume(recipe, tmp_path):
    path = recipe()
    killed_run(path, "between", tmp_path)
    assert main(["train", "--config", str(path), "stages.2.lr=1e-4"]) == 0
    assert read(tmp_path / "run/stage_2_augmentation/stage.json")["stage_config"]["lr"] == pytest.approx(1e-4)


def test_early_stopping_inside_a_stage(recipe, tmp_path):
    # lr 1e-10 cannot flip a single prediction and the frozen encoder keeps its BatchNorm statistics,
    # so eval_accuracy never improves after the first evaluation
    path = recipe(metric_for_best_model="eval_accuracy",
                  stages=[{"name": "stuck", "epochs": 3, "lr": 1e-10, "eval_steps": 2, "early_stopping_patience": 2,
                           "freeze_patterns": ["encoder.*"]}])
    assert main(["train", "--config", str(path)]) == 0
    record = read(tmp_path / "run/stage_1_stuck/stage.json")
    assert record["global_steps"] == 6  # best at step 2, no improvement at 4 and 6: stop (not 30 steps)


def test_a_second_run_on_the_same_folder_is_refused(recipe, tmp_path, capsys):
    import socket

    path = recipe()
    out = tmp_path / "run"
    out.mkdir()
    # a live owner on this host: another process (a lock naming this very process but not held by it
    # is a leftover, e.g. of a run whose folder became read-only, and is taken over)
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / ".lock").write_text(json.dumps({"pid": owner.pid, "host": socket.gethostname(), "started_at": "now"}))
        assert main(["train", "--config", str(path)]) == 2
        err = capsys.readouterr().err
        assert "another hfstage run" in err and f"pid {owner.pid}" in err
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing else written
    finally:
        owner.kill()
        owner.wait()


def test_a_lock_left_by_a_dead_process_is_taken_over(recipe, tmp_path, capsys):
    import socket

    path = recipe(stages=[{"name": "only", "epochs": 1}])
    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / ".lock").write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))
    assert main(["train", "--config", str(path)]) == 0
    assert not (out / ".lock").exists()  # released at the end
    assert f"taking over a stale lock of pid {int(dead.stdout)}" in capsys.readouterr().err
    assert read(out / "run.json")["status"] == "finished"


def test_distillation_stage_learns_from_a_teacher_run(recipe, finished_run, pair_data, tmp_path, capsys):
    path = recipe(stages=[{"name": "baseline", "epochs": 1},
                          {"name": "distil", "epochs": 1, "teacher": {"checkpoint": str(finished_run), "alpha": 0.7}}])
    assert main(["train", "--config", str(path)]) == 0
    record = read(tmp_path / "run/stage_2_distil/stage.json")
    assert record["stage_config"]["teacher"] == {"checkpoint": str(finished_run), "temperature": 4.0, "alpha": 0.7}
    assert record["kept"] is True
    bad = write_recipe(tmp_path / "bad.yaml", pair_data, tmp_path / "other",
                       [{"name": "distil", "epochs": 1, "teacher": str(tmp_path / "nowhere")}])
    assert main(["train", "--config", str(bad)]) == 2
    assert "stages.1 (distil).teacher:" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()
