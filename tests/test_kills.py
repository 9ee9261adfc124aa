"""kill -9 at random moments, again and again: rerunning the same command always finishes the run, and
every stage run.json calls finished reloads and re-evaluates to the metrics its stage.json records."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys

import pytest

from hfstage.evaluation import evaluate_checkpoint

KILLS = 20


@pytest.mark.slow
def test_random_kills_always_resume(recipe, tmp_path):
    # checkpoints every 4 steps, so kills land while training, while checkpoints, stages and run.json are written
    stages = [{"name": n, "epochs": 1, "eval_steps": 4} for n in ("baseline", "second", "third")]
    path = recipe(stages=stages, logging_steps=2)
    env = {k: v for k, v in os.environ.items()}
    command = [sys.executable, "-m", "hfstage", "train", "--config", str(path)]
    rng = random.Random(0)
    kills, finished_before_kill = 0, False
    for _ in range(KILLS):
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            # the interpreter and imports take ~4 s here; kill anywhere from start-up to the last stage
            proc.wait(timeout=rng.uniform(2.5, 7.0))
            assert proc.returncode == 0, proc.stderr.read()[-3000:]
            finished_before_kill = True
            break
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc.stderr.close()
            kills += 1
    final = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr[-3000:]
    out = tmp_path / "run"
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "finished" and [s["status"] for s in run["stages"]] == ["finished"] * 3
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp") or ".tmp" in p.name]
    for stage in run["stages"]:
        record = json.loads((out / stage["dir"] / "stage.json").read_text())
        result = evaluate_checkpoint(out / stage["dir"], split="val", out=str(tmp_path / "eval" / stage["dir"]))
        assert result["metrics"]["accuracy"] == pytest.approx(record["metrics"]["eval_accuracy"], abs=1e-9)
        assert result["metrics"]["loss"] == pytest.approx(record["metrics"]["eval_loss"], rel=1e-4)
    print(f"{kills} kills at random moments; the run resumed and finished correctly"
          + (" (it finished before the last planned kill)" if finished_before_kill else ""))
    assert kills >= 5  # the kills really happened
