"""``hf://`` references: ``hf://OWNER/NAME[@REVISION][/stage_<N>_<name>]``, and the tag that pins a stage.

A revision holding ``/`` is written URL-quoted (``refs%2Fpr%2F1``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import unquote

from hfstage.errors import ConfigError
from hfstage.run_dir import STAGE_DIR_RE

PREFIX = "hf://"
REPO_ID_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.-]*/)?[A-Za-z0-9][A-Za-z0-9_.-]*$")


def stage_tag(stage_dir: str) -> str:
    """``stage_2_finetune`` -> ``stage-2-finetune`` (the revision that pins that stage)."""
    return stage_dir.replace("_", "-", 2)


@dataclass
class HubRef:
    repo_id: str
    revision: str | None = None
    stage: str | None = None  # a stage folder name, or None for the whole run / its best stage

    def __str__(self) -> str:
        rev = f"@{self.revision.replace('/', '%2F')}" if self.revision else ""
        return f"{PREFIX}{self.repo_id}{rev}" + (f"/{self.stage}" if self.stage else "")


def is_reference(text: str | os.PathLike) -> bool:
    return str(text).startswith(PREFIX)


def parse_reference(text: str) -> HubRef:
    """``hf://owner/name@rev/stage_2_x`` (or a bare ``owner/name``) -> HubRef."""
    body = text[len(PREFIX):] if is_reference(text) else text
    parts = [p for p in body.split("/") if p]
    stage = parts.pop() if len(parts) > 1 and STAGE_DIR_RE.match(parts[-1]) else None
    repo, _, revision = "/".join(parts).partition("@")
    if not REPO_ID_RE.match(repo) or ".." in repo:
        raise ConfigError(f"{text}: not a Hub reference; expected hf://OWNER/NAME[@REVISION][/stage_<N>_<name>]")
    return HubRef(repo, unquote(revision) or None, stage)
