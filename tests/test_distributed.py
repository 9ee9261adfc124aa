"""A real 2-process launch (gloo DDP on the CPU) through `accelerate launch` and the shipped config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_two_process_launch_trains_once_and_only_main_writes(recipe, tmp_path):
    path = recipe(stages=[{"name": "baseline", "epochs": 1},
                          {"name": "augmentation", "epochs": 1, "augmentation": {"swap": 0.5}}])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "accelerate_configs/cpu_ddp.yaml"), "--main_process_port", "0",
           str(ROOT / "hfstage/train.py"), "--config", str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = tmp_path / "run"
    run_json = json.loads((out / "run.json").read_text())
    assert run_json["world_size"] == 2 and run_json["status"] == "finished"
    stage = json.loads((out / "stage_1_baseline/stage.json").read_text())
    assert stage["world_size"] == 2
    # 320 pairs, 32 per device and 2 devices: 5 optimizer steps per epoch (not 10 as in one process)
    assert stage["global_steps"] == 5
    # only the main process wrote: one table on stdout, each log line once
    assert proc.stdout.count("1 baseline") == 1
    log = (out / "training.log").read_text()
    assert log.count("stage 2 'augmentation' kept") == 1
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "run.json", "stage_1_baseline",
                                                     "stage_2_augmentation", "training.log"]
