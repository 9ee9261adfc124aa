"""The Hub, end to end against a real HTTP server (tests/hub_server.py) through the real huggingface_hub."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import HUB_TOKEN, write_recipe
from huggingface_hub import HfApi, ModelCard, hf_hub_download
from safetensors.torch import load_file
from transformers import AutoModel

from hfstage import cli
from hfstage.config import load_config
from hfstage.curriculum import run
from hfstage.errors import CheckpointError, ConfigError, HubError
from hfstage.evaluation import evaluate_checkpoint
from hfstage.hub import parse_reference, pull, push, stage_tag

STAGES = [{"name": "baseline", "epochs": 1}, {"name": "augmentation", "epochs": 1, "augmentation": {"swap": 0.5}},
          {"name": "finetune", "epochs": 1, "lr": 1e-3}]


@pytest.fixture(scope="module")
def run3(tmp_path_factory, pair_data) -> Path:
    """A finished 3-stage run (every stage kept)."""
    root = tmp_path_factory.mktemp("run3")
    run(load_config(write_recipe(root / "recipe.yaml", pair_data, root / "run", STAGES)))
    return root / "run"


def tree_digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def stage_dirs(run_dir: Path) -> list[str]:
    return [s["dir"] for s in json.loads((run_dir / "run.json").read_text())["stages"]]


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_parse_reference():
    ref = parse_reference("hf://tester/run@stage-2-x/stage_2_x")
    assert (ref.repo_id, ref.revision, ref.stage) == ("tester/run", "stage-2-x", "stage_2_x")
    assert parse_reference("hf://tester/run").revision is None
    assert parse_reference("hf://tester/run@refs%2Fpr%2F1").revision == "refs/pr/1"
    assert str(parse_reference("hf://tester/run@refs%2Fpr%2F1/stage_1_a")) == "hf://tester/run@refs%2Fpr%2F1/stage_1_a"
    assert stage_tag("stage_12_fine_tune") == "stage-12-fine_tune"
    for bad in ("hf://", "hf://a/b/c/d", "hf://../x", "hf://tester/ run"):
        with pytest.raises(ConfigError, match="not a Hub reference"):
            parse_reference(bad)


def test_push_pull_reload_bit_for_bit(hub, run3, tmp_path):
    result = push(run3, "tester/run3")
    dirs = stage_dirs(run3)
    assert result["stages"] == dirs and result["tags"] == [stage_tag(d) for d in dirs]
    api = HfApi()
    files = set(api.list_repo_files("tester/run3"))
    assert {"README.md", "run.json", "config.yaml", "config.json", "model.safetensors"} <= files
    for d in dirs:
        assert {f"{d}/config.json", f"{d}/model.safetensors", f"{d}/stage.json"} <= files
    assert {t.name for t in api.list_repo_refs("tester/run3").tags} == {stage_tag(d) for d in dirs}

    # model card: metadata with a model-index entry per stage, and the stages table
    card = ModelCard.load("tester/run3")
    assert card.data.library_name == "hfstage" and "hfstage" in card.data.tags
    assert card.data.pipeline_tag is None and card.data.license is None  # no Hub task fits pairs; no license claimed
    results = card.data.to_dict()["model-index"][0]["results"]
    names = {m["name"] for r in results for m in r["metrics"]}
    assert all(f"{d} test accuracy" in names for d in dirs) and {r["task"]["type"] for r in results} == {"image-classification"}
    assert all(f"`{d}`" in card.text for d in dirs) and "pip install hfstage" in card.text
    assert "accelerate launch hfstage/train.py" not in card.text and 'pipeline("pair-classification"' in card.text
    stage_card = ModelCard.load(hf_hub_download("tester/run3", f"{dirs[0]}/README.md"))  # every stage has its own
    assert stage_card.data.to_dict()["model-index"][0]["results"]

    # the root is the best stage; each stage by subfolder and pinned by its tag
    best = json.loads((run3 / "run.json").read_text())["best_stage_dir"]
    assert same_weights(AutoModel.from_pretrained("tester/run3"), AutoModel.from_pretrained(run3 / best))
    for d in dirs:
        remote = AutoModel.from_pretrained("tester/run3", subfolder=d, revision=stage_tag(d))
        assert same_weights(remote, AutoModel.from_pretrained(run3 / d))

    out = pull("tester/run3", tmp_path / "pulled")
    assert stage_dirs(out) == dirs
    for d in dirs:  # same bytes as what was trained
        assert load_file(out / d / "model.safetensors").keys() == load_file(run3 / d / "model.safetensors").keys()
        assert (out / d / "model.safetensors").read_bytes() == (run3 / d / "model.safetensors").read_bytes()
        assert same_weights(AutoModel.from_pretrained(out / d), AutoModel.from_pretrained(run3 / d))
    record = json.loads((out / "run.json").read_text())
    assert record["pulled_from"]["repo_id"] == "tester/run3" and record["config"]["output_dir"] == str(out)
    assert not list(out.parent.glob(".*tmp*"))

    # re-pushing an unchanged run uploads nothing and makes no commit
    commits = hub.commits_made("tester/run3")
    uploads = hub.count("preupload") + hub.count("commit")
    again = push(run3, "tester/run3")
    assert again["uploaded"] == [] and again["tags"] == [] and again["commit"] == result["commit"]
    assert hub.commits_made("tester/run3") == commits and hub.count("preupload") + hub.count("commit") == uploads

    # one stage, by revision
    one = pull("tester/run3", tmp_path / "one", stage="2", revision=stage_tag(dirs[1]))
    assert stage_dirs(one) == [dirs[1]] and json.loads((one / "run.json").read_text())["best_stage_dir"] == dirs[1]
    with pytest.raises(CheckpointError, match="not an empty folder"):
        pull("tester/run3", one)


def test_evaluate_stack_and_continue_from_hf_references(hub, run3, pair_data, tmp_path, monkeypatch, capsys):
    push(run3, "tester/refs")
    dirs = stage_dirs(run3)
    monkeypatch.chdir(tmp_path)
    remote = evaluate_checkpoint(f"hf://tester/refs/{dirs[1]}", str(pair_data), "test")
    local = evaluate_checkpoint(run3 / dirs[1], str(pair_data), "test", out=str(tmp_path / "local_eval"))
    assert remote["metrics"] == local["metrics"]
    assert remote["checkpoint"].startswith("hf://tester/refs@") and remote["checkpoint"].endswith(dirs[1])
    assert (tmp_path / "eval" / "tester--refs" / dirs[1] / "test.json").is_file()  # not in the Hub cache
    assert not (run3 / dirs[1] / "eval").exists()

    # the run reference means its best stage; a tag pins a stage
    best = evaluate_checkpoint("hf://tester/refs", str(pair_data), "val")
    assert best["checkpoint"].endswith(json.loads((run3 / "run.json").read_text())["best_stage_dir"])
    assert cli.main(["evaluate", f"hf://tester/refs@{stage_tag(dirs[0])}/{dirs[0]}", "--data", str(pair_data),
                     "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"]["accuracy"] > 0.4

    assert cli.main(["stack", "--models", f"hf://tester/refs/{dirs[0]}", f"hf://tester/refs/{dirs[2]}",
                     "--data", str(pair_data), "--out", str(tmp_path / "stack"), "--folds", "3", "--meta", "logreg"]) == 0
    meta = json.loads((tmp_path / "stack" / "stack_meta.json").read_text())
    assert all(b["hub"].startswith("hf://tester/refs@") for b in meta["base_models"])
    assert cli.main(["predict", "--stack", str(tmp_path / "stack"), "--data", str(pair_data)]) == 0

    assert cli.main(["continue", "hf://tester/refs", "--out", str(tmp_path / "cont"), "--preset", "fine_tune",
                     "epochs=1"]) == 0
    assert stage_dirs(tmp_path / "cont") == [*dirs, "stage_4_fine_tune"]
    capsys.readouterr()
    assert cli.main(["continue", "hf://tester/refs", "--preset", "fine_tune"]) == 2
    assert "--out" in capsys.readouterr().err


def test_push_during_training_lands_every_stage(hub, pair_data, tmp_path, capsys):
    path = write_recipe(tmp_path / "recipe.yaml", pair_data, tmp_path / "run", STAGES,
                        push_to_hub=True, hub_repo_id="tester/live", hub_private=True)
    final = run(load_config(path))
    dirs = [s.dir for s in final.stages]
    api = HfApi()
    assert api.model_info("tester/live").private
    assert {t.name for t in api.list_repo_refs("tester/live").tags} == {stage_tag(d) for d in dirs}
    files = set(api.list_repo_files("tester/live"))
    assert {"README.md", "run.json", "model.safetensors"} <= files and all(f"{d}/stage.json" in files for d in dirs)
    remote_run = json.loads(Path(api.hf_hub_download("tester/live", "run.json")).read_text())
    assert remote_run["status"] == "finished" and len(remote_run["stages"]) == 3
    # the token never lands in anything the run wrote, nor in what it printed
    for file in (tmp_path / "run").rglob("*"):
        if file.is_file():
            assert HUB_TOKEN.encode() not in file.read_bytes(), file
    captured = capsys.readouterr()
    assert HUB_TOKEN not in captured.out + captured.err


def test_private_repo_without_token_is_refused(hub, run3, pair_data, monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("HF_TOKEN")
    before = tree_digest(run3)
    with pytest.raises(HubError, match="private repository .* needs a token: set HF_TOKEN"):
        push(run3, "tester/secret", private=True)
    assert cli.main(["push", str(run3), "--repo-id", "tester/secret", "--private"]) == 1
    assert "needs a token" in capsys.readouterr().err
    assert "tester/secret" not in hub.repos and tree_digest(run3) == before
    # a private repository is not readable without the token either: one clear error
    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    push(run3, "tester/secret", stage="best", private=True)
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(HubError, match="repository not found .*private"):
        pull("tester/secret", tmp_path / "x")
    assert not (tmp_path / "x").exists()
    path = write_recipe(tmp_path / "r.yaml", pair_data, tmp_path / "live", STAGES, push_to_hub=True,
                        hub_repo_id="tester/nope")
    with pytest.raises(HubError, match="push_to_hub: writing to the Hub .* needs a token"):
        run(load_config(path))
    assert not (tmp_path / "live").exists()


def test_failing_commit_is_retried_then_reported_and_nothing_local_changes(hub, run3):
    before, commits = tree_digest(run3), hub.count("commit")
    hub.fail("commit", 500)
    with pytest.raises(HubError, match=r"commit to tester/flaky: HTTP 500.* after 3 tries"):
        push(run3, "tester/flaky")
    assert hub.count("commit") - commits == 3 and tree_digest(run3) == before
    assert hub.commits_made("tester/flaky") == 1  # only the repository's initial commit
    hub.faults.clear()
    hub.fail("commit", 503, times=1)  # a transient failure: the retry succeeds
    assert push(run3, "tester/flaky")["uploaded"]
    hub.fail("commit", 403)  # not transient: no retry
    commits = hub.count("commit")
    with pytest.raises(HubError, match="tester/forbidden: the token may not do this \\(HTTP 403\\)"):
        push(run3, "tester/forbidden", stage="1", commit_message="x", revision="other")
    assert hub.count("commit") - commits == 1


def test_branch_and_pull_request(hub, run3, tmp_path):
    dirs = stage_dirs(run3)
    push(run3, "tester/branches", stage="1")
    on_dev = push(run3, "tester/branches", stage="all", revision="dev")
    assert set(on_dev["uploaded"]) >= {f"{dirs[2]}/model.safetensors"}
    assert stage_dirs(pull("tester/branches", tmp_path / "dev", revision="dev")) == dirs
    assert stage_dirs(pull("tester/branches", tmp_path / "main")) == [dirs[0]]
    pr = push(run3, "tester/branches", stage="2", create_pr=True)
    assert pr["pr_url"].endswith("/discussions/1") and pr["tags"] == []
    with pytest.raises(CheckpointError, match="--stage '9' is not a finished stage"):
        push(run3, "tester/branches", stage="9")
    with pytest.raises(ConfigError, match="expected OWNER/NAME"):
        push(run3, "hf://tester/branches")


@pytest.mark.slow
def test_cli_push_and_pull_in_subprocesses(hub, run3, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    cmd = [sys.executable, "-m", "hfstage"]
    done = subprocess.run([*cmd, "push", str(run3), "--repo-id", "tester/cli", "--stage", "best"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "tester/cli" in done.stdout and "uploaded" in done.stdout and HUB_TOKEN not in done.stdout + done.stderr
    done = subprocess.run([*cmd, "pull", "hf://tester/cli", "--out", str(tmp_path / "p")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    best = json.loads((run3 / "run.json").read_text())["best_stage_dir"]
    assert stage_dirs(tmp_path / "p") == [best]
    done = subprocess.run([*cmd, "pull", "tester/missing", "--out", str(tmp_path / "q")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "tester/missing: repository not found" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "q").exists()


@pytest.mark.slow
def test_offline_references_resolve_from_a_warm_cache_and_a_closed_port_fails_fast(hub, run3, pair_data, tmp_path):
    import socket
    import time

    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    cmd = [sys.executable, "-m", "hfstage"]
    push(run3, "tester/offline")
    evaluate = [*cmd, "evaluate", "hf://tester/offline", "--data", str(pair_data), "--json"]
    online = subprocess.run(evaluate, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert online.returncode == 0, online.stderr  # the cache is warm now
    requests = len(hub.requests)
    done = subprocess.run(evaluate, env={**env, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["metrics"] == json.loads(online.stdout)["metrics"]
    assert len(hub.requests) == requests  # nothing was asked of the server
    done = subprocess.run([*cmd, "evaluate", "hf://tester/never-downloaded"], env={**env, "HF_HUB_OFFLINE": "1"},
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 1 and "HF_HUB_OFFLINE is set and this is not in the Hub cache" in done.stderr

    with socket.socket() as s:  # a port nobody listens on: connection refused, no retries
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    began = time.time()
    done = subprocess.run([*cmd, "evaluate", "hf://someone/model"], capture_output=True, text=True, timeout=120,
                          env={**env, "HF_ENDPOINT": f"http://127.0.0.1:{closed}", "HFSTAGE_HUB_BACKOFF": "1"},
                          cwd=tmp_path)
    assert done.returncode == 1 and f"could not reach the Hub at http://127.0.0.1:{closed}" in done.stderr
    assert "retry" not in done.stderr and "Traceback" not in done.stderr
    assert time.time() - began < 20  # the interpreter's start-up and imports; the request itself fails at once


def test_network_errors_of_either_http_library_are_classified():
    # huggingface_hub 2.x raises httpx2's errors, 1.x httpx's (seen on a machine with huggingface_hub 1.33,
    # where the client imported httpx2 unconditionally and failed on it)
    from hfstage.hub.client import _is_network_error, _is_unreachable

    for name in ("httpx2", "httpx"):
        lib = pytest.importorskip(name)
        refused, slow = lib.ConnectError("connection refused"), lib.ReadTimeout("slow")
        assert _is_network_error(refused) and _is_unreachable(refused)
        assert _is_network_error(slow) and not _is_unreachable(slow)
        wrapped = RuntimeError("the Hub client's own error")
        wrapped.__cause__ = refused
        assert _is_unreachable(wrapped)
