"""Shared fixtures: tiny REAL data (MNIST pairs) and small recipes, all on disk in temp folders."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

# huggingface_hub reads HF_HOME, HF_ENDPOINT and HF_HUB_OFFLINE once, when it is imported (test modules
# import it through hfstage), so they are set here, before any import: a private cache, and the Hub
# endpoint on a reserved local port where the `hub` fixture's server listens. Nothing can reach the
# internet, and requests made while no server runs are refused at once.
_HF_HOME = tempfile.mkdtemp(prefix="hfstage-tests-hf-")
with socket.socket() as _s:
    _s.bind(("127.0.0.1", 0))
    HUB_PORT = _s.getsockname()[1]
os.environ.update(HF_HOME=_HF_HOME, HF_HUB_CACHE=str(Path(_HF_HOME) / "hub"), HF_ENDPOINT=f"http://127.0.0.1:{HUB_PORT}",
                  TOKENIZERS_PARALLELISM="false", HF_HUB_DISABLE_TELEMETRY="1")
os.environ.pop("HF_HUB_OFFLINE", None)
os.environ.pop("HF_TOKEN", None)
# trackers: local stores in the same temp folder (trackio reads TRACKIO_DIR when it is imported)
os.environ.update(TRACKIO_DIR=str(Path(_HF_HOME) / "trackio"), MLFLOW_TRACKING_URI=(Path(_HF_HOME) / "mlruns").as_uri())
# subprocesses' temporary folders land in one folder removed at the end: torch elastic leaves one per launch, and a
# process the tests kill leaves those it would have removed at exit (wandb makes two at import). Short, since Ray's
# sockets live under it. This process keeps /tmp (tempfile cached it above), so pytest's tmp_path is unchanged.
_TMPDIR = tempfile.mkdtemp(prefix="hft-")
os.environ["TMPDIR"] = _TMPDIR
# `make test` runs the suite in worker processes side by side (pytest-xdist): each gets its share of the cores
# for torch's threads (and its subprocesses inherit it), instead of every worker spinning one thread per core.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _share = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(_share))
HUB_TOKEN = "hf_hfstageTestToken0123456789abcdef"
# the environment of a 2-process launch with cpu_ddp.yaml: one thread each, and no GPU even where there is one
# (the config would put both ranks on GPUs, and two ranks on a one-GPU machine fail)
CPU_LAUNCH_ENV = {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


@pytest.fixture(autouse=True, scope="session")
def _offline_hf_home():
    os.environ["HF_HUB_OFFLINE"] = "1"  # for subprocesses; the hub tests give theirs an environment without it
    yield
    shutil.rmtree(_HF_HOME, ignore_errors=True)
    shutil.rmtree(_TMPDIR, ignore_errors=True)


@pytest.fixture(scope="session")
def hub_server():
    from hub_server import HubServer

    with HubServer(HUB_TOKEN, port=HUB_PORT) as server:
        yield server


@pytest.fixture
def hub(hub_server, monkeypatch):
    """The local Hub server, with HF_TOKEN set and fast retries; faults cleared after each test."""
    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    monkeypatch.setenv("HFSTAGE_HUB_RETRIES", "2")
    monkeypatch.setenv("HFSTAGE_HUB_BACKOFF", "0.01")
    yield hub_server
    hub_server.faults.clear()
    hub_server.delay.clear()


@pytest.fixture(scope="session")
def pair_data(tmp_path_factory) -> Path:
    """Real MNIST pairs, small: 320 train / 160 val / 160 test pairs."""
    from hfstage.data.prepare import prepare_mnist_pairs

    out = tmp_path_factory.mktemp("mnist_pairs")
    prepare_mnist_pairs(out, seed=0, train_pairs=320, val_pairs=160, test_pairs=160)
    return out


TINY_MODEL = {"type": "pair_cnn", "channels": [4, 8], "feat_dim": 16, "hidden_dim": 16, "dropout": 0.1}


def write_recipe(path: Path, data: Path, output_dir: Path, stages=None, **run_fields) -> Path:
    """A small recipe file; stages default to three quick ones."""
    recipe = {
        "task": "pair_classification",
        "output_dir": str(output_dir),
        "seed": 0,
        "data": {"path": str(data)},
        "model": dict(TINY_MODEL),
        "report_to": ["none"],
        "logging_steps": 5,
        "improvement_threshold": -1,
        "defaults": {"batch_size": 32, "eval_batch_size": 64, "lr": 3e-3},
        "stages": stages
        or [
            {"name": "baseline", "epochs": 1},
            {"name": "augmentation", "epochs": 1, "augmentation": {"shift": 0.1, "swap": 0.5}},
            {"name": "regularization", "epochs": 1, "label_smoothing": 0.1, "dropout": 0.3},
        ],
    }
    recipe.update(run_fields)
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.fixture
def recipe(tmp_path, pair_data):
    def make(stages=None, **run_fields):
        return write_recipe(tmp_path / "recipe.yaml", pair_data, tmp_path / "run", stages, **run_fields)

    return make


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, pair_data) -> Path:
    """A finished 2-stage tiny run, shared read-only by the tests that only look at runs."""
    from hfstage.config import load_config
    from hfstage.curriculum import run

    root = tmp_path_factory.mktemp("finished")
    path = write_recipe(root / "recipe.yaml", pair_data, root / "run",
                        [{"name": "baseline", "epochs": 1}, {"name": "finetune", "epochs": 1, "lr": 1e-3}])
    run(load_config(path))
    return root / "run"


@pytest.fixture(scope="session")
def sequence_data(tmp_path_factory) -> Path:
    """Real UEA JapaneseVowels clips (aeon ships them): 216 train / 54 val / 370 test, 9 classes."""
    from hfstage.data.prepare import prepare_japanese_vowels

    out = tmp_path_factory.mktemp("japanese_vowels")
    prepare_japanese_vowels(out, seed=0)
    return out


def pytest_collection_modifyitems(config, items):
    """The slow tests first (a stable sort): with the suite split over workers (``make test`` runs pytest-xdist's
    worksteal), a long test started last would leave the other workers idle until it ends."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
