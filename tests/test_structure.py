"""The package's shape: hfstage's modules import each other without a cycle, function-level imports included.

An import edge is counted from every ``import`` / ``from ... import`` anywhere in a module (top level or
inside a function) to the hfstage module it names; the parent packages Python initialises on the way are
not counted (importing ``hfstage.losses.base`` runs ``hfstage/losses/__init__.py``, but that is Python's
doing, not a dependency of the importing code).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hfstage"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base for alias in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in files and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_graph_sees_function_level_and_relative_imports():
    graph = import_graph()
    assert "hfstage.losses.base" in graph["hfstage.losses.focal"]
    assert "hfstage.sweeps" in graph["hfstage.cli"]  # imported inside _train


def test_no_import_cycle_in_hfstage():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_run_folder_and_the_hub_stay_below_the_engine():
    graph = import_graph()
    below = ["hfstage.run_dir", "hfstage.hub.refs", "hfstage.hub.client", "hfstage.hub.push", "hfstage.hub.pull"]
    for name in below:
        reached, todo = set(), [name]
        while todo:
            for nxt in graph[todo.pop()] - reached:
                reached.add(nxt)
                todo.append(nxt)
        assert not {"hfstage.curriculum", "hfstage.trainer", "hfstage.evaluation"} & reached, name


def test_the_engine_never_probes_a_task():
    """Every Task hook has a declared default (tasks/base.py): no module asks whether a task has one."""
    import re

    probes = [f"{p.relative_to(PACKAGE.parent)}:{n}" for p in PACKAGE.rglob("*.py")
              for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
              if re.search(r"\b(hasattr|getattr)\((self\.)?task\b", line)]
    assert probes == []


def test_train_stage_is_an_event_loop_and_the_curriculum_runner_stays_small():
    """Stage features live in their steps (hfstage/steps/), not as lines of train_stage (issue #33)."""
    tree = ast.parse((PACKAGE / "stage.py").read_text(encoding="utf-8"))
    [train_stage] = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "train_stage"]
    assert train_stage.end_lineno - train_stage.lineno + 1 <= 80
    assert len((PACKAGE / "curriculum.py").read_text(encoding="utf-8").splitlines()) <= 400
    stage_fields = {"pseudo_labels", "train_on_eval", "early_stopping_patience", "teacher", "freeze_batchnorm",
                    "dropout", "freeze_patterns"}
    read = {n.attr for n in ast.walk(train_stage) if isinstance(n, ast.Attribute) and
            isinstance(n.value, ast.Name) and n.value.id == "stage"}
    assert not read & stage_fields  # the steps read them


def test_tests_mirror_the_modules_the_engine_is_made_of():
    tests = PACKAGE.parent / "tests"
    for module in ("run_dir", "resolve", "sweeps", "preflight", "plan", "surgery", "stage", "steps", "executors",
                   "tasks", "curriculum", "trainer", "config", "search", "reference"):
        assert (tests / f"test_{module}.py").is_file(), f"tests/test_{module}.py"


def test_no_module_but_the_ray_executor_names_ray():
    """Executors are peers behind one interface: Ray is imported and named by executors/ray.py alone."""
    import re

    package = PACKAGE
    named = [f"{p.relative_to(package)}:{n}" for p in package.rglob("*.py") if p != package / "executors" / "ray.py"
             for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
             if re.search(r"""(["'])ray\1|^\s*(import ray\b|from ray\b)""", line)]
    assert named == []


def test_no_module_but_the_search_study_imports_optuna():
    """Optuna is an extra (hfstage[search]): stage_search/study.py is the one module that imports it."""
    import re

    named = [f"{p.relative_to(PACKAGE)}:{n}" for p in PACKAGE.rglob("*.py") if p != PACKAGE / "stage_search" / "study.py"
             for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
             if re.search(r"^\s*(import optuna\b|from optuna\b)", line)]
    assert named == []


def test_import_hfstage_and_help_texts_load_no_heavy_library(finished_run):
    """``import hfstage``, ``hfstage --help``, ``hfstage <verb> --help``, ``hfstage runs list/show/compare`` and
    ``hfstage config --reference`` import neither torch, transformers, timm, datasets nor evaluate (issue #33);
    transformers' Auto classes still know hfstage's models once it is imported."""
    import subprocess
    import sys

    probe = ("import runpy, sys\nimport hfstage\nsys.argv = ['hfstage', *sys.argv[1:]]\ntry:\n"
             "    runpy.run_module('hfstage', run_name='__main__')\nexcept SystemExit:\n    pass\n"
             "print('HEAVY', *[m for m in ('torch', 'transformers', 'timm', 'datasets', 'evaluate') if m in sys.modules])")
    runs = PACKAGE.parent / "tests"  # no run folders there: an empty listing
    for args in (["--help"], ["train", "--help"], ["search", "--help"], ["evaluate", "--help"], ["runs", "--help"],
                 ["runs", "list", str(runs)],
                 ["runs", "show", str(finished_run)], ["runs", "compare", str(finished_run), str(finished_run)],
                 ["config", "--reference"]):
        proc = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and len(proc.stdout.strip().splitlines()) > 1, (args, proc.stderr[-500:])
        assert proc.stdout.strip().splitlines()[-1] == "HEAVY", (args, proc.stdout[-500:], proc.stderr[-500:])
    check = ("import hfstage\nfrom transformers import AutoConfig\nfrom transformers.pipelines import PIPELINE_REGISTRY\n"
             "AutoConfig.for_model('hfstage_pair_cnn')\nassert 'pair-classification' in PIPELINE_REGISTRY.get_supported_tasks()")
    assert subprocess.run([sys.executable, "-c", check], capture_output=True, timeout=300).returncode == 0


def test_pyproject_states_the_versions_the_suite_runs_on():
    """Every requirement's floor is the release the suite runs on (#33: no untested floors): the installed version
    satisfies it, and the floor names the installed major.minor (a newer registry release means raising it)."""
    import tomllib
    from importlib.metadata import PackageNotFoundError, version

    from packaging.requirements import Requirement
    from packaging.version import Version

    project = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["project"]
    requirements = [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]
    checked = 0
    for text in requirements:
        req = Requirement(text)
        try:
            installed = Version(version(req.name))
        except PackageNotFoundError:
            continue  # an extra the suite does not install (wandb is, trackio is, ...)
        assert req.specifier.contains(installed, prereleases=True), (text, str(installed))
        floors = [Version(s.version) for s in req.specifier if s.operator in (">=", "==")]
        assert floors and floors[0].release[:2] == installed.release[:2], (text, str(installed))
        checked += 1
    assert checked >= 25
