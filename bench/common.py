"""Shared by the benchmark scripts: the machine line and the docs/benchmarks.md section writer."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
HEADER = """# Benchmarks

Every figure below is written by a script under `bench/` from a real run (never typed in). Rerun a
script to refresh its section; `--quick` is the smoke mode the tests use. Figures are ratios and
medians measured side by side in one run, because identical runs vary by up to +-15% on shared machines.
"""


def machine_line() -> str:
    import torch
    import transformers

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU, {os.cpu_count()} cores"
    return (f"{time.strftime('%Y-%m-%d')}, {device}, {platform.machine()}, torch {torch.__version__}, "
            f"transformers {transformers.__version__}")


def update_benchmarks(key: str, title: str, body: str) -> None:
    """Replace (or append) the section ``key`` of docs/benchmarks.md."""
    start, end = f"<!-- bench:{key}:start -->", f"<!-- bench:{key}:end -->"
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else HEADER
    section = f"{start}\n## {title}\n\n{body}\n{end}"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    tmp = BENCHMARKS.with_name(".benchmarks.md.tmp")
    tmp.write_text(text)
    tmp.replace(BENCHMARKS)
