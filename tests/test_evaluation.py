"""`hfstage evaluate` on saved checkpoints: same numbers as training recorded, and as by hand."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import CPU_LAUNCH_ENV

from hfstage.cli import main
from hfstage.evaluation import evaluate_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def run_copy(finished_run, tmp_path):
    dest = tmp_path / "run"
    shutil.copytree(finished_run, dest)
    return dest


def test_evaluate_reproduces_the_recorded_metrics_and_writes_reports(run_copy, pair_data, capsys):
    stage = run_copy / "stage_2_finetune"
    record = json.loads((stage / "stage.json").read_text())
    assert main(["evaluate", str(stage), "--split", "val", "--save-predictions"]) == 0
    assert "accuracy" in capsys.readouterr().out
    result = json.loads((stage / "eval/val.json").read_text())
    assert result["samples"] == 160 and result["split"] == "val" and len(result["data_sha256"]) == 64
    assert result["metrics"]["accuracy"] == pytest.approx(record["metrics"]["eval_accuracy"])
    assert result["metrics"]["loss"] == pytest.approx(record["metrics"]["eval_loss"], rel=1e-5)

    with open(stage / "eval/val_predictions.csv") as fh:
        rows = list(csv.DictReader(fh))
    y = np.load(pair_data / "val.npz")["y"]
    assert [int(r["label"]) for r in rows] == y.tolist()  # in order, nothing dropped or duplicated
    by_hand = np.mean([int(r["label"]) == int(r["prediction"]) for r in rows])
    assert by_hand == pytest.approx(result["metrics"]["accuracy"])
    assert all((float(r["probability"]) > 0.5) == (r["prediction"] == "1") for r in rows)

    report = json.loads((stage / "eval/val_per_class.json").read_text())
    cm = np.array(report["confusion_matrix"])
    assert cm.sum() == 160 and np.trace(cm) / 160 == pytest.approx(by_hand)
    assert (stage / "eval/val_confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_stage_folder_moved_away_from_its_run_still_evaluates(run_copy, pair_data, tmp_path):
    alone = tmp_path / "alone"
    shutil.copytree(run_copy / "stage_1_baseline", alone)
    result = evaluate_checkpoint(alone, data_dir=str(pair_data), split="val")
    assert result["task"] == "pair_classification" and result["samples"] == 160


@pytest.mark.parametrize("break_it, message", [
    (lambda d: (d / "stage_1_baseline/model.safetensors").unlink(), "missing model.safetensors"),
    (lambda d: (d / "stage_1_baseline/config.json").unlink(), "missing config.json"),
])
def test_broken_checkpoints_are_refused(run_copy, capsys, break_it, message):
    break_it(run_copy)
    assert main(["evaluate", str(run_copy / "stage_1_baseline")]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_two_process_evaluation_gathers_an_odd_number_of_samples_exactly(run_copy, pair_data, tmp_path):
    odd = tmp_path / "odd"
    odd.mkdir()
    data = np.load(pair_data / "val.npz")
    np.savez(odd / "odd.npz", x=data["x"][:101], y=data["y"][:101])
    single = evaluate_checkpoint(run_copy, data_dir=str(odd), split="odd")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "accelerate_configs/cpu_ddp.yaml"),
           "--main_process_port", "0", "-m", "hfstage", "evaluate", str(run_copy), "--data", str(odd), "--split", "odd",
           "--batch-size", "8", "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, **CPU_LAUNCH_ENV})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert result["world_size"] == 2 and result["samples"] == 101
    assert result["metrics"]["accuracy"] == pytest.approx(single["metrics"]["accuracy"])
    assert result["metrics"]["loss"] == pytest.approx(single["metrics"]["loss"], rel=1e-5)
