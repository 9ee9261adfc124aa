"""What a user names (resolve.py): a run folder means its best stage; a missing stage or Hub reference is refused."""

from __future__ import annotations

import json
import shutil

import pytest

from hfstage.cli import main
from hfstage.errors import CheckpointError, HubError
from hfstage.evaluation import evaluate_checkpoint
from hfstage.resolve import resolve_checkpoint


@pytest.fixture
def run_copy(finished_run, tmp_path):
    dest = tmp_path / "run"
    shutil.copytree(finished_run, dest)
    return dest


def test_a_run_folder_means_its_best_stage(run_copy):
    best = json.loads((run_copy / "run.json").read_text())["best_stage_dir"]
    assert resolve_checkpoint(run_copy).stage_dir == run_copy / best
    result = evaluate_checkpoint(run_copy)  # default split: test
    record = json.loads((run_copy / best / "stage.json").read_text())
    assert result["metrics"]["accuracy"] == pytest.approx(record["test_metrics"]["test_accuracy"])


def test_missing_things(run_copy, capsys, monkeypatch):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        resolve_checkpoint(run_copy / "stage_9_nope")
    monkeypatch.setenv("HFSTAGE_HUB_RETRIES", "1")
    monkeypatch.setenv("HFSTAGE_HUB_BACKOFF", "0.01")
    # HF_ENDPOINT is the tests' local port: no server there yet (or one without that repository)
    with pytest.raises(HubError, match="someone/model: (could not reach the Hub at http://127.0.0.1:\\d+ \\(ConnectError\\)$"
                                       "|repository not found)"):
        resolve_checkpoint("hf://someone/model")
    assert main(["evaluate", str(run_copy), "--split", "holdout"]) == 2
    assert "holdout.npz: file not found" in capsys.readouterr().err
