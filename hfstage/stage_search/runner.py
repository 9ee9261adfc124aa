"""Run a search: the base once, then trials from its kept checkpoint, each a run folder (docs/search.md).

Layout of ``--out DIR``: ``base/`` (the stages before the searched one, a normal run folder; absent with ``--from``
or for stage 1), ``trial_<k>/`` (a run folder per trial: the base's finished stages linked in, the searched stage
trained from the base's kept checkpoint), ``study.db`` (the Optuna study; another ``--storage`` instead),
``trials.csv``, ``best.yaml``, ``history.png``, ``importance.png``. ``all`` searches every stage in turn, each in
``DIR/search_<stage>/`` from the best trial of the one before, and assembles ``DIR/run/``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from hfstage.checkpoint import atomic_write_text
from hfstage.config import RunConfig, apply_override, build_run_config, read_yaml, stage_number
from hfstage.errors import ConfigError, HfstageError
from hfstage.executors.base import Unit, build_executor
from hfstage.run_dir import RUN_JSON, RunDir, _diff, config_differences, stage_dirname
from hfstage.stage_search import outputs
from hfstage.stage_search.settings import SearchSettings, parse_duration
from hfstage.stage_search.space import Dist, parse_space, space_texts

logger = logging.getLogger("hfstage")


@dataclass
class SearchResult:
    """What ``hfstage.search`` returns: the trials table, the best trial's row and run folder, and the files."""

    out: Path
    metric: str
    rows: list[outputs.TrialRow]
    best: outputs.TrialRow | None
    best_run: Path | None  # the best trial's run folder (``all``: DIR/run, the assembled curriculum)
    best_yaml: Path
    best_values: dict[int, dict[str, Any]] = field(default_factory=dict)  # stage number -> the best values


@dataclass
class Recipe:
    """The recipe as read (overrides applied) and as built."""

    raw: dict[str, Any]
    cfg: RunConfig
    source: str
    config_file: str | None

    def plain(self) -> dict[str, Any]:
        """A copy of the raw recipe without its ``search:`` block (what a base, a trial and best.yaml train)."""
        return copy.deepcopy({k: v for k, v in self.raw.items() if k != "search"})


def load_recipe(config: str | Path | dict[str, Any], overrides: Sequence[str] = ()) -> Recipe:
    if isinstance(config, dict):
        raw, source, config_file = copy.deepcopy(config), "<config>", None
    else:
        raw, source, config_file = read_yaml(config), str(config), str(config)
    for text in overrides:
        apply_override(raw, text)
    cfg = build_run_config(copy.deepcopy(raw), source)
    if cfg.folds or cfg.seeds:
        raise ConfigError(f"{source}: hfstage search trains one run per trial; drop folds/seeds for the search "
                          "(search first, then train the best recipe with folds or seeds)")
    return Recipe(raw, cfg, source, config_file)


def search(config: str | Path | dict[str, Any], stage: str | int, overrides: Sequence[str] = (),
           space: dict[str, str] | Sequence[str] | None = None, **settings: Any) -> SearchResult:
    """Search ``stage`` of a recipe (its number or name, or ``"all"`` for every stage greedily). ``space`` and the
    other keyword arguments are the settings of ``SearchSettings`` (``trials``, ``metric``, ``pruner``, ``timeout``,
    ``out``, ``from_run``, ``through``, ``storage``, ``trials_per_stage``, ``executor``); they override the recipe's
    ``search:`` block."""
    recipe = load_recipe(config, overrides)
    if space is not None and not isinstance(space, dict):
        space = space_texts(parse_space(space))
    unknown = sorted(set(settings) - {f.name for f in dataclasses.fields(SearchSettings)})
    if unknown:
        raise ConfigError(f"search: unknown setting(s) {', '.join(unknown)}")
    chosen = SearchSettings(**recipe.cfg.search).merged(space=space, **settings).check("search")
    if str(stage) == "all":
        return _greedy(recipe, chosen)
    return _search_stage(recipe, _stage(recipe.cfg, stage, "STAGE"), chosen)


def _stage(cfg: RunConfig, token: Any, what: str) -> int:
    names = [s.name for s in cfg.stages]
    number = stage_number(names, str(token))
    if number is None:
        raise ConfigError(f"{what}: {token!r} is not a stage of the recipe (stages: "
                          f"{', '.join(f'{i} {n}' for i, n in enumerate(names, 1))}, or all)")
    return number


# --------------------------------------------------------------------------------------------------
# Trial configs


def trial_raw(recipe: Recipe, base_stages: list[dict], number: int, last: int, values: dict[str, Any]) -> dict:
    """The raw recipe a trial trains: the base's stages as they were saved, then the recipe's stages ``number``
    to ``last`` with the trial's values written into the searched one."""
    raw = recipe.plain()
    raw["stages"] = [*copy.deepcopy(base_stages), *raw["stages"][number - 1:last]]
    return outputs.with_values(raw, {number: values})


def check_space(recipe: Recipe, number: int, space: dict[str, Dist]) -> None:
    """Every value each distribution can give is one the searched stage accepts (a bad key or value exits 2 here,
    before anything trains); model fields only when the searched stage is the first."""
    for key, dist in space.items():
        if key.startswith("model.") and number != 1:
            raise ConfigError(f"--space {key}: model fields are searched with stage 1 only (the model is built "
                              f"there; stage {number} starts from the stage before it)")
        if key in ("name", "description", "init_from"):
            raise ConfigError(f"--space {key}: not a searchable field (it names or places the stage)")
        for value in dist.probes():
            try:
                build_run_config(outputs.with_values(recipe.plain(), {number: {key: value}}), recipe.source)
            except ConfigError as exc:
                raise ConfigError(f"--space {key}={dist.text}: the value {value!r} is refused: {exc}") from None


def seed_trial_folder(base: Path, folder: Path, stage_dirs: list[str]) -> None:
    """A trial's run folder holding the base's finished stages (linked, not copied, where the filesystem allows)."""
    folder.mkdir(parents=True, exist_ok=True)
    if not stage_dirs:
        return
    record = json.loads((base / RUN_JSON).read_text(encoding="utf-8"))
    record.pop("trackers", None)  # the trial is a tracker run of its own, not the base's resumed
    atomic_write_text(folder / RUN_JSON, json.dumps(record, indent=2))
    for name in stage_dirs:
        if not (folder / name).exists():
            shutil.copytree(base / name, folder / name, copy_function=_link)


def _link(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


# --------------------------------------------------------------------------------------------------
# One stage


def _base(recipe: Recipe, number: int, settings: SearchSettings, out: Path) -> tuple[Path | None, list[dict]]:
    """The run folder the trials start from and its first ``number - 1`` stages as saved (None for stage 1)."""
    if number == 1:
        if settings.from_run:
            raise ConfigError("--from: stage 1 starts from nothing; --from is for searching a later stage")
        return None, []
    from hfstage.curriculum import run

    if settings.from_run:
        base = Path(settings.from_run)
        folder = RunDir(base)
        if not folder.is_run():
            raise ConfigError(f"--from {base}: not an hfstage run (no {RUN_JSON})")
        saved = folder.read()
        finished = [e for e in saved.finished() if e.stage_index < number]
        if len(finished) < number - 1:
            raise ConfigError(f"--from {base}: stages 1 to {number - 1} must be finished there (finished: "
                              f"{', '.join(str(e.stage_index) for e in saved.finished()) or 'none'})")
    else:
        base = out / "base"
        raw = recipe.plain()
        raw["stages"] = raw["stages"][:number - 1]
        raw.update(output_dir=str(base), project=search_project(recipe.cfg, number), test_every_stage=False)
        cfg = build_run_config(raw, recipe.source)
        logger.info("search: training the stages before the searched one once, into %s", base)
        run(cfg, recipe.config_file)
        saved = RunDir(base).read()
    stages = saved.config["stages"][:number - 1]
    # its stages are the trials' stages whatever they were; the recipe's defaults only shape the stages after them
    differences = config_differences(saved.config, recipe.cfg, str(RunDir(base).run_json), stages=0,
                                     ignore=("defaults",))
    if differences:
        raise ConfigError(f"--from {base}: that run differs from the recipe beyond its stages ({'; '.join(differences[:5])}); "
                          "the trials would not train what the recipe says")
    return base, stages


def search_project(cfg: RunConfig, number: int) -> str:
    """The tracker project (MLflow experiment, trackio/W&B project) the base and every trial log to."""
    return f"{cfg.project}-search-{cfg.stages[number - 1].name}"


def _direction(recipe: Recipe, metric: str) -> bool:
    """Whether greater is better for ``metric``."""
    if metric == recipe.cfg.metric_for_best_model:
        return recipe.cfg.greater_is_better
    from hfstage.reporting import lower_is_better

    return not lower_is_better(metric)


def _search_stage(recipe: Recipe, number: int, settings: SearchSettings) -> SearchResult:
    from hfstage.stage_search import study as studies

    cfg = recipe.cfg
    name = cfg.stages[number - 1].name
    space = parse_space(settings.space, "--space")
    if not space:
        raise ConfigError("--space: nothing to search; give at least one KEY=DIST (e.g. --space "
                          "lr=loguniform(1e-5,1e-2)) or a search.space block in the recipe")
    last = number if settings.through is None else _stage(cfg, settings.through, "--through")
    if last < number:
        raise ConfigError(f"--through {settings.through}: stage {last} comes before the searched stage {number}")
    check_space(recipe, number, space)
    metric = settings.metric or cfg.metric_for_best_model
    if not metric.startswith("eval_"):
        metric = f"eval_{metric}"
    greater = _direction(recipe, metric)
    timeout = parse_duration(settings.timeout, "--timeout") if settings.timeout else None
    out = Path(settings.out or Path(cfg.output_dir) / f"search_{name}")
    executor = build_executor(settings.executor)
    studies.optuna()  # before anything trains: a missing extra is one line
    base, base_stages = _base(recipe, number, settings, out)
    out.mkdir(parents=True, exist_ok=True)
    storage = settings.storage or f"sqlite:///{(out / 'study.db').resolve()}"
    study_name = f"hfstage-{stage_dirname(number, name)}"
    study = studies.open_study(storage, study_name, "maximize" if greater else "minimize", cfg.seed, settings.pruner)
    identity = {"space": space_texts(space), "stage": number, "through": last, "metric": metric,
                "base": base_stages}
    _check_identity(study, identity, storage)
    states = studies.trial_states()
    _retry_dead(study, states)

    started = time.monotonic()
    slots = executor.slots()
    project = search_project(cfg, number)
    while True:
        trials = study.get_trials(deepcopy=False)
        remaining = settings.trials - _counted(trials, states)
        if remaining <= 0:
            break
        if timeout is not None and time.monotonic() - started > timeout:
            logger.info("search: --timeout %s reached; no new trial starts", settings.timeout)
            break
        batch = []
        for _ in range(min(slots, remaining)):
            trial = study.ask()
            values = {key: dist.suggest(trial, key) for key, dist in space.items()}
            folder = out / f"trial_{trial.number}"
            trial.set_user_attr("folder", str(folder))
            raw = trial_raw(recipe, base_stages, number, last, values)
            raw.update(output_dir=str(folder), project=project, test_every_stage=False)  # test: the best, once
            try:
                trial_cfg = build_run_config(raw, f"{out} trial {trial.number}")
            except ConfigError as exc:  # values each fine alone, refused together
                trial.set_user_attr("error", str(exc))
                study.tell(trial, state=states.FAIL)
                logger.error("search: trial %d: %s", trial.number, exc)
                continue
            seed_trial_folder(base, folder, [stage_dirname(i, s["name"]) for i, s in enumerate(base_stages, 1)])
            callback = studies.PruningCallback(storage, study_name, trial._trial_id, metric, settings.pruner, last)
            logger.info("search: trial %d: %s", trial.number, ", ".join(f"{k}={outputs.value_text(v)}"
                                                                         for k, v in values.items()))
            batch.append((trial, Unit(f"trial_{trial.number}", trial_cfg, recipe.config_file, (callback,)),
                          time.monotonic()))
        error: HfstageError | None = None
        try:
            executor.run([unit for _, unit, _ in batch])
        except HfstageError as exc:
            error = exc
        for trial, unit, began in batch:
            mine = error is not None and (len(batch) == 1 or f"{unit.name} (" in str(error))
            _finish(study, states, trial, unit, number, metric, greater, error if mine else None,
                    time.monotonic() - began)

    rows = _rows(study, states)
    best = _best(rows, greater)
    values = {number: best.params} if best else {}
    result = SearchResult(out, metric, rows, best, Path(best.folder) if best else None, out / outputs.BEST_YAML, values)
    if best is not None:
        best.stage, best.test = evaluate_best_stage(Path(best.folder), number, metric, greater)
    _write_outputs(result, recipe, base_stages, greater, study)
    return result


def evaluate_best_stage(folder: Path, first: int, metric: str, greater: bool) -> tuple[str, dict[str, float]]:
    """The trial's stage that reached its metric (the best of the searched stages), evaluated on the test split once
    (trials train with ``test_every_stage: false``: the search never chooses by the test split). Returns the stage
    folder's name and its test metrics (empty without a test split)."""
    from hfstage.api import evaluate

    folder_run = RunDir(folder)
    records = [r for r in folder_run.records() if r.stage_index >= first and metric in r.metrics]
    chosen = (max if greater else min)(records, key=lambda r: r.metrics[metric])
    if folder_run.config().data.test_file is None:
        return chosen.dir, {}
    result = evaluate(folder / chosen.dir, split="test")
    return chosen.dir, {f"test_{k}": v for k, v in result["metrics"].items()}


def _check_identity(study, identity: dict[str, Any], storage: str) -> None:
    saved = study.user_attrs.get("identity")
    if saved is None:
        # trials queued with Optuna's study.enqueue_trial (values to try first) are welcome; anything else is not ours
        if any(t.state != t.state.WAITING for t in study.get_trials(deepcopy=False)):
            raise ConfigError(f"{storage}: holds a study hfstage did not start; choose another --out or --storage")
        study.set_user_attr("identity", json.loads(json.dumps(identity)))
        return
    differences = _diff(saved, json.loads(json.dumps(identity)))
    if differences:
        raise ConfigError(f"{storage}: this search was started with another space, stage, metric or base "
                          f"({'; '.join(differences[:5])}); rerun it as it was, or choose another --out to start over")


def _retry_dead(study, states) -> None:
    """Trials left running by a process that died: marked failed, each retried once with the same values."""
    retried = {t.user_attrs.get("retry_of") for t in study.get_trials(deepcopy=False)}
    for trial in study.get_trials(deepcopy=False):
        if trial.state == states.RUNNING:
            study.tell(trial.number, state=states.FAIL)
            again = "retry_of" not in trial.user_attrs and trial.number not in retried
            logger.warning("search: trial %d was left running by a process that stopped; marked failed%s",
                           trial.number, ", retried once with the same values" if again else "")
            if again:
                study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})


def _counted(trials, states) -> int:
    """Trials that count toward ``trials``: finished ones and failed ones without a retry (queued trials, retries
    included, count once they ran; ``study.ask`` gives them out first)."""
    retried = {t.user_attrs.get("retry_of") for t in trials}
    return sum(1 for t in trials if t.state in (states.COMPLETE, states.PRUNED)
               or (t.state == states.FAIL and t.number not in retried))


def _finish(study, states, trial, unit: Unit, number: int, metric: str, greater: bool, error: HfstageError | None,
            seconds: float) -> None:
    from hfstage.stage_search import study as studies

    trial.set_user_attr("time_s", round(seconds, 2))
    attrs = studies.fresh_attrs(study, trial)  # written by the unit's callback, maybe in another process
    folder = RunDir(unit.cfg.output_dir)
    records = folder.finished_on_disk(unit.cfg)[number - 1:] if folder.is_run() else []
    values = [r.metrics[metric] for r in records if metric in r.metrics]
    if records and not values and error is None:
        study.tell(trial, state=states.FAIL)
        raise ConfigError(f"--metric {metric}: not among the stage metrics ({', '.join(sorted(records[0].metrics))})")
    if "pruned_at_step" in attrs:
        study.tell(trial, state=states.PRUNED)
        logger.info("search: trial %d pruned at step %d", trial.number, attrs["pruned_at_step"])
    elif error is not None or not values:
        trial.set_user_attr("error", str(error) if error else f"no {metric} recorded in {folder}")
        study.tell(trial, state=states.FAIL)
        logger.error("search: trial %d failed: %s", trial.number, trial.user_attrs.get("error", error))
    else:
        value = max(values) if greater else min(values)
        study.tell(trial, value)
        logger.info("search: trial %d: %s = %.6g", trial.number, metric, value)


def _rows(study, states) -> list[outputs.TrialRow]:
    names = {states.COMPLETE: "complete", states.PRUNED: "pruned", states.FAIL: "failed", states.RUNNING: "running",
             states.WAITING: "waiting"}
    rows = []
    for t in study.get_trials(deepcopy=False):
        value = t.value
        if value is None and t.intermediate_values:
            value = t.intermediate_values[max(t.intermediate_values)]
        rows.append(outputs.TrialRow(t.number, dict(t.params), value, names.get(t.state, str(t.state)),
                                     t.user_attrs.get("time_s"), t.user_attrs.get("pruned_at_step"),
                                     t.user_attrs.get("folder"), t.user_attrs.get("error")))
    return rows


def _best(rows: list[outputs.TrialRow], greater: bool) -> outputs.TrialRow | None:
    done = [r for r in rows if r.state == "complete" and r.metric is not None]
    if not done:
        return None
    return max(done, key=lambda r: r.metric if greater else -r.metric)


def _write_outputs(result: SearchResult, recipe: Recipe, base_stages: list[dict], greater: bool, study) -> None:
    from hfstage.stage_search import study as studies

    out, metric, rows, best = result.out, result.metric, result.rows, result.best
    print(outputs.format_table(rows, metric, best.trial if best else None), flush=True)
    outputs.write_csv(out / outputs.TRIALS_CSV, rows, metric)
    outputs.plot_history(out / outputs.HISTORY_PNG, rows, metric, greater)
    importances = studies.importances(study)
    if importances:
        outputs.plot_importance(out / outputs.IMPORTANCE_PNG, importances, metric)
    else:
        logger.info("search: no importance.png yet (Optuna needs 2 complete trials with different values)")
    if best is None:
        logger.warning("search: no trial completed; no best.yaml")
        return
    raw = recipe.plain()
    number = next(iter(result.best_values))
    if base_stages and base_stages != _built_stages(recipe)[:len(base_stages)]:
        raw["stages"][:len(base_stages)] = copy.deepcopy(base_stages)  # --from a run whose stages differ
    raw = outputs.with_values(raw, result.best_values)
    raw["output_dir"] = str(out / "best")
    outputs.write_best_yaml(result.best_yaml, raw, (
        f"hfstage search: the recipe with trial {best.trial}'s values in stage {number} ({metric} = {best.metric:.6g});\n"
        f"hfstage train --config {result.best_yaml} trains it again"))
    print(f"best trial {best.trial}: {best.stage} {metric} = {best.metric:.6g}{outputs.tested_text(best)}", flush=True)
    logger.info("search: best trial %d: %s; %s", best.trial, best.folder, result.best_yaml)


def _built_stages(recipe: Recipe) -> list[dict]:
    return json.loads(json.dumps(recipe.cfg.to_dict()))["stages"]


# --------------------------------------------------------------------------------------------------
# Every stage, greedily


def _greedy(recipe: Recipe, settings: SearchSettings) -> SearchResult:
    """Search stage 1, keep its best trial, search stage 2 from it, and so on; ``DIR/run`` is the curriculum of the
    best trials and ``DIR/best.yaml`` the recipe with every stage's best values."""
    cfg = recipe.cfg
    out = Path(settings.out or Path(cfg.output_dir) / "search_all")
    per_stage = settings.trials_per_stage or settings.trials
    if settings.from_run or settings.through:
        raise ConfigError("search all: --from and --through are for one stage (all starts from nothing and goes "
                          "through every stage)")
    base: Path | None = None
    values: dict[int, dict[str, Any]] = {}
    results = []
    for number, stage in enumerate(cfg.stages, 1):
        step = dataclasses.replace(settings, trials=per_stage, out=str(out / f"search_{stage.name}"),
                                   from_run=str(base) if base else None)  # --storage: a study per stage there
        logger.info("search all: stage %d '%s' (%d trials)%s", number, stage.name, per_stage,
                    f", from {base}" if base else "")
        result = _search_stage(recipe, number, step)
        if result.best is None:
            raise HfstageError(f"search all: no trial of stage {number} '{stage.name}' completed; see {result.out}")
        base = result.best_run
        values.update(result.best_values)
        results.append(result)
    run_dir = out / "run"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    shutil.copytree(base, run_dir, copy_function=_link)
    folder = RunDir(run_dir)
    record = folder.read()
    record.config["output_dir"] = str(run_dir)
    record.trackers = None  # the best trial's tracker runs stay the trial's
    folder.write(record)
    raw = outputs.with_values(recipe.plain(), values)
    raw["output_dir"] = str(out / "best")
    best_yaml = out / outputs.BEST_YAML
    outputs.write_best_yaml(best_yaml, raw, "hfstage search all: the recipe with every stage's best values;\n"
                            f"{run_dir} holds the curriculum of the best trials")
    rows = [row for r in results for row in r.rows]
    last = results[-1]
    best = dataclasses.replace(last.best)
    best.stage, best.test = evaluate_best_stage(run_dir, 1, last.metric, _direction(recipe, last.metric))
    print(f"search all: best trials {', '.join(str(r.best.trial) for r in results)}; run {run_dir}, best stage "
          f"{best.stage}{outputs.tested_text(best)}", flush=True)
    return SearchResult(out, last.metric, rows, best, run_dir, best_yaml, values)

