"""The portfolio ``hfstage auto`` draws from (``portfolio.yaml``, package data): per task kind, recipes with what
each measured on a development set, ordered by score per second."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml

from hfstage.errors import ConfigError

CANDIDATE_KEYS = ("name", "score", "seconds", "rate", "recipe")


@dataclass
class Candidate:
    """One recipe of the portfolio: its ``score`` and ``seconds`` on the development set, its cost ``rate``
    (seconds per training sample and epoch) and the recipe (no data, no output_dir)."""

    name: str
    score: float
    seconds: float
    rate: float
    recipe: dict[str, Any]

    @property
    def value(self) -> float:
        return self.score / max(self.seconds, 1e-6)

    def raw(self) -> dict[str, Any]:
        return copy.deepcopy(self.recipe)


@dataclass
class Portfolio:
    task: str
    recommended: str
    measured: str
    candidates: list[Candidate]

    def get(self, name: str) -> Candidate:
        for c in self.candidates:
            if c.name == name:
                return c
        raise ConfigError(f"portfolio of {self.task}: no recipe {name!r}; it has {', '.join(self.names())}")

    def names(self) -> list[str]:
        return [c.name for c in self.candidates]


def read_portfolios(text: str | None = None) -> dict[str, Portfolio]:
    """Every task kind's portfolio (``text``: another portfolio file's content, for tests)."""
    if text is None:
        text = resources.files("hfstage.automl").joinpath("portfolio.yaml").read_text(encoding="utf-8")
    raw = yaml.safe_load(text) or {}
    out = {}
    for task, block in raw.items():
        where = f"portfolio.yaml: {task}"
        candidates = []
        for i, entry in enumerate(block.get("candidates") or [], 1):
            missing = [k for k in CANDIDATE_KEYS if k not in entry]
            if missing or set(entry) - set(CANDIDATE_KEYS):
                raise ConfigError(f"{where}.candidates.{i}: needs exactly {', '.join(CANDIDATE_KEYS)}")
            candidates.append(Candidate(entry["name"], float(entry["score"]), float(entry["seconds"]),
                                        float(entry["rate"]), entry["recipe"]))
        candidates.sort(key=lambda c: -c.value)
        portfolio = Portfolio(task, block["recommended"], block["measured"], candidates)
        portfolio.get(portfolio.recommended)
        out[task] = portfolio
    return out


def portfolio_for(task: str) -> Portfolio:
    portfolios = read_portfolios()
    if task not in portfolios:
        raise ConfigError(f"--task {task}: hfstage auto has no portfolio for it (it has {', '.join(portfolios)})")
    return portfolios[task]
