"""Folds fanned out on Ray vs one after another: the same 4 quick-test folds of the quickstart recipe.

Three runs of `hfstage train --config configs/quickstart.yaml quick_test=true folds=4` (MNIST pairs):

- sequential: `executor: local`, torch with every core (the default);
- sequential, one thread: the same with OMP_NUM_THREADS=1 -- the arithmetic of a Ray task that asks for one
  CPU, so its `cv.json` must equal the Ray run's, bit for bit;
- ray: `--executor ray` on a local Ray started by the command, each fold a task with `num_cpus: 1` (on a
  machine with N cores, N folds train side by side), Ray's start-up included in the time.

    python bench/fanout.py            # ~3 min on 2 CPU cores
    python bench/fanout.py --quick    # smoke mode: 400 pairs, 2 folds

On 2 CPU cores a speed-up is not expected (two 1-thread folds against one 2-thread fold at a time, plus
Ray's start-up): the figure is the overhead, reported as it is. The last line is
``fanout_wall_time_ratio: X`` (Ray's wall time / the sequential run's; < 1 is faster). The table goes to
docs/benchmarks.md (section ``fanout``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line, update_benchmarks  # noqa: E402


def train(out: Path, data: Path, extra: list[str], env: dict) -> float:
    began = time.time()
    subprocess.run([sys.executable, "-m", "hfstage", "train", "--config", "configs/quickstart.yaml", f"data.path={data}",
                    f"output_dir={out}", "report_to=[none]", "quick_test=true", *extra], check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.time() - began


def cv(out: Path) -> dict:
    summary = json.loads((out / "cv.json").read_text())
    summary.pop("config")
    return summary


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--data", default="data/mnist_pairs")
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    tmp = tempfile.TemporaryDirectory()
    runs, data, folds = Path(tmp.name), Path(args.data), 4
    extra = []
    from hfstage.data.prepare import prepare_mnist_pairs

    if args.quick:
        data, folds = runs / "data", 2
        prepare_mnist_pairs(data, train_pairs=400, val_pairs=200, test_pairs=200)
        extra = ["quick_test_samples=400", "stages=[{name: baseline, epochs: 1}]"]
    elif not (data / "train.npz").is_file():
        prepare_mnist_pairs(data)
    extra.append(f"folds={folds}")
    env = dict(os.environ)
    one_thread = {**env, "OMP_NUM_THREADS": "1"}
    # smoke mode: the one-thread run stands in for the sequential one (the check is the equality, not the time)
    sequential = None if args.quick else train(runs / "sequential", data, extra, env)
    single = train(runs / "single", data, extra, one_thread)
    fanned = train(runs / "ray", data, [*extra, "executor={type: ray, resources: {num_cpus: 1}}"], env)
    same = cv(runs / "single") == cv(runs / "ray")
    sequential = sequential or single
    ratio = fanned / sequential
    from hfstage.reporting import format_table

    rows = [("run", "wall s", "vs sequential", "cv.json"),
            ("sequential (executor local, every core)", f"{sequential:.1f}", "1.00", "-"),
            ("sequential, one thread", f"{single:.1f}", f"{single / sequential:.2f}", "reference"),
            (f"ray: {folds} fold tasks, num_cpus 1 each", f"{fanned:.1f}", f"{ratio:.2f}",
             "equal" if same else "DIFFERENT")]
    table = format_table(rows)
    print(table)
    if not same:
        raise SystemExit("the Ray run's cv.json differs from the one-thread sequential run's")
    if not args.quick:
        body = (f"{machine_line()}\n\n```\npython bench/fanout.py\n```\n\n`configs/quickstart.yaml` with "
                f"`quick_test=true folds={folds}` on MNIST pairs; Ray's start-up is inside its time.\n\n"
                f"```\n{table}\n```\n\nOn {os.cpu_count()} CPU cores the fan-out buys nothing (two one-thread "
                "folds side by side against one two-thread fold at a time, plus starting Ray); its use is a cluster "
                "or a GPU shared by fractional-GPU tasks. The folds' `cv.json` equals the sequential one-thread "
                "run's bit for bit.")
        update_benchmarks("fanout", "Folds on Ray vs sequential (`bench/fanout.py`)", body)
    tmp.cleanup()
    print(f"fanout_wall_time_ratio: {ratio:.4f}")
    return ratio


if __name__ == "__main__":
    main()
