"""A stacking job as one recipe: ``hfstage train --config configs/pairs_stack.yaml``.

A stacking recipe lists base recipes (each a recipe file plus overrides, optionally ``folds: N``) and the
meta-learner. Training it trains every base that is not finished yet, each in ``<output_dir>/<name>`` (a run
folder like any other), then stacks them into ``<output_dir>`` (``stack.json``, ``stack_meta.json``, the
fitted meta-learner). A rerun skips finished bases and resumes an interrupted one, so the job resumes as a
whole. Top-level ``data``, ``quick_test``, ``quick_test_samples``, ``report_to``, ``project`` and
``logging_steps`` (in the file or as ``key=value`` on the command line) apply to every base, so the whole
ensemble reruns on another data set with one command::

    hfstage train --config configs/pairs_stack.yaml data.path=data/other_pairs output_dir=runs/other_stack

Layout::

    <output_dir>/<base name>/   each base's run folder (k-fold bases: fold_<k>/, oof.npy, cv.json ...)
    <output_dir>/stack.json     the table's rows (``methods``), the saved ``meta_learner``
    <output_dir>/stack_meta.json, meta_*.json|txt, predictions.npz   the fitted stack (``hfstage stack``'s)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import typing
from pathlib import Path
from typing import Any

from hfstage.arguments import closest, coerce
from hfstage.config import EXECUTOR_KEYS, apply_override, load_config, read_yaml
from hfstage.executors import build_executor, executor_spec, fans_out
from hfstage.errors import ConfigError
from hfstage.stacking import META_CHOICES

logger = logging.getLogger("hfstage")

SHARED_KEYS = ("data", "quick_test", "quick_test_samples", "report_to", "project", "logging_steps")
BASE_KEYS = ("name", "recipe", "overrides", "folds")


@dataclasses.dataclass
class BaseRecipe:
    """One base model of the stack: a recipe file, its overrides, and optionally k-fold training."""

    name: str
    recipe: str
    overrides: list[str]
    folds: int = 0


@dataclasses.dataclass
class StackJob:
    output_dir: str
    bases: list[BaseRecipe]
    shared: list[str]  # overrides every base gets (data.*, quick_test ...)
    meta: str = "auto"
    meta_folds: int = 5
    meta_train_samples: int | None = None
    agreement: bool = False
    passthrough: bool = False
    train_split: str | None = None  # default val; refused when every base is k-fold (their OOF is used)
    executor: dict = dataclasses.field(default_factory=lambda: {"type": "local"})  # where the bases' units train
    test_split: str = "test"
    seed: int = 0


JOB_FIELDS = {f.name for f in dataclasses.fields(StackJob)} - {"bases", "shared"}


def is_stack_job(raw: dict) -> bool:
    return isinstance(raw, dict) and "bases" in raw


def _as_overrides(value: Any, where: str) -> list[str]:
    """A mapping ``{key: value}`` or a list of ``key=value`` strings -> ``key=value`` strings."""
    if value is None:
        return []
    if isinstance(value, dict):
        # a dotted key sets its value as given ({model.params: {C: 0.1}} replaces model.params); a nested mapping
        # sets single keys ({model: {estimator: logreg}} is model.estimator=logreg, as on the command line)
        out = []
        for k, v in value.items():
            out += [f"{k}={json.dumps(v)}"] if "." in str(k) else _flatten_shared(str(k), v)
        return out
    if isinstance(value, list) and all(isinstance(v, str) and "=" in v for v in value):
        return list(value)
    raise ConfigError(f"{where}: expected a mapping of recipe keys or a list of key=value strings, got {value!r}")


def _flatten_shared(key: str, value: Any) -> list[str]:
    if isinstance(value, dict):
        return [text for k, v in value.items() for text in _flatten_shared(f"{key}.{k}", v)]
    return [f"{key}={json.dumps(value)}"]


def load_stack_job(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> StackJob:
    """Read a stacking recipe, apply command-line overrides, check every field and every base recipe."""
    path = Path(path)
    raw = read_yaml(path)
    for text in overrides:
        apply_override(raw, text)
    where = str(path)
    known = set(JOB_FIELDS) | set(SHARED_KEYS) | {"bases"}
    for key in raw:
        if key not in known:
            raise ConfigError(f"{where}: {key}: not a stacking-recipe field{closest(key, sorted(known))} (a stacking "
                              f"recipe has bases, {', '.join(sorted(JOB_FIELDS))} and, for every base, "
                              f"{', '.join(SHARED_KEYS)})")
    bases_raw = raw.get("bases")
    if not isinstance(bases_raw, list) or len(bases_raw) < 2:
        raise ConfigError(f"{where}: bases: a stack needs a list of at least two base recipes")
    shared = [text for key in SHARED_KEYS if key in raw for text in _flatten_shared(key, raw[key])]
    bases, names = [], set()
    for i, entry in enumerate(bases_raw, 1):
        at = f"{where}: bases.{i}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{at}: expected a mapping with name and recipe, got {entry!r}")
        for key in entry:
            if key not in BASE_KEYS:
                raise ConfigError(f"{at}.{key}: not a base field{closest(key, BASE_KEYS)} (choose from "
                                  f"{', '.join(BASE_KEYS)})")
        name, recipe = entry.get("name"), entry.get("recipe")
        if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
            raise ConfigError(f"{at}.name: a folder name for the base's run, got {name!r}")
        if name in names:
            raise ConfigError(f"{at}.name: {name!r} is used twice")
        names.add(name)
        if not isinstance(recipe, str):
            raise ConfigError(f"{at}.recipe: the base's recipe file (relative to {path.parent}), got {recipe!r}")
        recipe_path = Path(recipe) if Path(recipe).is_absolute() else path.parent / recipe
        if not recipe_path.is_file():
            raise ConfigError(f"{at}.recipe: {recipe_path} not found")
        folds = entry.get("folds", 0)
        if not isinstance(folds, int) or isinstance(folds, bool) or (folds != 0 and folds < 2):
            raise ConfigError(f"{at}.folds: must be 0 (no folds) or >= 2, got {folds!r}")
        bases.append(BaseRecipe(name, str(recipe_path), _as_overrides(entry.get("overrides"), f"{at}.overrides"), folds))
    types = typing.get_type_hints(StackJob)
    job = StackJob(output_dir="runs/stack", bases=bases, shared=shared)
    for key in set(raw) & set(EXECUTOR_KEYS):
        raise ConfigError(f"{where}: {key}: belongs to the executor now: executor: {{type: ..., {EXECUTOR_KEYS[key]}: "
                          f"{raw[key]}}}")
    for key in JOB_FIELDS & set(raw):
        setattr(job, key, executor_spec(raw[key], f"{where}: executor") if key == "executor" else
                coerce(raw[key], types[key], f"{where}: {key}"))

    if job.meta not in META_CHOICES:
        raise ConfigError(f"{where}: meta: {job.meta!r}; choose one of {', '.join(META_CHOICES)}")
    if job.meta_folds < 2:
        raise ConfigError(f"{where}: meta_folds: {job.meta_folds} must be >= 2")
    if job.meta_train_samples is not None and job.meta_train_samples < 2 * job.meta_folds:
        raise ConfigError(f"{where}: meta_train_samples: {job.meta_train_samples} is too few for {job.meta_folds} folds")
    for base in bases:  # every base recipe loads with its overrides now, before anything trains
        base_config(job, base)
    return job


def base_config(job: StackJob, base: BaseRecipe):
    """The base's RunConfig: its recipe, its overrides, then the job's shared ones and its folder."""
    extra = [f"output_dir={Path(job.output_dir) / base.name}"] + ([f"folds={base.folds}"] if base.folds else [])
    cfg = load_config(base.recipe, [*base.overrides, *job.shared, *extra])
    if cfg.seeds:
        raise ConfigError(f"{base.recipe}: seeds: a stack base is one model; list each seed as its own base "
                          f"(overrides: {{seed: N}})")
    if cfg.fold is not None:
        raise ConfigError(f"{base.recipe}: fold: a stack base trains all its folds")
    return cfg


def check_base(base: BaseRecipe, cfg) -> None:
    """What ``hfstage plan`` checks of a recipe (its model builds, its stages fit the task and the model), for one
    base, so a mistake in the last base stops the job before the first one trains."""
    from hfstage.models import build_model
    from hfstage.preflight import check_stages
    from hfstage.tasks import TASKS

    try:
        check_stages(cfg, TASKS.get(cfg.task, "task")(), build_model(cfg.model))
    except ConfigError as exc:
        raise ConfigError(f"base '{base.name}' ({base.recipe}): {exc}") from None


def base_finished(cfg) -> bool:
    """Whether the base's run (every fold and its out-of-fold files, for a k-fold base) is finished with this
    very config."""
    from hfstage.executors import run_finished
    from hfstage.run_dir import CV_JSON, config_differences

    if not cfg.folds:
        return run_finished(cfg)
    cv = Path(cfg.output_dir) / CV_JSON
    try:
        saved = json.loads(cv.read_text(encoding="utf-8")).get("config")
    except (OSError, ValueError):
        return False
    return isinstance(saved, dict) and not config_differences(saved, cfg, str(cv))


def plan_stack_job(job: StackJob) -> str:
    """``hfstage plan`` of a stacking recipe: each base's plan, then the stack's settings."""
    from hfstage.plan import plan

    parts = []
    for i, base in enumerate(job.bases, 1):
        cfg = base_config(job, base)
        folds = f", {base.folds} folds" if base.folds else ""
        state = "finished, skipped" if base_finished(cfg) else "to train"
        parts.append(f"## base {i}/{len(job.bases)} '{base.name}' ({base.recipe}{folds}; {state})\n{plan(cfg)}")
    meta = (f"## stack into {job.output_dir}: meta {job.meta}, {job.meta_folds}-fold CV on the "
            f"{'out-of-fold predictions' if all(b.folds for b in job.bases) else repr(job.train_split or 'val') + ' split'}"
            f"{f' (first {job.meta_train_samples})' if job.meta_train_samples else ''}, test {job.test_split!r}")
    return "\n\n".join(parts + [meta])


def run_stack_job(job: StackJob) -> dict:
    """Train the missing bases, then stack them; returns ``stack.json``'s record."""
    from hfstage.devices import distributed_state
    from hfstage.stacking import format_stack, stack
    from hfstage.sweeps import run_seeds

    state = distributed_state()
    configs = [base_config(job, base) for base in job.bases]
    for base, cfg in zip(job.bases, configs):  # every base's model and stages, before any base trains
        check_base(base, cfg)
    if fans_out(job.executor):  # the bases' runs side by side, then each k-fold base's out-of-fold files
        from hfstage.sweeps import join_units, leaf_units

        units, joins = [], []
        for base, cfg in zip(job.bases, configs):
            if not base_finished(cfg):
                more, per_seed = leaf_units(cfg, base.recipe, prefix=base.name)
                units += more
                joins += [one for one in per_seed if one.folds]
        build_executor(job.executor).run(units)
        join_units(joins)
    else:
        for i, (base, cfg) in enumerate(zip(job.bases, configs), 1):
            if base_finished(cfg):
                logger.info("base %d/%d '%s': finished, skipped (%s)", i, len(job.bases), base.name, cfg.output_dir)
                continue
            logger.info("base %d/%d '%s': training %s%s", i, len(job.bases), base.name, base.recipe,
                        f" ({base.folds} folds)" if base.folds else "")
            run_seeds(cfg, config_file=base.recipe)
    result = None
    if state.is_main_process:
        result = stack([str(Path(job.output_dir) / b.name) for b in job.bases], job.output_dir, meta=job.meta,
                       folds=job.meta_folds, agreement=job.agreement, passthrough=job.passthrough,
                       train_split=job.train_split, test_split=job.test_split, seed=job.seed,
                       meta_train_samples=job.meta_train_samples)
        print(format_stack(result), flush=True)
    state.wait_for_everyone()
    return result
