import json
import shutil

import pytest

from hfstage.cli import main


def test_runs_list_show_compare(finished_run, tmp_path, capsys):
    other = tmp_path / "runs" / "other"
    shutil.copytree(finished_run, tmp_path / "runs" / "first")
    shutil.copytree(finished_run, other)
    run_json = json.loads((other / "run.json").read_text())
    best = other / run_json["best_stage_dir"] / "stage.json"
    record = json.loads(best.read_text())
    record["metrics"]["eval_accuracy"] = 1.0  # make `other` the better run on accuracy
    best.write_text(json.dumps(record))

    assert main(["runs", "list", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "runs/first" in out and "runs/other" in out and "2/2" in out

    assert main(["runs", "show", str(other)]) == 0
    out = capsys.readouterr().out
    assert "1 baseline" in out and "2 finetune" in out and "frozen/total" in out

    assert main(["runs", "compare", str(tmp_path / "runs/first"), str(other), "--metric", "eval_accuracy",
                 "--format", "csv"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "run,best_stage,eval_accuracy"
    assert lines[2].endswith("1.0000*") and not lines[1].endswith("*")


def test_runs_on_a_folder_without_runs(tmp_path, capsys):
    assert main(["runs", "list", str(tmp_path)]) == 0
    assert "no runs under" in capsys.readouterr().out
    assert main(["runs", "show", str(tmp_path)]) == 2
    assert "not an hfstage run" in capsys.readouterr().err


def make_group(finished_run, root, scores):
    """Copies of a real run whose best stage's eval_loss is set to each score (lower is better)."""
    paths = []
    for i, loss in enumerate(scores):
        dest = root / f"exp_{i}"
        shutil.copytree(finished_run, dest)
        run_json = json.loads((dest / "run.json").read_text())
        stage_json = dest / run_json["best_stage_dir"] / "stage.json"
        record = json.loads(stage_json.read_text())
        record["metrics"]["eval_loss"] = loss
        stage_json.write_text(json.dumps(record))
        run_json["updated_at"] = "2020-01-01T00:00:00"
        (dest / "run.json").write_text(json.dumps(run_json))
        paths.append(dest)
    return paths


def test_cleanup_dry_run_and_keep_best(finished_run, tmp_path, capsys):
    root = tmp_path / "runs"
    paths = make_group(finished_run, root, [0.5, 0.1, 0.3, 0.9])
    assert main(["runs", "cleanup", str(root), "--keep-best", "2", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would delete" in out and "2 run(s) would delete" in out
    assert all(p.exists() for p in paths)  # dry run: nothing deleted
    assert main(["runs", "cleanup", str(root), "--keep-best", "2", "--days-old", "30"]) == 0
    assert [p.exists() for p in paths] == [False, True, True, False]  # the two lowest losses stay
    assert main(["runs", "cleanup", str(root), "--keep-best", "0", "--pattern", "exp_2"]) == 0
    assert [p.exists() for p in paths] == [False, True, False, False]


def test_cleanup_spares_recent_runs(finished_run, tmp_path):
    from hfstage.experiments import cleanup_plan

    assert cleanup_plan(finished_run.parent, days_old=1, keep_best=0) == []  # finished minutes ago


def test_archive_round_trip(finished_run, tmp_path, capsys):
    import tarfile

    out = tmp_path / "backup.tar.gz"
    assert main(["runs", "archive", str(finished_run), "--out", str(out)]) == 0
    with tarfile.open(out) as tar:  # every member a plain file or folder under the archive's one folder
        members = tar.getmembers()
        assert all((m.isfile() or m.isdir()) and not m.name.startswith(("/", "..")) and ".." not in m.name.split("/")
                   for m in members)
        assert {m.name.split("/")[0] for m in members} == {finished_run.name}
        tar.extractall(tmp_path / "restored")  # (no filter=: Python 3.11.2, Debian 12's own, predates it)
    restored = tmp_path / "restored" / finished_run.name
    assert main(["runs", "show", str(restored)]) == 0
    assert "2 finetune" in capsys.readouterr().out
    assert main(["runs", "archive", str(tmp_path), "--out", str(tmp_path / "x.tar.gz")]) == 2
    assert not (tmp_path / "x.tar.gz").exists()


def test_continue_appends_a_stage_from_the_chosen_stage(finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    assert main(["continue", "--list", str(tmp_path)]) == 0
    listed = capsys.readouterr().out
    assert "1 baseline" in listed and "--preset {fine_tune, regularization, exploration}" in listed

    source = json.loads((run / "stage_1_baseline/stage.json").read_text())
    assert main(["continue", str(run), "--from", "baseline", "--preset", "fine_tune", "epochs=2"]) == 0
    new = json.loads((run / "stage_3_fine_tune/stage.json").read_text())
    assert new["started_from"] == "stage_1_baseline"
    assert new["stage_config"]["lr"] == pytest.approx(source["stage_config"]["lr"] * 0.1)
    assert new["stage_config"]["epochs"] == 2 and new["stage_config"]["augmentation"] == {}
    assert new["global_steps"] == 20  # 320 pairs / 32 * 2 epochs
    run_json = json.loads((run / "run.json").read_text())
    assert [s["stage_name"] for s in run_json["stages"]] == ["baseline", "finetune", "fine_tune"]
    assert run_json["status"] == "finished"
    # the same preset again gets a fresh name and starts from the best stage by default
    assert main(["continue", str(run), "--preset", "exploration"]) == 0
    again = json.loads((run / "stage_4_exploration/stage.json").read_text())
    assert again["started_from"] == run_json["best_stage_dir"]
    assert again["stage_config"]["scheduler"] == "cosine_with_restarts"


@pytest.mark.parametrize("args, message", [
    (["--preset", "fine_tuning"], "unknown preset 'fine_tuning' (did you mean 'fine_tune'?)"),
    (["--preset", "fine_tune", "--from", "7"], "--from '7' is not a finished stage"),
    (["--preset", "fine_tune", "lr=-1"], "lr: -1.0 must be > 0"),
    (["--preset", "fine_tune", "lrr=1"], "lrr: unknown key (did you mean 'lr'?)"),
    ([], "give a RUN folder and --preset"),
])
def test_continue_refuses_bad_requests(finished_run, tmp_path, capsys, args, message):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = sorted(p.name for p in run.iterdir())
    assert main(["continue", str(run), *args]) == 2
    assert message in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == before


def test_a_run_from_a_newer_hfstage_is_refused_everywhere(finished_run, tmp_path, capsys):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    record = json.loads((run_dir / "run.json").read_text())
    record["format_version"] = 99
    (run_dir / "run.json").write_text(json.dumps(record))
    before = (run_dir / "run.json").read_bytes()
    for argv in (["evaluate", str(run_dir)], ["runs", "show", str(run_dir)], ["push", str(run_dir), "--repo-id", "a/b"]):
        assert main(argv) == 2
        assert "format_version 99 was written by a newer hfstage" in capsys.readouterr().err
    from hfstage.config import config_from_dict
    from hfstage.curriculum import run
    from hfstage.errors import ConfigError

    with pytest.raises(ConfigError, match="newer hfstage"):
        run(config_from_dict({**record["config"], "output_dir": str(run_dir)}, "run.json"))
    assert (run_dir / "run.json").read_bytes() == before


OLD_FLAT_LOSS_FIELDS = {"focal_alpha": 1.0, "focal_gamma": 3.0, "arcface_margin": 0.5, "ctc_weight": 1.0,
                        "error_weight": 1.0, "error_loss": "bce", "error_pos_weight": 1.0, "distill_temperature": 4.0,
                        "distill_alpha": 0.5}


def test_a_run_saved_with_flat_loss_fields_resumes_evaluates_and_continues(recipe, tmp_path, capsys):
    """Runs written before losses owned their parameters (``loss: focal`` + ``focal_gamma: 3`` in run.json and
    stage.json) are read in today's form: the same recipe, written the new way, resumes them."""
    one = [{"name": "baseline", "epochs": 1, "loss": {"type": "focal", "gamma": 3.0}}]
    assert main(["train", "--config", str(recipe(stages=one))]) == 0
    out = tmp_path / "run"
    run_json, stage_json = out / "run.json", out / "stage_1_baseline/stage.json"
    run, stage = json.loads(run_json.read_text()), json.loads(stage_json.read_text())
    for saved in (run["config"]["stages"][0], stage["stage_config"]):  # as the older hfstage wrote them
        saved.update(loss="focal", teacher=None, **OLD_FLAT_LOSS_FIELDS)
    run_json.write_text(json.dumps(run))
    stage_json.write_text(json.dumps(stage))
    assert main(["evaluate", str(out)]) == 0
    two = [*one, {"name": "more", "epochs": 1}]
    assert main(["train", "--config", str(recipe(stages=two))]) == 0  # not "a different run"
    assert json.loads(stage_json.read_text()) == stage  # stage 1 was not retrained
    assert (out / "stage_2_more/stage.json").is_file()
    assert main(["continue", str(out), "--from", "1", "--preset", "fine_tune"]) == 0
    continued = json.loads((out / "stage_3_fine_tune/stage.json").read_text())
    assert continued["stage_config"]["loss"] == {"type": "focal", "alpha": 1.0, "gamma": 3.0}
    assert continued["stage_config"]["teacher"] is None
