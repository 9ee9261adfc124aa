"""TrainingArguments vocabulary: ``training_args`` reaches the Trainer, every bad name or value is refused before
anything is written, and a run never stays ``running`` once its process is gone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from transformers import TrainerCallback

from hfstage.cli import main
from hfstage.config import load_config
from hfstage.curriculum import run
from hfstage.run_dir import RunDir

TWO_STAGES = [{"name": "baseline", "epochs": 1},
              {"name": "finetune", "epochs": 1, "lr": 1e-3, "training_args": {"adam_epsilon": 1e-7}}]


class _Seen(TrainerCallback):
    """What each stage's live TrainingArguments say."""

    def __init__(self):
        self.args = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.args.append(args)


def test_training_args_reach_the_trainer_and_are_recorded(recipe, tmp_path):
    path = recipe(TWO_STAGES, defaults={"batch_size": 32, "lr": 3e-3, "training_args": {"adam_beta2": 0.98}})
    cfg = load_config(path, ["stages.2.training_args.adam_beta2=0.95", "stages.2.scheduler=warmup_stable_decay",
                             "stages.2.scheduler_kwargs.num_decay_steps=3",
                             "defaults.training_args.dataloader_persistent_workers=false"])
    seen = _Seen()
    run(cfg, callbacks=[seen])
    first, second = seen.args
    assert first.adam_beta2 == 0.98 and first.adam_epsilon == 1e-8  # the defaults' mapping; Trainer's default
    assert second.adam_beta2 == 0.95 and second.adam_epsilon == 1e-7  # the stage's keys over the defaults'
    assert str(second.lr_scheduler_type.value) == "warmup_stable_decay"
    assert second.lr_scheduler_kwargs == {"num_decay_steps": 3}
    saved = json.loads((tmp_path / "run" / "stage_2_finetune" / "stage.json").read_text())["stage_config"]
    assert saved["training_args"] == {"adam_beta2": 0.95, "dataloader_persistent_workers": False, "adam_epsilon": 1e-7}
    assert saved["scheduler_kwargs"] == {"num_decay_steps": 3}


@pytest.mark.parametrize("override, message", [
    ("stages.1.learning_rate=0.1", "stages.1.learning_rate: unknown key (did you mean `lr` (TrainingArguments' learning_rate)?)"),
    ("num_train_epochs=3", "recipe.yaml: num_train_epochs: unknown key (did you mean `defaults.epochs`"),
    ("defaults.adam_beta2=0.9", "defaults.adam_beta2: unknown key (a TrainingArguments field: set it under `training_args`"),
    ("defaults.training_args.learning_rate=1", "defaults.training_args.learning_rate: hfstage sets learning_rate from its own key: use `lr`"),
    ("defaults.training_args.adam_beta3=1", "adam_beta3: not a TrainingArguments field (did you mean 'adam_beta2'?)"),
    ("defaults.training_args.adam_beta2=abc", "adam_beta2: expected a number, got 'abc'"),
    ("defaults.training_args.logging_strategy=sometimes", "'sometimes' is not one of no, steps, epoch"),
    ("defaults.training_args.use_cpu=true", "use_cpu: set by hfstage"),
    ("defaults.optim=adamw_foo", "defaults.optim: 'adamw_foo' is not a TrainingArguments optimizer"),
    ("defaults.optim=adamw_bnb_8bit", "stages.1 (baseline).optim: 'adamw_bnb_8bit': You need to install `bitsandbytes`"),
    ("stages.2.scheduler=wavy", "stages.2.scheduler: 'wavy' is not a transformers SchedulerType"),
    ("stages.2.scheduler=warmup_stable_decay", "stages.2 (finetune).scheduler_kwargs: scheduler 'warmup_stable_decay' "
     "refused {}: get_wsd_schedule() missing 1 required positional argument: 'num_decay_steps'"),
    ("stages.1.scheduler_kwargs.gamma=2", "stages.1 (baseline).scheduler_kwargs: scheduler 'cosine' refused {'gamma': 2}"),
    ("report_to=[comet_ml]", "report_to: 'comet_ml' is not a tracker hfstage logs to"),
    ("report_to=[none,tensorboard]", "report_to: 'none' cannot be combined with tensorboard"),
    ("stages.1.mixed_precision=fp16", "stages.1 (baseline).mixed_precision: fp16 needs a GPU"),
])
def test_bad_trainer_names_and_values_exit_2_before_any_folder(recipe, tmp_path, capsys, override, message):
    assert main(["train", "--config", str(recipe(TWO_STAGES)), override]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_a_tracker_that_is_not_installed_is_a_config_error(recipe, tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    assert main(["train", "--config", str(recipe(TWO_STAGES)), "report_to=[tensorboard,wandb]"]) == 2
    assert "report_to: wandb is not installed; pip install 'hfstage[wandb]'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


class _Explode(TrainerCallback):
    def __init__(self, stage: int, step: int):
        self.stage, self.step, self.stages = stage, step, 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.stages += 1

    def on_step_end(self, args, state, control, **kwargs):
        if self.stages == self.stage and state.global_step == self.step:
            raise RuntimeError("the data loader's disk vanished")


def test_an_exception_mid_stage_marks_the_run_failed_then_it_resumes(recipe, tmp_path, capsys):
    cfg = load_config(recipe(TWO_STAGES))
    with pytest.raises(RuntimeError):
        run(cfg, callbacks=[_Explode(stage=2, step=2)])
    folder = RunDir(tmp_path / "run")
    record = folder.read()
    assert record.status == "failed" and record.error_stage == "stage_2_finetune"
    assert record.error == "RuntimeError: the data loader's disk vanished"
    assert [s.status for s in record.stages] == ["finished", "pending"]
    assert main(["runs", "show", str(tmp_path / "run")]) == 0
    assert "failed in stage_2_finetune: RuntimeError: the data loader's disk vanished" in capsys.readouterr().out
    final = run(load_config(recipe(TWO_STAGES)))
    assert final.status == "finished" and folder.read().error is None


def _train(recipe_path: Path, *overrides: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "hfstage", "train", "--config", str(recipe_path), *overrides],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _wait_for_training(proc: subprocess.Popen, stage_label: str) -> str:
    """Read the process's output until it logs a training step of ``stage_label``."""
    seen = []
    deadline = time.time() + 120
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if f"{stage_label} step " in line and "loss=" in line:
            return "".join(seen)
    proc.kill()
    raise AssertionError("training never started:\n" + "".join(seen))


@pytest.mark.slow
def test_sigkill_shows_interrupted_and_sigterm_marks_it(recipe, tmp_path):
    # long enough to be stopped mid-stage: 40 epochs of 320 pairs, logging every step
    path = recipe([{"name": "long", "epochs": 40}, {"name": "after", "epochs": 1}], logging_steps=1)
    out = tmp_path / "run"
    proc = _train(path)
    _wait_for_training(proc, "stage_1_long")
    proc.kill()  # SIGKILL: nothing can write; the lock's process is gone
    proc.wait(timeout=30)
    assert json.loads((out / "run.json").read_text())["status"] == "running"
    listing = subprocess.run([sys.executable, "-m", "hfstage", "runs", "list", str(tmp_path)], capture_output=True,
                             text=True, check=True).stdout
    assert f"{out}  interrupted" in listing

    proc = _train(path)  # resumes (and takes the stale lock over), then SIGTERM
    _wait_for_training(proc, "stage_1_long")
    proc.send_signal(signal.SIGTERM)
    rest = proc.communicate(timeout=60)[0]
    assert proc.returncode == 128 + signal.SIGTERM
    assert "stopped by SIGTERM; rerun the same command to resume" in rest and "Traceback" not in rest
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "interrupted" and record["error"] == "stopped by SIGTERM"
    assert record["error_stage"] == "stage_1_long" and not (out / ".lock").exists()
