"""``hfstage auto``: the best ensemble a time budget buys (docs/auto.md).

The work is a sequence of units (``budget.Unit``), each started only when the cost model says it can finish in the
time left:

1. **quick**: every portfolio recipe in quick mode (one epoch per stage on at most 2,000 samples), in the
   portfolio's order (score per second on the development sets);
2. **full**: the recipes in full, best quick score per estimated second first (preset ``quick``: only the best,
   and the best single model is the answer);
3. **search** (preset ``best``, Optuna installed): the first stage of the best full recipe with a ``search:``
   block (``hfstage search``, each trial through the last stage), as many trials as fit a third of the time left;
4. **bag** (preset ``best``): k-fold bagging (``folds: N``) while units fit: the searched recipe with its best
   values, the full recipes by eval score, then the first of those with two more seeds;
5. **stack**: the bags' out-of-fold predictions (two or more bags), else every full model's predictions of the
   validation split (a ``train_on_eval`` refit, which trained on them, left out), stacked with ``--meta auto``; the
   stack is the answer only when its CV accuracy beats the best single member's beyond fold noise (one binomial
   standard error), else the best single model by eval is. Speech has no stack: its answer is the best model.

A unit still running at the deadline stops after its current stage (its kept stages stand). Everything lives in
DIR: ``models/<unit>/`` (run folders), ``search/<recipe>/``, ``stack/``, ``leaderboard.csv``, ``auto.json`` (the
decisions, estimates beside actual times, the final answer). A rerun of the same command continues: finished units
are read, not retrained, and the budget is the total over every run of DIR.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from hfstage.automl import AUTO_JSON
from hfstage.automl.budget import Budget, CostModel, DeadlineCallback, OutOfTime, Unit, next_unit
from hfstage.automl.detect import detect
from hfstage.automl.portfolio import Candidate, Portfolio, portfolio_for
from hfstage.checkpoint import atomic_write_json, read_json
from hfstage.config import apply_override, build_run_config
from hfstage.errors import ConfigError, HfstageError
from hfstage.reporting import lower_is_better

logger = logging.getLogger("hfstage")

PRESETS = ("quick", "best")
QUICK_SAMPLES = 2000
RESERVE = 0.05  # share of the budget kept for the stack, the leaderboard and the card ...
RESERVE_S = (8.0, 0.25)  # ... at least this many seconds (a stack reads every member's predictions), at most this share
TASK_METRIC = {"speech_assessment": "error_f1"}
SEEDS = (1, 2)  # the extra seeds the best bag is trained with when time is left
STACKABLE = ("pair_classification", "sequence_classification", "image_classification")
ADOPTED = ("quick", "full", "bag")  # the kinds of unit adopt_earlier takes over (a search resumes its own study)


@dataclass
class Model:
    """A finished (or deadline-stopped) unit that can answer: a run folder, or a k-fold bag."""

    name: str
    kind: str  # quick, full, search, bag
    candidate: str
    path: Path
    overrides: list[str]
    fit_seconds: float
    stopped: bool = False


def reserve_s(budget_s: float) -> float:
    """The seconds kept at the end of a budget for the stack, the leaderboard and the card: 5% of it, but at least
    8 s (stacking two bags took 6 s on a loaded 2-core machine, where 5% of a 40 s budget is 2 s), and at most a
    quarter of it."""
    floor, cap = RESERVE_S
    return min(cap * budget_s, max(RESERVE * budget_s, floor))


def estimate_seconds(seconds: float) -> float:
    """An estimate as auto.json records it: three significant digits, so the estimate of a unit that takes a
    fraction of a second (a bag of logistic regressions) stays positive instead of rounding to 0.0."""
    return float(f"{seconds:.3g}")


@dataclass
class AutoResult:
    out: Path
    task: str
    metric: str
    models: list[Model]
    final: dict[str, Any]
    leaderboard: list[dict[str, Any]]
    decisions: list[dict[str, Any]] = field(default_factory=list)


class Progress:
    """One line per decision on stderr; on a TTY also a bar of the budget spent."""

    def __init__(self, budget: Budget, stream=None):
        self.budget, self.stream = budget, stream or sys.stderr

    def line(self, text: str) -> None:
        logger.info(text)
        if self.stream.isatty():
            spent = 1 - self.budget.left() / max(self.budget.seconds, 1e-9)
            bar = "#" * int(30 * spent)
            print(f"\r[{bar:<30}] {100 * spent:3.0f}% of the budget  ", file=self.stream, flush=True)


class Auto:
    def __init__(self, data: str, budget_s: float, task: str | None, out: Path, metric: str | None,
                 executor: dict | None, preset: str, overrides: Sequence[str], clock=time.monotonic):
        if preset not in PRESETS:
            raise ConfigError(f"--preset: {preset!r}; choose one of {', '.join(PRESETS)}")
        self.out, self.preset, self.overrides, self.executor = out, preset, list(overrides), executor
        self.detection = detect(data, task)
        self.task = self.detection.task
        self.portfolio: Portfolio = portfolio_for(self.task)
        self.metric = metric or TASK_METRIC.get(self.task, "accuracy")
        self.greater = not lower_is_better(self.metric)
        self.state = self._read_state(data, budget_s)
        spent = float(self.state.get("spent_s", 0.0))
        if spent >= budget_s:
            raise ConfigError(f"--budget: {out} has already spent {spent / 60:.1f} min of it; give a larger budget "
                              "to continue")
        self.clock, self.spent_before = clock, spent
        self.budget = Budget(budget_s - spent, margin=0.1, clock=clock)
        self.train_deadline = self.budget.deadline - reserve_s(budget_s)
        self.cost = CostModel({c.name: c.rate for c in self.portfolio.candidates})
        self.samples = self.detection.samples
        self.progress = Progress(self.budget)
        self.models: dict[str, Model] = {}
        self.tuned: tuple[str, list[str]] | None = None  # the searched recipe and its best values as overrides
        self._check_recipes()

    # --- state ---------------------------------------------------------------------------------------------------
    def _read_state(self, data: str, budget_s: float) -> dict[str, Any]:
        path = self.out / AUTO_JSON
        identity = {"data": str(data), "task": self.task, "preset": self.preset, "metric": self.metric,
                    "overrides": self.overrides}
        if not path.is_file():
            return {"format_version": 1, **identity, "budget_s": budget_s, "spent_s": 0.0, "decisions": []}
        state = read_json(path)
        changed = [f"{k}: {state.get(k)!r} -> {v!r}" for k, v in identity.items() if state.get(k) != v]
        if changed:
            raise ConfigError(f"{path}: this folder holds an auto run of other settings ({'; '.join(changed)}); "
                              "give another --out, or the same settings to continue it")
        state["budget_s"] = budget_s
        return state

    def _save(self, final: dict | None = None) -> None:
        if final is not None:
            self.state["final"] = final
        atomic_write_json(self.out / AUTO_JSON, self.state)

    def decide(self, action: str, unit: str | None, why: str, **extra: Any) -> None:
        self.progress.line(why)
        self.state["decisions"].append({"at_s": round(self.elapsed(), 1), "action": action, "unit": unit,
                                        "why": why, **extra})
        self._save()

    def elapsed(self) -> float:
        """Seconds spent on DIR over every run of it."""
        return self.spent_before + self.clock() - self.budget.started

    # --- recipes -------------------------------------------------------------------------------------------------
    def raw(self, candidate: Candidate, name: str, extra: Sequence[str] = ()) -> dict[str, Any]:
        raw = candidate.raw()
        raw["data"] = {**copy.deepcopy(self.detection.data), **raw.get("data", {})}
        raw["output_dir"] = str(self.out / "models" / name)
        raw.pop("search", None)
        for text in [*self.overrides, *extra]:
            apply_override(raw, text)
        return raw

    def config(self, candidate: Candidate, name: str, extra: Sequence[str] = ()):
        return build_run_config(self.raw(candidate, name, extra), f"portfolio recipe {candidate.name}")

    def _check_recipes(self) -> None:
        """Every portfolio recipe builds with the data and the overrides (a bad override stops before anything
        trains)."""
        for candidate in self.portfolio.candidates:
            self.config(candidate, candidate.name)

    # --- units ---------------------------------------------------------------------------------------------------
    def unit(self, candidate: Candidate, kind: str, folds: int = 0, variant: str = "",
             more: Sequence[str] = ()) -> tuple[Unit, list[str]]:
        """A unit of ``candidate``: ``variant`` names overrides ``more`` beyond the portfolio's recipe (tuned values,
        another seed)."""
        name = {"quick": f"{candidate.name}_quick", "full": candidate.name,
                "bag": f"{candidate.name}{variant}_bag{folds}"}[kind]
        extra = {"quick": ["quick_test=true", f"quick_test_samples={QUICK_SAMPLES}"], "full": [],
                 "bag": [f"folds={folds}"]}[kind] + list(more)
        if kind == "bag":  # a fold's eval part is its held-out part: a refit on it would leak into the OOF
            extra += [f"stages.{s.name}.train_on_eval=false" for s in self.config(candidate, name).stages
                      if s.train_on_eval]
        cfg = self.config(candidate, name, extra)
        epochs = [s.epochs or 1.0 for s in cfg.stages]
        samples = min(self.samples, QUICK_SAMPLES) if kind == "quick" else self.samples
        if kind == "bag":  # every fold trains on (k-1)/k of the samples, then predicts its held-out part
            epochs = epochs * folds
            samples = int(samples * (folds - 1) / folds)
        return Unit(name, candidate.name, kind, epochs, samples), extra

    def train(self, candidate: Candidate, unit: Unit, extra: list[str], why: str) -> Model | None:
        from hfstage.sweeps import run_seeds

        cfg = self.config(candidate, unit.name, extra)
        deadline = DeadlineCallback(self.train_deadline, self.clock)
        if self.executor and cfg.folds:
            cfg.executor = dict(self.executor)
            # the folds train in other processes (maybe machines): the deadline goes with each, on the wall clock
            deadline = DeadlineCallback(time.time() + self.train_deadline - self.clock(), time.time)
        estimate = self.cost.estimate(unit)
        self.decide("train", unit.name, why, estimate_s=estimate_seconds(estimate))
        began = self.clock()
        stopped = None
        try:
            run_seeds(cfg, travelling=[deadline])
        except OutOfTime as exc:
            stopped = str(exc)
        except HfstageError as exc:  # one recipe failing on this data is a finding, not the end of the run
            self.decide("failed", unit.name, f"{unit.name} failed: {exc}", actual_s=round(self.clock() - began, 1))
            return None
        seconds = self.clock() - began
        self._observe(candidate.name, unit, Path(cfg.output_dir), seconds)
        model = Model(unit.name, unit.kind, candidate.name, Path(cfg.output_dir), [*self.overrides, *extra], seconds,
                      stopped is not None)
        usable = self._usable(model)
        self.decide("stopped" if stopped else "finished", unit.name,
                    f"{unit.name}: {'stopped at the deadline (' + stopped + ')' if stopped else 'finished'} in "
                    f"{seconds / 60:.1f} min (est. {estimate / 60:.1f} min)"
                    + ("" if usable else "; nothing kept to use"), estimate_s=estimate_seconds(estimate),
                    actual_s=round(seconds, 1), kind=unit.kind, recipe=candidate.name, overrides=extra)
        if usable:
            self._check_metric(model)
        return model if usable else None

    def _check_metric(self, model: Model) -> None:
        """--metric must be one the models report (checked on the first one that finishes)."""
        from hfstage.automl.leaderboard import score
        from hfstage.run_dir import RunDir

        if model.kind == "bag" or score(model, self.metric) is not None:
            return
        reported = sorted(k[len("eval_"):] for k, v in RunDir(model.path).best().metrics.items()
                          if k.startswith("eval_") and isinstance(v, (int, float))
                          and not k.endswith(("runtime", "per_second", "preparation_time")))
        raise ConfigError(f"--metric {self.metric}: the {self.task} models report no eval_{self.metric}; choose one "
                          f"of {', '.join(reported)}")

    def _observe(self, recipe: str, unit: Unit, folder: Path, seconds: float) -> None:
        """Feed the cost model with the unit's timed stages (their training time and their share of the wall time)."""
        from hfstage.automl.leaderboard import run_records

        records = run_records(folder)
        if not records:
            return
        trained = sum(r.training_time_s for r in records)
        overhead = max(0.0, seconds - trained) / len(records)
        for record in records:
            epochs = float(record.stage_config.get("epochs") or 1.0)
            self.cost.observe(recipe, unit.samples, epochs, record.training_time_s, record.training_time_s + overhead)

    def _usable(self, model: Model) -> bool:
        from hfstage.run_dir import CV_JSON, RunDir

        if model.kind == "bag":
            return (model.path / CV_JSON).is_file()
        folder = RunDir(model.path)
        return folder.is_run() and folder.best() is not None

    def finished_model(self, candidate: Candidate, unit: Unit, extra: list[str]) -> Model | None:
        """The unit's model when an earlier run of DIR finished it with this very config (nothing retrains)."""
        from hfstage.automl.leaderboard import recorded_seconds
        from hfstage.ensemble import base_finished

        cfg = self.config(candidate, unit.name, extra)
        if not base_finished(cfg):
            return None
        return Model(unit.name, unit.kind, candidate.name, Path(cfg.output_dir), [*self.overrides, *extra],
                     recorded_seconds(Path(cfg.output_dir)))

    def adopt_earlier(self) -> None:
        """Every unit an earlier run of DIR finished joins this run's models, whether or not this run's plan (which
        follows the rankings of the moment) names it again: it cost nothing now and the stack may use it."""
        earlier = [d for d in self.state["decisions"] if d["action"] == "finished" and d.get("kind") in ADOPTED]
        for d in earlier:
            if d["unit"] in self.models:
                continue
            candidate = self.portfolio.get(d["recipe"])
            folds = next((int(o.split("=", 1)[1]) for o in d["overrides"] if o.startswith("folds=")), 0)
            like, _ = self.unit(candidate, d["kind"], folds)  # its epochs and samples, for the cost model
            unit = Unit(d["unit"], candidate.name, d["kind"], like.epochs, like.samples)
            model = self.finished_model(candidate, unit, d["overrides"])
            if model is not None and self._usable(model):
                self.models[unit.name] = self._reuse(candidate, unit, model)

    def _reuse(self, candidate: Candidate, unit: Unit, model: Model) -> Model:
        """A unit an earlier run finished: its stage timings feed the cost model as a fresh unit's would."""
        self._observe(candidate.name, unit, model.path, model.fit_seconds)
        self.decide("reuse", unit.name, f"{unit.name}: finished in an earlier run of {self.out}, reused")
        return model

    def run_units(self, units: list[tuple[Candidate, Unit, list[str]]]) -> list[Model]:
        """Finished units are read; the others start most valuable first while they fit."""
        done, todo = [], []
        for candidate, unit, extra in units:
            if unit.name in self.models:  # trained in an earlier phase of this run
                done.append(self.models[unit.name])
                continue
            model = self.finished_model(candidate, unit, extra)
            if model is not None:
                done.append(self._reuse(candidate, unit, model))
            else:
                todo.append((candidate, unit, extra))
        while todo:
            if self.clock() >= self.train_deadline:
                self.decide("skip", None, f"the budget's training time is spent; {len(todo)} unit(s) not started")
                break
            chosen, why = next_unit([u for _, u, _ in todo], self.cost, self._training_budget())
            if chosen is None:
                self.decide("skip", None, why)
                break
            candidate, unit, extra = next(t for t in todo if t[1] is chosen)
            todo.remove((candidate, unit, extra))
            model = self.train(candidate, unit, extra, why)
            if model is not None:
                done.append(model)
        return done

    def _training_budget(self) -> Budget:
        """The budget as the planner sees it: up to the training deadline (the reserve is for the stack)."""
        budget = Budget(self.train_deadline - self.budget.started, self.budget.margin, self.clock)
        budget.started = self.budget.started
        return budget

    # --- the phases ----------------------------------------------------------------------------------------------
    def run(self) -> AutoResult:
        from hfstage.automl.leaderboard import score

        self.out.mkdir(parents=True, exist_ok=True)
        self.decide("detect", None, f"task {self.task}: {self.detection.why}; {self.samples} training samples; "
                    f"budget {self.budget.seconds / 60:.1f} min left")
        try:
            self.adopt_earlier()
            candidates = self.portfolio.candidates
            # a recipe whose quick mode would train what its full mode trains (one pass over few samples) runs in full
            quick = self.run_units([(c, *self.unit(c, "full" if self._quick_is_full(c) else "quick"))
                                    for c in candidates])
            for m in quick:
                self.models[m.name] = m
            quick_score = {m.candidate: score(m, self.metric) for m in quick}
            order = sorted(candidates, key=lambda c: self._rank(quick_score.get(c.name)))
            full_units = []
            for rank, c in enumerate(order[:1] if self.preset == "quick" else order):  # quick: only the best
                unit, extra = self.unit(c, "full")
                unit.value_per_second = (len(order) - rank) / max(self.cost.estimate(unit), 1e-6)
                full_units.append((c, unit, extra))
            full = self.run_units(full_units)
            for m in full:
                self.models[m.name] = m
            if self.preset == "best" and full:
                best = self._ranked(full)
                searchable = [m for m in best if self.portfolio.get(m.candidate).recipe.get("search")]
                if searchable:
                    self._search(searchable[0])
                else:
                    self.decide("skip", None, "search: no finished recipe has a search: block in the portfolio")
                if self.task in STACKABLE:
                    self._bag(best)
            final = self._final()
        finally:
            self.state["spent_s"] = round(self.elapsed(), 1)
            self._save()
        return final

    def _quick_is_full(self, candidate: Candidate) -> bool:
        cfg = self.config(candidate, candidate.name)
        return self.samples <= QUICK_SAMPLES and all((s.epochs or 1.0) <= 1.0 for s in cfg.stages)

    def _ranked(self, models: list[Model]) -> list[Model]:
        """Best first by eval ``metric``; a tie (a small eval split where several are perfect) goes to the lower eval
        loss."""
        from hfstage.automl.leaderboard import score

        def loss(m: Model) -> float:
            value = score(m, "loss")
            return math.inf if value is None or math.isnan(value) else value

        return sorted(models, key=lambda m: (self._rank(score(m, self.metric)), loss(m)))

    def _rank(self, value: float | None) -> float:
        if value is None or math.isnan(value):
            return math.inf
        return -value if self.greater else value

    def _search(self, model: Model) -> None:
        candidate = self.portfolio.get(model.candidate)
        block = candidate.recipe["search"]
        if importlib.util.find_spec("optuna") is None:
            self.decide("skip", None, "search skipped: Optuna is not installed (pip install 'hfstage[search]')")
            return
        from hfstage.run_dir import RunDir
        from hfstage.stage_search.runner import search

        stage = candidate.recipe["stages"][0]["name"]
        cfg = self.config(candidate, candidate.name)
        through = last_held_out_stage(cfg.stages)
        per_trial = Unit(f"{candidate.name} trial", candidate.name, "search", [s.epochs or 1.0 for s in cfg.stages],
                         self.samples)
        trial_s = self.cost.estimate(per_trial)
        left = max(0.0, self.train_deadline - self.clock())
        trials = min(int(block.get("trials", 6)), int(left / 3 / max(trial_s * 1.1, 1e-6)))
        name = f"{candidate.name}_search"
        out = self.out / "search" / candidate.name
        if trials < 2 and not (out / "trials.csv").is_file():
            self.decide("skip", name, f"search of {candidate.name}: a trial needs ~{trial_s / 60:.1f} min; "
                        f"two do not fit a third of the {left / 60:.1f} min left")
            return
        self.decide("search", name, f"searching {candidate.name}'s stage '{stage}' ({trials} trials, est. "
                    f"{trials * trial_s / 60:.1f} min, {left / 60:.0f} min left)",
                    estimate_s=estimate_seconds(trials * trial_s))
        began = self.clock()
        raw = self.raw(candidate, name)
        raw["search"] = block
        try:
            result = search(raw, stage, trials=max(trials, 1), out=str(out), through=through,
                            timeout=f"{max(1.0, self.train_deadline - self.clock()):.0f}s",
                            executor=self.executor)
        except HfstageError as exc:
            self.decide("failed", name, f"search of {candidate.name} failed: {exc}")
            result = None
        seconds = self.clock() - began
        self.decide("finished", name, f"search of {candidate.name}: {seconds / 60:.1f} min", actual_s=round(seconds, 1))
        if result is None or result.best_run is None or not RunDir(result.best_run).is_run():
            return
        tuned = [f"stages.{stage}.{k}={v}" for k, v in result.best_values.get(1, {}).items()]
        self.models[name] = Model(name, "search", candidate.name, Path(result.best_run), [*self.overrides, *tuned],
                                  seconds)
        if tuned:
            self.tuned = (candidate.name, tuned)

    def _bag(self, ranked: list[Model]) -> None:
        """k-fold bags, most promising first, while they fit: the searched recipe with its best values, then every
        full recipe by its eval score, then the first of those again with other seeds (more members, a richer
        stack)."""
        folds = 5 if self.samples >= 500 else 3
        variants = [(self.portfolio.get(self.tuned[0]), "_tuned", self.tuned[1])] if self.tuned else []
        variants += [(self.portfolio.get(m.candidate), "", []) for m in ranked]
        if variants:
            first, suffix, more = variants[0]
            variants += [(first, f"{suffix}_seed{s}", [*more, f"seed={s}"]) for s in SEEDS]
        units = []
        for rank, (candidate, suffix, more) in enumerate(variants):
            unit, extra = self.unit(candidate, "bag", folds, suffix, more)
            unit.value_per_second = float(len(variants) - rank)  # the more promising first, whatever it costs
            units.append((candidate, unit, extra))
        for m in self.run_units(units):
            self.models[m.name] = m

    def _final(self) -> AutoResult:
        from hfstage.automl.leaderboard import leaderboard, write_leaderboard

        models = [m for m in self.models.values() if m.kind != "quick"] or list(self.models.values())
        if not models:
            raise HfstageError(f"{self.out}: no model finished within the budget; give a larger --budget "
                               f"(the cheapest unit's estimate is in {self.out / AUTO_JSON})")
        # a single answer is a run folder (predict, evaluate and push read one); a bag answers within the stack
        best = self._ranked([m for m in models if m.kind != "bag"] or models)[0]
        final: dict[str, Any] = {"kind": "model", "path": str(best.path), "name": best.name,
                                 "why": f"the best single model by eval {self.metric}"}
        stack_result = None
        bags = [m for m in models if m.kind == "bag"]
        # without two bags the stack learns from the models' eval predictions: a refit trained on them cannot join
        members = bags if len(bags) >= 2 else [m for m in models if not self._refitted(m)]
        if self.preset == "best" and self.task in STACKABLE and len(members) >= 2:
            stacked, stack_result = self._stack(members)
            if stacked is not None:
                final = stacked
            else:
                final["why"] += f"; {stack_result['why']}"
        board = leaderboard(self, stack_result, final)
        write_leaderboard(self.out, board, self.metric)
        self._save(final)
        from hfstage.cards import auto_card
        from hfstage.checkpoint import atomic_write_text

        atomic_write_text(self.out / "README.md", auto_card(self.state, board, self.metric, self.out))
        self.decide("final", final.get("name"), f"answer: {final['name']} ({final['why']})")
        return AutoResult(self.out, self.task, self.metric, list(self.models.values()), final, board,
                          self.state["decisions"])

    def _stack(self, members: list[Model]) -> tuple[dict | None, dict]:
        from hfstage.stacking import stack

        folder = self.out / "stack"
        self.decide("stack", "stack", f"stacking {len(members)} models ({', '.join(m.name for m in members)}) "
                    "with --meta auto")
        result = stack([str(m.path) for m in members], folder, meta="auto", folds=5, seed=0)
        earned, why = stack_earns_it(result)
        result["why"] = why
        if not earned:
            return None, result
        return {"kind": "stack", "path": str(folder), "name": f"stack ({result['meta_learner']})", "why": why}, result

    def _refitted(self, model: Model) -> bool:
        from hfstage.automl.leaderboard import answers_with_a_refit

        return model.kind != "bag" and answers_with_a_refit(model.path)


def last_held_out_stage(stages) -> str:
    """The last stage whose eval metrics are held out (a ``train_on_eval`` refit's are in-sample): search trials,
    compared on eval, train through it."""
    return next((s.name for s in reversed(stages) if not s.train_on_eval), stages[0].name)


def stack_earns_it(result: dict) -> tuple[bool, str]:
    """Whether the stack (``stack.json``'s record) is the answer, and why: only when its CV accuracy beats the best
    single member's by more than fold noise (one binomial standard error of that accuracy on the meta-train
    samples); within the noise the simpler answer, a single model, stands (the one-standard-error rule: on tens of
    samples a meta-learner's CV gain is mostly chance)."""
    rows = result["methods"]
    chosen = next(r for r in rows if r.get("chosen"))
    single = next(r for r in rows if r["method"].startswith("best single ("))
    n = result["samples"]["meta_train"]
    top = single["cv_accuracy"]
    noise = math.sqrt(top * (1 - top) / max(n, 1))
    if chosen["cv_accuracy"] <= top + noise:
        return False, (f"the stack ({result['meta_learner']}, CV accuracy {chosen['cv_accuracy']:.4f}) does not beat "
                       f"the best single member's {top:.4f} beyond fold noise ({noise:.4f} on {n} samples)")
    return True, (f"--meta auto chose {result['meta_learner']}: CV accuracy {chosen['cv_accuracy']:.4f} vs the best "
                  f"single member's {top:.4f} on {n} samples (fold noise {noise:.4f})")


def auto(data: str, budget: str | float, task: str | None = None, out: str | Path = "runs/auto",
         metric: str | None = None, executor: dict | str | None = None, preset: str = "best",
         overrides: Sequence[str] = ()) -> AutoResult:
    """The best model or stacked ensemble ``budget`` (seconds, or ``90s``/``15m``/``2h``) buys on ``data``; a rerun
    with the same settings and a larger budget continues. Returns the leaderboard and the final answer."""
    from hfstage.executors.base import executor_spec
    from hfstage.stage_search.settings import parse_duration

    seconds = parse_duration(budget, "--budget")
    spec = None
    if executor is not None:
        spec = executor_spec({"type": executor} if isinstance(executor, str) else executor, "--executor")
    return Auto(str(data), seconds, task, Path(out), metric, spec, preset, overrides).run()
