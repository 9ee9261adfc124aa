import json
import shutil

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
    with tarfile.open(out) as tar:
        tar.extractall(tmp_path / "restored", filter="data")
    restored = tmp_path / "restored" / finished_run.name
    assert main(["runs", "show", str(restored)]) == 0
    assert "2 finetune" in capsys.readouterr().out
    assert main(["runs", "archive", str(tmp_path), "--out", str(tmp_path / "x.tar.gz")]) == 2
    assert not (tmp_path / "x.tar.gz").exists()
