"""A real 2-process launch (gloo DDP on the CPU) through `accelerate launch` and the shipped config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CPU_LAUNCH_ENV

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_two_process_launch_trains_once_and_only_main_writes(recipe, tmp_path):
    path = recipe(stages=[{"name": "baseline", "epochs": 1},
                          {"name": "augmentation", "epochs": 1, "augmentation": {"swap": 0.5}}])
    env = {**os.environ, **CPU_LAUNCH_ENV}
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
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "curves.png", "run.json", "stage_1_baseline",
                                                     "stage_2_augmentation", "training.log"]
    # the console: one line per event, from the main process only, no printed Trainer dicts
    assert proc.stderr.count("stage 1/2 'baseline'") == 1 and proc.stderr.count("stage_1_baseline step 5/5: eval_loss") == 1
    assert "{'loss':" not in proc.stdout + proc.stderr


SHARD_SCRIPT = """
import json, sys
from hfstage.config import DataConfig
from hfstage.models import build_model
from hfstage.tasks import TASKS
from hfstage.trainer import StageTrainer, StageTrainingArguments

task = TASKS.get("pair_classification")()
splits = task.load_splits(DataConfig(path=sys.argv[1]))
args = StageTrainingArguments(output_dir=sys.argv[2], use_cpu=True, report_to="none", per_device_train_batch_size=16,
                              remove_unused_columns=False)
model = build_model({"type": "pair_cnn", "channels": [4], "feat_dim": 8, "hidden_dim": 8})
trainer = StageTrainer(model=model, args=args, train_dataset=splits.train, data_collator=task.collator(None, False))
ids = []
for batch in trainer.get_train_dataloader():  # the Trainer's own loader: sampler, sharding, accelerate
    pixels = (batch["pixel_values"][:, 0, 0, :2] * 255).round().long()
    ids += (pixels[:, 0] + 256 * pixels[:, 1]).tolist()
rank = trainer.accelerator.process_index
open(f"{sys.argv[2]}/rank_{rank}.json", "w").write(json.dumps({"world": trainer.accelerator.num_processes, "ids": ids}))
"""


@pytest.mark.slow
def test_two_processes_over_a_datasets_source_read_disjoint_halves(tmp_path):
    """A save_to_disk source whose images carry their row number: each of the 2 DDP processes reads its own
    half of the epoch through the Trainer's loader, and together they read every row once."""
    import datasets
    import numpy as np

    n = 320
    x = np.zeros((n, 2, 8, 8), dtype=np.uint8)
    x[:, 0, 0, 0], x[:, 0, 0, 1] = np.arange(n) % 256, np.arange(n) // 256
    features = datasets.Features({"pair": datasets.Array3D((2, 8, 8), "uint8"), "label": datasets.Value("int64")})
    split = datasets.Dataset.from_dict({"pair": x, "label": np.arange(n) % 2}, features=features)
    datasets.DatasetDict({"train": split, "validation": split}).save_to_disk(str(tmp_path / "data"))
    script = tmp_path / "shards.py"
    script.write_text(SHARD_SCRIPT)
    (tmp_path / "out").mkdir()
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "accelerate_configs/cpu_ddp.yaml"), "--main_process_port", "0", str(script),
           str(tmp_path / "data"), str(tmp_path / "out")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, **CPU_LAUNCH_ENV})
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / "out" / f"rank_{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    first, second = (set(r["ids"]) for r in ranks)
    assert len(ranks[0]["ids"]) == len(ranks[1]["ids"]) == n // 2 and not first & second
    assert first | second == set(range(n))


@pytest.mark.slow
def test_an_installed_hfstage_launches_as_a_module_from_a_folder_without_the_repo(recipe, tmp_path):
    """``accelerate launch -m hfstage train ...`` (docs/launching.md): what a user who installed a wheel runs, with
    no hfstage/train.py at hand; two processes from a folder outside the checkout."""
    import shutil

    path = recipe(stages=[{"name": "baseline", "epochs": 1}])
    work = tmp_path / "elsewhere"
    work.mkdir()
    shutil.copy(ROOT / "accelerate_configs/cpu_ddp.yaml", work / "ddp.yaml")
    env = {**os.environ, **CPU_LAUNCH_ENV}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "ddp.yaml", "--main_process_port", "0",
           "-m", "hfstage", "train", "--config", str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=work)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run_json = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run_json["world_size"] == 2 and run_json["status"] == "finished"
    assert json.loads((tmp_path / "run/stage_1_baseline/stage.json").read_text())["global_steps"] == 5
