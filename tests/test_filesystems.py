"""Real filesystem faults, not simulated ones: the run folder lives on a small tmpfs that this test
mounts, then remounts read-only or fills to the last byte while a stage is being saved. Needs the right
to mount (root, as in CI); skipped with the reason elsewhere."""

from __future__ import annotations

import json
import logging
import subprocess

import pytest
from transformers import AutoModel, TrainerCallback

from hfstage.config import load_config
from hfstage.curriculum import run
from hfstage.errors import StageError


@pytest.fixture
def tmpfs(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "hfstage-test", str(mnt)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def remount(mnt, mode: str) -> None:
    if mode == "ro":
        # the kernel refuses to remount read-only while a file on it is open for writing: the run's
        # training.log handler is the one such file, so it is detached first
        for logger in (logging.getLogger("hfstage"), logging.getLogger()):
            for handler in list(logger.handlers):
                if str(getattr(handler, "baseFilename", "")).startswith(str(mnt)):
                    logger.removeHandler(handler)
                    handler.close()
    done = subprocess.run(["mount", "-o", f"remount,{mode}", str(mnt)], capture_output=True, text=True)
    if done.returncode:
        import os

        open_files = [os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
                      if os.path.exists(f"/proc/self/fd/{fd}")]
        raise AssertionError(f"remount {mode} failed: {done.stderr.strip()}; open: {open_files}")


class _AtEndOfStage2(TrainerCallback):
    """Runs ``action`` when stage 2 has trained, just before hfstage saves it."""

    def __init__(self, action):
        self.action = action

    def on_train_end(self, args, state, control, **kwargs):
        if args.stage_index == 2:
            self.action()


def fill(mnt) -> None:
    """Write zeros until the filesystem is full (ENOSPC for real)."""
    with open(mnt / "filler", "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * (1 << 20))
                fh.flush()
        except OSError:
            pass
        try:  # the last partial block
            while True:
                fh.write(b"\0" * 4096)
                fh.flush()
        except OSError:
            pass


def assert_stage_1_intact_and_resumable(out, recipe_path):
    assert not (out / "stage_2_augmentation").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".stage")]  # no half-written stage
    AutoModel.from_pretrained(out / "stage_1_baseline")
    final = run(load_config(recipe_path))  # the same command resumes and finishes
    assert final.status == "finished" and [s.status for s in final.stages] == ["finished"] * 3


def test_read_only_folder_while_saving_a_stage(tmpfs, pair_data, tmp_path):
    from conftest import write_recipe

    path = write_recipe(tmp_path / "recipe.yaml", pair_data, tmpfs / "run")
    with pytest.raises(StageError, match=r"stage 2 'augmentation': could not .*\(Read-only file system\); "
                                         r"earlier stages are intact"):
        run(load_config(path), callbacks=[_AtEndOfStage2(lambda: remount(tmpfs, "ro"))])
    out = tmpfs / "run"
    run_json = json.loads((out / "run.json").read_text())  # could not be updated: still says running
    assert [s["status"] for s in run_json["stages"]][:1] == ["finished"]
    remount(tmpfs, "rw")
    assert_stage_1_intact_and_resumable(out, path)


def test_disk_full_while_saving_a_stage(tmpfs, pair_data, tmp_path):
    from conftest import write_recipe

    path = write_recipe(tmp_path / "recipe.yaml", pair_data, tmpfs / "run")
    with pytest.raises(StageError, match=r"stage 2 'augmentation': could not .*\(No space left on device\); "
                                         r"earlier stages are intact"):
        run(load_config(path), callbacks=[_AtEndOfStage2(lambda: fill(tmpfs))])
    out = tmpfs / "run"
    (tmpfs / "filler").unlink()
    run_json = json.loads((out / "run.json").read_text())
    assert run_json["stages"][0]["status"] == "finished"
    assert_stage_1_intact_and_resumable(out, path)


def test_read_only_output_folder_at_start_is_one_clear_error(tmpfs, pair_data, tmp_path, capsys):
    from conftest import write_recipe

    from hfstage.cli import main

    path = write_recipe(tmp_path / "recipe.yaml", pair_data, tmpfs / "run")
    remount(tmpfs, "ro")
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{tmpfs / 'run'}: the output_dir cannot be written (Read-only file system)" in err
    assert "Traceback" not in err
