"""``hfstage auto`` (docs/auto.md): the best model or stacked ensemble a time budget buys. ``detect.py`` reads the
task kind from the data's fields, ``portfolio.py`` the recipes it may train (``portfolio.yaml``), ``budget.py`` what
a unit will cost and the deadline stop, ``runner.py`` the phases, ``leaderboard.py`` what it reports. (Not
``hfstage/auto/``: ``hfstage.auto`` is the Python function, as ``hfstage.search`` is.)

An auto folder answers ``hfstage evaluate DIR`` and ``hfstage predict DIR`` through ``final_of``: its ``auto.json``
names the final model or stack.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hfstage.errors import ConfigError

AUTO_JSON = "auto.json"


def final_of(folder: str | Path) -> dict[str, Any] | None:
    """An auto folder's answer (``{"kind": "stack"|"model", "path": ...}``), or None when ``folder`` is not one."""
    path = Path(folder) / AUTO_JSON
    if not path.is_file():
        return None
    try:
        final = json.loads(path.read_text(encoding="utf-8")).get("final")
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: unreadable ({exc}); rerun the hfstage auto command that made it") from None
    if not final:
        raise ConfigError(f"{path}: this auto run has no answer yet; rerun its command to finish it")
    if not Path(final["path"]).is_absolute():  # a pushed (and pulled) answer: relative to the auto folder
        final = {**final, "path": str(Path(folder) / final["path"])}
    return final
