"""Work over many finished runs: ``hfstage runs list | show | compare | cleanup | archive``.

Everything is read from ``run.json`` and each stage's ``stage.json``: what a run is, and which of its
stages is best, is recorded there, never guessed from folder names.
"""

from __future__ import annotations

import csv
import fnmatch
import io
import shutil
import tarfile
import time
from pathlib import Path

import yaml

from hfstage.arguments import closest
from hfstage.checkpoint import atomic_write
from hfstage.config import (
    RunConfig,
    apply_override,
    build_run_config,
    stage_number,
    upgrade_saved_stage,
)
from hfstage.errors import CheckpointError, ConfigError
from hfstage.reporting import flatten, format_number, format_table, lower_is_better
from hfstage.run_dir import RUN_JSON, RunDir, RunRecord, StageRecord, format_stage_table

DEFAULT_METRICS = ("eval_loss", "eval_accuracy", "eval_f1", "test_accuracy")
SPEECH_METRICS = ("eval_loss", "eval_per", "eval_prompt_echo_per", "eval_error_f1", "test_per", "test_prompt_echo_per",
                  "test_error_f1")


def load_run(path: str | Path) -> tuple[RunRecord, list[StageRecord]]:
    """(run.json, the stage.json of every finished stage in order)."""
    folder = RunDir(path)
    run = folder.read()
    return run, folder.records(run)


def find_runs(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such folder")
    if (folder / RUN_JSON).is_file():
        return [folder]
    return sorted(p.parent for p in folder.rglob(RUN_JSON) if not any(part.startswith(".") for part in p.parts))


def list_runs_table(folder: str | Path) -> str:
    rows = [("run", "status", "stages", "best_stage", "metric", "value", "test_accuracy", "updated_at")]
    for path in find_runs(folder):
        run, records = load_run(path)
        best = run.best_of(records)
        metric = run.metric_for_best_model
        rows.append((
            str(path), RunDir(path).status(run), f"{len(records)}/{len(run.stages)}", run.best_stage_dir or "-", metric,
            format_number(best.metric(metric)) if best else "-",
            format_number(best.metric("test_accuracy")) if best else "-", run.updated_at or "-",
        ))
    if len(rows) == 1:
        return f"no runs under {folder}"
    return format_table(rows)


def show_run(path: str | Path) -> str:
    run, records = load_run(path)
    status = RunDir(path).status(run)
    if status != run.status:
        status += " (its process is gone; rerun its command to resume)"
    elif run.error and status in ("failed", "interrupted"):
        status += f" in {run.error_stage or 'set-up'}: {run.error}"
    lines = [f"{path}: {status}, task {run.config.get('task')}, model {run.config['model'].get('type')}, "
             f"world size {run.world_size}, tracked {run.metric_for_best_model}"]
    if not records:
        return lines[0] + "\nno finished stage yet"
    lines.append(format_stage_table(records, run.best_stage))
    params = [("stage", "description", "frozen/total", "steps", "samples/s")]
    for r in records:
        params.append((f"{r.stage_index} {r.stage_name}", r.stage_description or "-",
                       f"{r.frozen_parameters}/{r.total_parameters if r.total_parameters is not None else '?'}",
                       str(r.global_steps if r.global_steps is not None else "-"),
                       str(r.train_samples_per_second if r.train_samples_per_second is not None else "-")))
    lines.append(format_table(params))
    return "\n\n".join(lines)


def compare_runs(paths: list[str], metrics: list[str] | None = None, fmt: str = "table") -> str:
    """The best stage of each run side by side; the best value of each metric is marked with *."""
    entries = []
    for path in paths:
        run, records = load_run(path)
        entries.append((path, run, run.best_of(records)))
    speech = any(best and "eval_per" in best.metrics for _, _, best in entries)
    metrics = list(metrics or (SPEECH_METRICS if speech else DEFAULT_METRICS))
    header = ("run", "best_stage", *metrics)
    values = [[best.metric(m) if best else None for m in metrics] for _, _, best in entries]
    marks = []
    for j, m in enumerate(metrics):
        column = [v[j] for v in values if isinstance(v[j], (int, float))]
        target = (min(column) if lower_is_better(m) else max(column)) if column else None
        marks.append(target)
    rows = [header]
    for (path, run, best), vals in zip(entries, values):
        cells = [format_number(v) + ("*" if v is not None and v == marks[j] and len(entries) > 1 else "") for j, v in enumerate(vals)]
        rows.append((str(path), run.best_stage_dir or "-", *cells))
    if fmt == "csv":
        buf = io.StringIO()
        csv.writer(buf).writerows(rows)
        return buf.getvalue().rstrip("\n")
    if fmt == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows[1:]]
        return "\n".join(lines)
    return format_table(rows) + "\n* best value of the column (lowest for losses and error rates)"


def config_differences(paths: list[str], fmt: str = "table") -> str:
    """The resolved config keys (``stages.2.lr``, ``data.path`` ...) whose values differ between the runs."""
    configs = [flatten(load_run(path)[0].config, number_mappings=True) for path in paths]
    keys = sorted({k for c in configs for k in c}, key=lambda k: [int(p) if p.isdigit() else p for p in k.split(".")])
    missing = object()
    differing = [k for k in keys if k not in ("output_dir", "defaults") and not k.startswith("defaults.")
                 and len({repr(c.get(k, missing)) for c in configs}) > 1]
    if not differing:
        return "config: the runs' resolved configs are the same (apart from output_dir)"

    def shown(config, key) -> str:
        value = config.get(key, missing)
        if value is missing:
            return "-"
        return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()

    header = ("config key", *[Path(p).name or str(p) for p in paths])
    rows = [header, *[(k, *[shown(c, k) for c in configs]) for k in differing]]
    if fmt == "markdown":
        return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                         + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows[1:]])
    return "config keys that differ:\n" + format_table(rows)


def _run_score(run: RunRecord, records: list[StageRecord]) -> float | None:
    """The tracked metric of the run's best stage, oriented so that larger is better."""
    metric = run.metric_for_best_model
    best = run.best_of(records)
    value = best.metric(metric) if best else None
    if not isinstance(value, (int, float)):
        return None
    return -value if lower_is_better(metric) else value


def _age_days(run: RunRecord, path: Path) -> float:
    stamp = run.updated_at
    try:
        when = time.mktime(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S")) if stamp else (path / RUN_JSON).stat().st_mtime
    except ValueError:
        when = (path / RUN_JSON).stat().st_mtime
    return (time.time() - when) / 86400


def cleanup_plan(folder: str | Path, days_old: float | None = None, keep_best: int = 1,
                 pattern: str = "*") -> list[tuple[Path, str]]:
    """Runs to delete, with the reason; the best ``keep_best`` runs of every (task, model type) group stay."""
    if keep_best < 0:
        raise ConfigError(f"--keep-best: {keep_best} must be >= 0")
    groups: dict[tuple[str, str], list[tuple[Path, RunRecord, float | None]]] = {}
    for path in find_runs(folder):
        run, records = load_run(path)
        key = (run.config.get("task", "?"), run.config.get("model", {}).get("type", "?"))
        groups.setdefault(key, []).append((path, run, _run_score(run, records)))
    doomed = []
    for (task, model_type), members in sorted(groups.items()):
        ranked = sorted(members, key=lambda m: (m[2] is None, -(m[2] or 0)))
        protected = {m[0] for m in ranked[:keep_best]}
        for path, run, _ in ranked:
            if path in protected or not fnmatch.fnmatch(path.name, pattern):
                continue
            age = _age_days(run, path)
            if days_old is not None and age < days_old:
                continue
            doomed.append((path, f"{task}/{model_type}, {age:.1f} days old, not among the best {keep_best}"))
    return doomed


def cleanup(folder: str | Path, days_old: float | None = None, keep_best: int = 1, pattern: str = "*",
            dry_run: bool = False) -> list[tuple[Path, str]]:
    doomed = cleanup_plan(folder, days_old, keep_best, pattern)
    for path, _ in doomed:
        if not dry_run:
            shutil.rmtree(path)
    return doomed


def archive(runs: list[str], out: str | Path) -> Path:
    """Pack run folders into a .tar.gz that extracts back into normal run folders."""
    out = Path(out)
    for path in runs:
        load_run(path)  # refuse anything that is not a run before writing

    def write(fh) -> None:
        with tarfile.open(fileobj=fh, mode="w:gz") as tar:
            for path in runs:
                tar.add(Path(path), arcname=Path(path).resolve().name)

    atomic_write(out, write, binary=True)
    return out


# --------------------------------------------------------------------------------------------------
# Continue training from a saved stage, as one more curriculum stage

PRESETS_FILE = Path(__file__).resolve().parent / "presets" / "continue.yaml"


def load_presets() -> dict[str, dict]:
    return yaml.safe_load(PRESETS_FILE.read_text())


def continuable_table(folder: str | Path) -> str:
    """Every finished stage of every run under ``folder``: what ``hfstage continue`` can start from."""
    rows = [("run", "stage", "kept", "metric", "value")]
    for path in find_runs(folder):
        run, records = load_run(path)
        metric = run.metric_for_best_model
        for r in records:
            best = " (best)" if r.stage_index == run.best_stage else ""
            rows.append((str(path), f"{r.stage_index} {r.stage_name}{best}", "yes" if r.kept else "no",
                         metric, format_number(r.metric(metric))))
    if len(rows) == 1:
        return f"no finished stages under {folder}"
    presets = ", ".join(load_presets())
    return format_table(rows) + f"\n\nhfstage continue RUN [--from STAGE] --preset {{{presets}}} [key=value ...]"


def continuation_config(run_path: str | Path, preset: str, from_stage: str | None = None,
                        overrides: list[str] | tuple[str, ...] = (), data_dir: str | None = None) -> RunConfig:
    """The run's config with one more stage: the source stage's settings, then the preset, then overrides."""
    run_path = Path(run_path)
    run, records = load_run(run_path)
    if not records:
        raise CheckpointError(f"{run_path}: no finished stage to continue from")
    if from_stage is None:
        source = run.best_of(records) or records[-1]
    else:
        number = stage_number([s.stage_name for s in run.stages], from_stage)
        source = next((r for r in records if r.stage_index == number), None)
        if source is None:
            names = ", ".join(f"{r.stage_index} {r.stage_name}" for r in records)
            raise CheckpointError(f"{run_path}: --from {from_stage!r} is not a finished stage (finished: {names})")
    presets = load_presets()
    if preset not in presets:
        raise ConfigError(f"--preset: unknown preset {preset!r}{closest(preset, presets)}; choose one of {', '.join(presets)}")
    chosen = dict(presets[preset])
    saved_stage = upgrade_saved_stage(source.stage_config)
    stage = {k: v for k, v in saved_stage.items() if k not in ("name", "description", "init_from")}
    lr_scale = chosen.pop("lr_scale", 1.0)
    stage["lr"] = saved_stage["lr"] * lr_scale
    description = chosen.pop("description", preset)
    stage.update(chosen)
    taken = {s.stage_name for s in run.stages}
    name = preset if preset not in taken else next(f"{preset}_{i}" for i in range(2, 1000) if f"{preset}_{i}" not in taken)
    stage.update(name=name, description=f"{description} (from stage {source.stage_index} {source.stage_name})",
                 init_from=str(source.stage_index))
    holder = {"stages": [stage]}
    for text in overrides:
        apply_override(holder, f"stages.1.{text}")
    raw = dict(run.config)
    raw["stages"] = [*raw["stages"], holder["stages"][0]]
    raw["output_dir"] = str(run_path)  # the folder given, wherever the run was made
    raw["quick_test"] = False  # already applied to the saved stages
    if data_dir is not None:
        raw["data"] = {**raw["data"], "path": data_dir}
    raw["defaults"] = upgrade_saved_stage(raw.get("defaults") or {})
    raw["stages"][:-1] = [upgrade_saved_stage(s) for s in raw["stages"][:-1]]
    return build_run_config(raw, str(run_path / RUN_JSON))
