"""Beyond one process: two "nodes" on this machine, a rank killed mid-stage (by hand and with elastic restarts),
and a stalled rank that must fail the others within the collective timeout -- all real `accelerate launch`es
with gloo on the CPU."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import CPU_LAUNCH_ENV

from hfstage.run_dir import RunDir

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, **CPU_LAUNCH_ENV}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(recipe: Path, *flags: str, overrides=(), config="cpu_ddp.yaml") -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "accelerate_configs" / config),
            *flags, str(ROOT / "hfstage/train.py"), "--config", str(recipe), *overrides]


def ranks(recipe: Path) -> dict[int, psutil.Process]:
    """The training processes of ``recipe`` (the launcher's workers), by global rank."""
    found = {}
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if str(recipe) in (proc.info["cmdline"] or []) and "hfstage/train.py" in " ".join(proc.info["cmdline"]):
                rank = proc.environ().get("RANK")
                if rank is not None:
                    found[int(rank)] = proc
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def anything_left(recipe: Path) -> list[psutil.Process]:
    left = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if str(recipe) in (proc.info["cmdline"] or []) and proc.status() != psutil.STATUS_ZOMBIE:
                left.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return left


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"waited {timeout:g} s for {what}")


def complete_checkpoint(run: Path, stage: str, step: int) -> bool:
    # the Trainer writes trainer_state.json last into a checkpoint folder
    return (run / "checkpoints" / stage / f"checkpoint-{step}" / "trainer_state.json").is_file()


def start_until_checkpoint(recipe: Path, out: Path, step: int, cwd: Path, *flags: str):
    """(the launcher, its two ranks) of a 2-process launch, once the long stage's checkpoint ``step`` is complete."""
    launcher = subprocess.Popen(launch(recipe, "--main_process_port", str(free_port()), *flags), env=ENV, cwd=cwd,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    workers = wait_for(lambda: (lambda r: r if len(r) == 2 else None)(ranks(recipe)), 120, "two ranks")
    wait_for(lambda: complete_checkpoint(out, "stage_1_long", step), 300, f"checkpoint-{step}")
    return launcher, workers


LONG_STAGE = [{"name": "long", "epochs": 16, "eval_steps": 10}]  # 80 steps with 2 processes, a checkpoint every 10


@pytest.mark.slow
def test_two_nodes_on_one_machine_train_as_one_world_and_only_the_global_main_writes(recipe, tmp_path):
    path = recipe(stages=[{"name": "baseline", "epochs": 1}, {"name": "finetune", "epochs": 1, "lr": 1e-3}])
    port = str(free_port())
    nodes = []
    for rank in (0, 1):  # the shipped multi-node config, one CPU process per "node", both on 127.0.0.1
        flags = ["--num_machines", "2", "--num_processes", "2", "--machine_rank", str(rank), "--main_process_ip",
                 "127.0.0.1", "--main_process_port", port, "--mixed_precision", "no"]
        nodes.append(subprocess.Popen(launch(path, *flags, config="multi_node.yaml"), env=ENV, cwd=tmp_path,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=600) for p in nodes]
    for proc, (_, err) in zip(nodes, outputs):
        assert proc.returncode == 0, err[-4000:]
    out = tmp_path / "run"
    run = json.loads((out / "run.json").read_text())
    assert run["world_size"] == 2 and run["status"] == "finished"
    stage = json.loads((out / "stage_1_baseline" / "stage.json").read_text())
    assert stage["world_size"] == 2 and stage["global_steps"] == 5  # 320 pairs, 32 per process, 2 processes
    # the shared folder was written once, by the global main process (node 0): its table, its log lines
    assert outputs[0][0].count("1 baseline") == 1 and "1 baseline" not in outputs[1][0]
    assert (out / "training.log").read_text().count("stage 2 'finetune' kept") == 1
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "curves.png", "run.json", "stage_1_baseline",
                                                     "stage_2_finetune", "training.log"]


@pytest.mark.slow
def test_a_rank_killed_mid_stage_stops_the_group_and_elastic_restarts_finish_with_the_same_metrics(
        recipe, pair_data, tmp_path):
    from conftest import write_recipe

    # by hand: kill -9 of rank 1 once checkpoint-20 is complete; everything stops; the rerun resumes
    path = recipe(stages=LONG_STAGE)
    out = tmp_path / "run"
    launcher, workers = start_until_checkpoint(path, out, 20, tmp_path)
    killed = time.monotonic()
    workers[1].send_signal(signal.SIGKILL)
    launcher.wait(timeout=60)
    wait_for(lambda: not anything_left(path), 30 - (time.monotonic() - killed), "every process to be gone")
    assert time.monotonic() - killed < 30 and launcher.returncode != 0
    assert RunDir(out).status() == "interrupted"  # written by rank 0, or seen so since no process holds the run
    assert not (out / "stage_1_long").exists()
    rerun = subprocess.run(launch(path, "--main_process_port", str(free_port())), env=ENV, cwd=tmp_path,
                           capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    assert "resuming" in (out / "training.log").read_text()
    by_hand = json.loads((out / "stage_1_long" / "stage.json").read_text())

    # elastic: the same kill with --max_restarts 1; the launcher restarts the group, which resumes and finishes
    elastic_out = tmp_path / "elastic"
    elastic = write_recipe(tmp_path / "elastic.yaml", pair_data, elastic_out, LONG_STAGE)
    launcher, workers = start_until_checkpoint(elastic, elastic_out, 20, tmp_path, "--max_restarts", "1",
                                               "--monitor_interval", "1")
    workers[1].send_signal(signal.SIGKILL)
    _, err = launcher.communicate(timeout=600)
    assert launcher.returncode == 0, err[-4000:]
    run = json.loads((elastic_out / "run.json").read_text())
    assert run["status"] == "finished" and "resuming" in (elastic_out / "training.log").read_text()
    restarted = json.loads((elastic_out / "stage_1_long" / "stage.json").read_text())
    assert restarted["global_steps"] == by_hand["global_steps"] == 80
    for key in ("metrics", "test_metrics"):  # every metric but the timings
        a, b = ({k: v for k, v in r[key].items() if "runtime" not in k and "per_second" not in k}
                for r in (restarted, by_hand))
        assert a == pytest.approx(b, rel=1e-6) and len(a) >= 5


@pytest.mark.slow
def test_a_stalled_rank_fails_the_others_within_ddp_timeout_naming_the_stage(recipe, tmp_path):
    path = recipe(stages=LONG_STAGE, defaults={"batch_size": 32, "eval_batch_size": 64, "lr": 3e-3,
                                               "training_args": {"ddp_timeout": 8}})
    out = tmp_path / "run"
    launcher, workers = start_until_checkpoint(path, out, 10, tmp_path)
    stopped = time.monotonic()
    workers[1].send_signal(signal.SIGSTOP)
    try:  # rank 0 gives up after ddp_timeout and records why (the launcher would SIGKILL the stopped rank 30 s later)
        wait_for(lambda: json.loads((out / "run.json").read_text())["status"] == "failed", 60, "run.json: failed")
        failed_after = time.monotonic() - stopped
    finally:
        workers[1].kill()  # never leave a stopped process behind, whatever happened
    _, err = launcher.communicate(timeout=120)
    assert launcher.returncode != 0 and 8 <= failed_after < 8 + 30
    message = "stage_1_long: a collective operation across the 2 processes timed out after 8 s"
    assert message in err, err[-4000:]
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "failed" and run["error"].startswith(message) and run["error_stage"] == "stage_1_long"
    wait_for(lambda: not anything_left(path), 30, "every process to be gone")


@pytest.mark.slow
def test_nodes_that_do_not_share_output_dir_are_refused_before_training(pair_data, tmp_path):
    from conftest import write_recipe

    # a relative output_dir and a different working folder per "node": two folders, as without a shared filesystem
    path = write_recipe(tmp_path / "r.yaml", pair_data, Path("run"), [{"name": "baseline", "epochs": 1}])
    port = str(free_port())
    nodes = []
    for rank in (0, 1):
        (tmp_path / f"node{rank}").mkdir()
        flags = ["--num_machines", "2", "--num_processes", "2", "--machine_rank", str(rank), "--main_process_ip",
                 "127.0.0.1", "--main_process_port", port, "--mixed_precision", "no"]
        nodes.append(subprocess.Popen(launch(path, *flags, config="multi_node.yaml"), env=ENV,
                                      cwd=tmp_path / f"node{rank}", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    errors = [p.communicate(timeout=300)[1] for p in nodes]
    assert all(p.returncode != 0 for p in nodes)
    for err in errors:  # every process stops with the same one-line reason
        assert "output_dir run: rank 1 (" in err and "the nodes do not share this folder" in err, err[-3000:]
    run = json.loads((tmp_path / "node0" / "run" / "run.json").read_text())
    assert run["status"] == "failed" and "do not share" in run["error"]
    assert not list((tmp_path / "node0" / "run").glob("stage_*")) and not (tmp_path / "node1" / "run").exists()


def test_ddp_timeout_is_one_value_per_run_and_collective_errors_become_one_line():
    from hfstage.config import StageConfig
    from hfstage.curriculum import collective_failure
    from hfstage.devices import ddp_timeout
    from hfstage.errors import ConfigError, PeerLost, StageError

    assert ddp_timeout([StageConfig(name="a"), StageConfig(name="b")]) is None
    same = {"ddp_timeout": 90}
    assert ddp_timeout([StageConfig(name="a", training_args=same), StageConfig(name="b", training_args=same)]) == 90
    with pytest.raises(ConfigError, match="set once per run"):
        ddp_timeout([StageConfig(name="a", training_args=same), StageConfig(name="b")])
    gloo_timeout = RuntimeError("[gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 8000ms for recv operation")
    gloo_peer = RuntimeError("[gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:41512")
    stalled = collective_failure(gloo_timeout, "stage_2_finetune", 2, 8)
    assert type(stalled) is StageError and str(stalled).startswith(
        "stage_2_finetune: a collective operation across the 2 processes timed out after 8 s")
    died = collective_failure(gloo_peer, "stage_2_finetune", 4, 1800)
    assert isinstance(died, PeerLost) and "another process of the run died" in str(died)
    assert collective_failure(gloo_peer, "stage_2_finetune", 1, 1800) is None  # one process: not a peer
    assert collective_failure(ValueError("timed out"), "stage_1", 2, 8) is None  # only the backend's RuntimeErrors
