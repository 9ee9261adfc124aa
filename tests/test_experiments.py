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
