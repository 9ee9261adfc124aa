"""kill -9 at random moments, again and again: rerunning the same command always finishes the run, and
every stage run.json calls finished reloads and re-evaluates to the metrics its stage.json records."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hfstage.evaluation import evaluate_checkpoint

KILLS = 6  # random kills per run; each costs a start-up, and 6 land in every phase of this short run


def _seconds(command: list[str], env: dict) -> float:
    began = time.monotonic()
    subprocess.run(command, env=env, capture_output=True, check=True, timeout=600)
    return time.monotonic() - began


@pytest.mark.slow
def test_random_kills_always_resume(recipe, pair_data, tmp_path):
    # checkpoints every 4 steps, so kills land while training, while checkpoints, stages and run.json are written
    from conftest import write_recipe

    stages = [{"name": n, "epochs": 1, "eval_steps": 4} for n in ("baseline", "second", "third")]
    path = recipe(stages=stages, logging_steps=2)
    env = {k: v for k, v in os.environ.items()}
    command = [sys.executable, "-m", "hfstage", "train", "--config", str(path)]
    # kill times follow this machine's speed: start-up (interpreter, imports, model) and the whole run, timed here
    startup = _seconds([sys.executable, "-m", "hfstage", "plan", "--config", str(path)], env)
    timed = write_recipe(tmp_path / "timed.yaml", pair_data, tmp_path / "timed", stages, logging_steps=2)
    training = max(_seconds([*command[:-1], str(timed)], env) - startup, 1.0)
    rng = random.Random(0)
    kills, finished_before_kill, scale, fresh_starts = 0, False, 1.0, 0
    while kills < KILLS:
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            # anywhere from a third of the way through start-up to a fifth of the way through the training left
            proc.wait(timeout=scale * rng.uniform(0.3 * startup, startup + 0.2 * training))
            assert proc.returncode == 0, proc.stderr.read()[-3000:]
            proc.stderr.close()
            if kills >= 4:
                finished_before_kill = True
                break
            # it ran faster than when it was timed (the suite's other worker was busy then, idle now): the run
            # starts afresh with shorter waits, so the kills still happen
            fresh_starts += 1
            assert fresh_starts <= 4, f"the run finished before its kill {fresh_starts} times (waits x {scale:.2f})"
            shutil.rmtree(tmp_path / "run")
            scale *= 0.6
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
    assert kills >= 4  # the kills really happened


@pytest.mark.slow
def test_kills_during_pushes_resume_and_the_hub_ends_up_equal_to_the_run(hub, pair_data, tmp_path):
    """``push_to_hub`` runs killed while a stage is being pushed (the server holds every commit and
    pre-upload for a moment, so a kill can land mid-push; half the kills wait for one in flight), then
    rerun: the run finishes and every stage on the Hub, at the head and at its tag, equals the local files."""
    from conftest import write_recipe
    from huggingface_hub import HfApi, hf_hub_download

    from hfstage.hub import stage_tag

    stages = [{"name": n, "epochs": 1} for n in ("baseline", "second", "third")]
    path = write_recipe(tmp_path / "recipe.yaml", pair_data, tmp_path / "run", stages, push_to_hub=True,
                        hub_repo_id="tester/killed")
    hub.delay.update(commit=0.6, preupload=0.3)
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    command = [sys.executable, "-m", "hfstage", "train", "--config", str(path)]
    # deadlines follow this machine's speed: start-up and a whole run with its pushes, timed here
    startup = _seconds([sys.executable, "-m", "hfstage", "plan", "--config", str(path)], env)
    timed = write_recipe(tmp_path / "timed.yaml", pair_data, tmp_path / "timed", stages, push_to_hub=True,
                         hub_repo_id="tester/timed")
    training = max(_seconds([*command[:-1], str(timed)], env) - startup, 1.0)
    rng = random.Random(1)
    kills, mid_push = 0, 0
    for attempt in range(4):  # two of them wait for a push in flight
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + rng.uniform(0.5 * startup, startup + 0.5 * training)
        wait_for_push = attempt % 2 == 0
        while proc.poll() is None and time.monotonic() < deadline:
            if wait_for_push and hub.in_flight.get("commit", 0) + hub.in_flight.get("preupload", 0):
                break
            time.sleep(0.02)
        if proc.poll() is not None:
            assert proc.returncode == 0, proc.stderr.read()[-3000:]
            proc.stderr.close()
            break
        pushing = hub.in_flight.get("commit", 0) + hub.in_flight.get("preupload", 0) > 0
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
        kills += 1
        mid_push += pushing
        time.sleep(hub.delay["commit"] + 0.1)  # let the server finish what the dead client had sent
    final = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr[-3000:]
    out = tmp_path / "run"
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "finished" and [s["status"] for s in run["stages"]] == ["finished"] * 3
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    api = HfApi()
    tags = {t.name: t.target_commit for t in api.list_repo_refs("tester/killed").tags}
    remote_run = json.loads(Path(hf_hub_download("tester/killed", "run.json")).read_text())
    assert remote_run["status"] == "finished" and remote_run["stages"] == run["stages"]
    for stage in run["stages"]:
        tag = stage_tag(stage["dir"])
        assert tag in tags, (tag, sorted(tags))
        for name in ("model.safetensors", "stage.json", "config.json"):
            local = (out / stage["dir"] / name).read_bytes()
            for revision in (None, tags[tag]):
                remote = Path(hf_hub_download("tester/killed", f"{stage['dir']}/{name}", revision=revision))
                assert remote.read_bytes() == local, (stage["dir"], name, revision)
    print(f"{kills} kills ({mid_push} while a commit or pre-upload was in flight); the run and the Hub repo "
          "finished equal")
    assert kills >= 3 and mid_push >= 1
