"""Start-up of the command line: how long ``hfstage --help`` and ``hfstage runs list`` take, against
``python -c "import torch"`` measured in the same run (so the figure carries across machines).

Each command runs in a fresh process, alternated, 7 times (``--quick``: 3); medians. Also reports which of
torch, transformers, timm, datasets and evaluate each command imported. The last line is
``cli_help_over_torch_import: <median help time / median torch import time>`` (target <= 0.25).

    python bench/startup.py            # updates docs/benchmarks.md
    python bench/startup.py --quick    # smoke mode (a test runs it so the script does not rot)
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line, update_benchmarks  # noqa: E402

HEAVY = ("torch", "transformers", "timm", "datasets", "evaluate")
PROBE = ("import runpy, sys; sys.argv = ['hfstage', *sys.argv[1:]]\n"
         "try:\n    runpy.run_module('hfstage', run_name='__main__')\nexcept SystemExit:\n    pass\n"
         f"print('HEAVY', *[m for m in {HEAVY!r} if m in sys.modules], file=sys.stderr)")


def _time(argv: list[str]) -> float:
    began = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {proc.stderr[-2000:]}")
    return time.perf_counter() - began


def _heavy(args: list[str]) -> list[str]:
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, cwd=ROOT)
    line = next((x for x in proc.stderr.splitlines() if x.startswith("HEAVY")), "HEAVY")
    return line.split()[1:]


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    repeats = 3 if args.quick else 7
    with tempfile.TemporaryDirectory() as runs:
        commands = {
            "python -c 'import torch'": [sys.executable, "-c", "import torch"],
            "hfstage --help": [sys.executable, "-m", "hfstage", "--help"],
            "hfstage runs list": [sys.executable, "-m", "hfstage", "runs", "list", runs],
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(repeats):  # alternated, so a busy moment hits every command alike
            for name, cmd in commands.items():
                times[name].append(_time(cmd))
        heavy = {"hfstage --help": _heavy(["--help"]), "hfstage runs list": _heavy(["runs", "list", runs])}
    medians = {name: statistics.median(t) for name, t in times.items()}
    torch_s = medians["python -c 'import torch'"]
    from hfstage.reporting import format_table

    table = format_table([("command", "median s", "/ import torch", "imports")] + [
        (name, f"{m:.3f}", f"{m / torch_s:.3f}", " ".join(heavy.get(name, [])) or ("-" if name in heavy else ""))
        for name, m in medians.items()])
    print(table)
    ratio = medians["hfstage --help"] / torch_s
    if not args.quick:
        body = (f"{machine_line()}. Fresh processes, alternated, median of {repeats}; target: `hfstage --help` <= 0.25x "
                f"`import torch`. `python bench/startup.py`\n\n```\n{table}\n```\n")
        update_benchmarks("startup", "Command-line start-up (`bench/startup.py`)", body)
    print(f"cli_help_over_torch_import: {ratio:.3f}")
    return ratio


if __name__ == "__main__":
    main()
