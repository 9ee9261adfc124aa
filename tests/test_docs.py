"""The README and docs/ stay true: every hfstage command they show parses with the real command line,
every `--config` recipe they name loads with the overrides they show, and the Python they show runs."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def code_blocks(page: Path, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S)


def shown_commands() -> list[tuple[str, list[str]]]:
    """(page, argv after `hfstage`) for every hfstage command in a bash block (``accelerate launch ...
    hfstage/train.py`` is ``train``; ``-m hfstage`` the module)."""
    found = []
    for page in PAGES:
        for block in code_blocks(page, "bash"):
            for line in block.replace("\\\n", " ").splitlines():
                words = shlex.split(line, comments=True)
                if "hfstage/train.py" in words:
                    found.append((page.name, ["train", *words[words.index("hfstage/train.py") + 1:]]))
                elif "hfstage" in words:
                    found.append((page.name, words[words.index("hfstage") + 1:]))
    return found


def test_the_docs_show_commands_and_the_readme_fits_a_screen():
    assert len(shown_commands()) > 40
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


@pytest.mark.parametrize("page, argv", shown_commands(), ids=lambda v: v if isinstance(v, str) else " ".join(v)[:60])
def test_every_shown_command_parses_and_its_recipe_loads(page, argv, monkeypatch):
    from hfstage.cli import build_parser
    from hfstage.config import load_config, read_yaml
    from hfstage.ensemble import is_stack_job, load_stack_job

    monkeypatch.chdir(ROOT)
    if argv == ["--version"]:
        with pytest.raises(SystemExit) as exit_info:
            build_parser().parse_known_args(argv)
        assert exit_info.value.code == 0
        return
    args, extra = build_parser().parse_known_args(argv)  # argparse exits (a failure) on an unknown verb or flag
    assert all("=" in e and not e.startswith("-") for e in extra), f"{page}: unknown arguments {extra}"
    recipe = getattr(args, "config", None)
    if recipe and (ROOT / recipe).is_file():  # every override names a real field
        load = load_stack_job if is_stack_job(read_yaml(ROOT / recipe)) else load_config
        load(ROOT / recipe, [*args.overrides, *extra])


def test_the_run_folder_python_example_runs(finished_run, capsys):
    [example] = [b for b in code_blocks(ROOT / "docs" / "run-folder.md", "python") if "RunDir" in b]
    exec(example.replace("runs/quickstart", str(finished_run)), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("stage_") and "cross_entropy" in printed[0]
    assert printed[1:] == ["1 baseline finished", "2 finetune finished"]


def test_the_python_api_example_runs(recipe, tmp_path, capsys, monkeypatch):
    import hfstage

    [example] = [b for b in code_blocks(ROOT / "docs" / "python-api.md", "python") if "hfstage.train" in b]
    monkeypatch.chdir(tmp_path)
    exec(example.replace("configs/quickstart.yaml", str(recipe([{"name": "baseline", "epochs": 1}]))), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed[-2] == "finished stage_1_baseline" and printed[-1].startswith("test accuracy 0.")  # after the table
    assert (tmp_path / "runs" / "api" / "stage_1_baseline" / "eval" / "test.json").is_file()
    assert {"train", "evaluate", "predict", "stack", "search", "auto", "push", "pull",
            "load_config"} <= set(hfstage.__all__)
    assert hfstage.auto.__module__ == "hfstage.automl.runner"
    assert hfstage.evaluate.__module__ == "hfstage.api" and hfstage.pull.__module__ == "hfstage.hub.pull"


def test_the_search_python_example_runs(recipe, tmp_path, capsys, monkeypatch):
    [example] = [b for b in code_blocks(ROOT / "docs" / "search.md", "python") if "hfstage.search" in b]
    monkeypatch.chdir(tmp_path)
    path = recipe([{"name": "baseline", "epochs": 1}, {"name": "finetune", "epochs": 1, "lr": 1e-3}])
    exec(example.replace("configs/quickstart.yaml", str(path)).replace("trials=4", "trials=2"), {})
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in printed[-3:-1]] == ["0", "1"] and printed[-1].startswith("best ")
    assert (tmp_path / "runs" / "search_demo" / "best.yaml").is_file()


def test_version_flag(capsys):
    from hfstage import __version__
    from hfstage.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"hfstage {__version__}"


def test_the_extending_page_shows_the_package_the_suite_installs():
    """docs/extending.md quotes tests/fixtures/hfstage_tabular, which tests/test_plugins.py trains as a plug-in."""
    page = (ROOT / "docs" / "extending.md").read_text(encoding="utf-8")
    fixture = ROOT / "tests" / "fixtures" / "hfstage_tabular"
    for path in ("pyproject.toml", "hfstage_tabular/task.py", "hfstage_tabular/model.py"):
        assert (fixture / path).read_text(encoding="utf-8").rstrip() in page, f"docs/extending.md: {path} differs"
