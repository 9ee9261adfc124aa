"""What a search is asked for: ``hfstage search`` flags, or a recipe's ``search:`` block (flags override it)."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from hfstage.arguments import check_arguments
from hfstage.errors import ConfigError
from hfstage.executors.base import LOCAL, executor_spec
from hfstage.stage_search.space import parse_space

PRUNERS = ("median", "hyperband", "none")
_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?$")


def parse_duration(text: Any, where: str) -> float:
    """``90`` / ``90s`` / ``15m`` / ``2h`` / ``1h30m`` -> seconds (> 0)."""
    match = _DURATION.match(str(text).strip().replace(" ", "")) if text not in (None, "") else None
    if not match or not any(match.groups()):
        raise ConfigError(f"{where}: {text!r} is not a duration; write e.g. 90s, 15m, 2h or 1h30m")
    hours, minutes, seconds = (float(g or 0) for g in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total <= 0:
        raise ConfigError(f"{where}: {text!r} must be longer than 0 s")
    return total


@dataclass
class SearchSettings:
    """The settings of one search (``search:`` keys; ``hfstage search`` flags of the same names)."""

    trials: int = 20  # trials of the searched stage, counted over every rerun of the same search
    space: dict = field(default_factory=dict)  # KEY -> DIST
    metric: str | None = None  # default: the recipe's metric_for_best_model, and its direction
    pruner: str = "median"
    timeout: str | None = None  # no new trial starts after this long
    out: str | None = None  # default <output_dir>/search_<stage name>
    from_run: str | None = None  # a finished run whose earlier stages the trials start from
    through: str | None = None  # also train the stages after the searched one, up to this one
    storage: str | None = None  # an Optuna RDB URL or journal:PATH; default sqlite:///<out>/study.db
    trials_per_stage: int | None = None  # `all`: trials of each stage
    executor: dict = field(default_factory=lambda: dict(LOCAL))  # where trials train ({type: ray} side by side)

    def check(self, where: str) -> SearchSettings:
        for name in ("trials", "trials_per_stage"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"{where}.{name}: {value!r} must be an integer >= 1")
        if self.pruner not in PRUNERS:
            raise ConfigError(f"{where}.pruner: {self.pruner!r} is not a pruner; choose one of {', '.join(PRUNERS)}")
        if self.timeout is not None:
            parse_duration(self.timeout, f"{where}.timeout")
        if not isinstance(self.space, dict):
            raise ConfigError(f"{where}.space: expected a mapping KEY: DIST, e.g. lr: loguniform(1e-5,1e-2)")
        parse_space(self.space, f"{where}.space")
        self.executor = executor_spec(self.executor, f"{where}.executor")
        return self

    def merged(self, **flags: Any) -> SearchSettings:
        """These settings with the flags that were given (not None) in their place."""
        given = {k: v for k, v in flags.items() if v is not None}
        if "space" in given:
            given["space"] = {**self.space, **given["space"]}
        if "executor" in given:  # --executor / --address over the recipe's search.executor
            given["executor"] = {**self.executor, **given["executor"]}
        return dataclasses.replace(self, **given)


def search_block(value: Any, where: str) -> dict[str, Any]:
    """A recipe's ``search:`` mapping, checked (keys against ``SearchSettings``, values as the flags are)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping of search settings (trials, space, metric, pruner, ...)")
    args = check_arguments(SearchSettings, value, where, "search", typed=False)
    SearchSettings(**args).check(where)
    return args
