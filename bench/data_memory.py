"""Memory of data-parallel training as the training set grows: nothing is copied per process.

MNIST pairs at 1x, 4x and 16x the prepared training set (the set tiled; 16x is ~1M pairs, 1.5 GB), each
converted once into the ``datasets`` cache (as any run would), then a fixed number of training steps of
the quickstart pair model with 2 CPU DDP processes (``accelerate_configs/cpu_ddp.yaml``); every process
records its peak RSS (VmHWM) when it exits. The split is memory-mapped, so a process's memory should not
grow with the size of the set: the last line is ``peak_rss_ratio_16x_vs_1x: <worst process at 16x over the
worst at 1x>`` (target <= 1.25).

    python bench/data_memory.py           # 60k/240k/960k pairs, 60 steps, ~5 min on 2 CPU cores
    python bench/data_memory.py --quick   # smoke mode: 2k and 32k pairs, 10 steps
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line, update_benchmarks  # noqa: E402

SIZES = (1, 4, 16)
BATCH = 128


def worker(out: str, argv: list[str]) -> None:
    """One DDP process: train, then write this process's peak RSS."""
    from hfstage.cli import main as cli

    code = cli(["train", *argv])
    rank = int(os.environ.get("RANK", "0"))
    peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    Path(out, f"rank_{rank}.json").write_text(json.dumps({"rank": rank, "peak_rss_mb": peak / 1024, "exit": code}))
    sys.exit(code)


def tile(base: Path, folder: Path, k: int, eval_pairs: int) -> int:
    """``k`` copies of the base training pairs, and the first ``eval_pairs`` of its val/test splits."""
    import numpy as np

    folder.mkdir(parents=True)
    z = np.load(base / "train.npz")
    x, y = np.tile(z["x"], (k, 1, 1, 1)), np.tile(z["y"], k)
    np.savez(folder / "train.npz", x=x, y=y)
    for name in ("val.npz", "test_public.npz"):
        z = np.load(base / name)
        np.savez(folder / name, x=z["x"][:eval_pairs], y=z["y"][:eval_pairs])
    return len(y)


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per run (each process)")
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    from hfstage.data.prepare import prepare_mnist_pairs
    from hfstage.reporting import format_table

    steps = 10 if args.quick else args.steps
    tmp = Path(tempfile.mkdtemp())
    # the conversions land in that cache, and go with it; CPU processes even where there is a GPU
    env = {**os.environ, "HF_DATASETS_CACHE": str(tmp / "cache"), "CUDA_VISIBLE_DEVICES": ""}
    os.environ["HF_DATASETS_CACHE"] = env["HF_DATASETS_CACHE"]
    rows = []
    try:
        base = ROOT / "data" / "mnist_pairs"
        if args.quick or not (base / "train.npz").is_file():
            base = tmp / "base"
            n = 2000 if args.quick else 60000
            prepare_mnist_pairs(base, seed=0, train_pairs=n, val_pairs=1000, test_pairs=1000)
        for k in (1, 16) if args.quick else SIZES:  # the smoke run skips 4x (one 2-process launch less)
            data = tmp / f"data_{k}"
            pairs = tile(base, data, k, eval_pairs=500 if args.quick else 2000)
            # converted once into the datasets cache here, as the first run on a data folder does
            subprocess.run([sys.executable, "-c", "import sys; from hfstage.config import DataConfig; "
                            "from hfstage.tasks import TASKS; TASKS.get('pair_classification')().load_splits("
                            "DataConfig(path=sys.argv[1]))", str(data)], env=env, check=True)
            out = tmp / f"rss_{k}"
            out.mkdir()
            epochs = steps * BATCH * 2 / pairs  # 2 processes: the same number of steps at every size
            command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                       str(ROOT / "accelerate_configs" / "cpu_ddp.yaml"), str(Path(__file__).resolve()), "--worker",
                       str(out), "--config", str(ROOT / "configs" / "quickstart.yaml"), f"data.path={data}",
                       f"output_dir={tmp / f'run_{k}'}", "report_to=[none]",
                       f"stages=[{{name: steps, epochs: {epochs:.8f}, lr: 0.002, batch_size: {BATCH}}}]"]
            proc = subprocess.run(command, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"the {k}x run failed:\n{proc.stderr[-3000:]}")
            ranks = [json.loads(p.read_text()) for p in sorted(out.glob("rank_*.json"))]
            if [r["exit"] for r in ranks] != [0, 0]:
                raise SystemExit(f"the {k}x run: a process did not finish ({ranks})")
            rows.append({"k": k, "pairs": pairs, "file_mb": (data / "train.npz").stat().st_size / 2**20,
                         "rss": [r["peak_rss_mb"] for r in ranks]})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    worst = {r["k"]: max(r["rss"]) for r in rows}
    ratio = worst[16] / worst[1]
    table = format_table([("size", "train pairs", "train.npz MB", "rank 0 peak RSS MB", "rank 1 peak RSS MB",
                           "worst / worst at 1x")] +
                         [(f"{r['k']}x", str(r["pairs"]), f"{r['file_mb']:.0f}", *(f"{v:.0f}" for v in r["rss"]),
                           f"{max(r['rss']) / worst[1]:.3f}") for r in rows])
    print(table)
    if not args.quick:
        body = (f"{machine_line()}; quickstart pair model, {steps} steps of batch {BATCH} per process, 2 CPU DDP "
                f"processes, the training set tiled (16x: {rows[-1]['pairs']:,} pairs). `python bench/data_memory.py`"
                f"\n\n```\n{table}\n```\n\nEach process memory-maps the converted split from the datasets cache and "
                "reads only its own batches, so its peak memory does not grow with the set (target: 16x / 1x <= 1.25).")
        update_benchmarks("data_memory", "Data memory: peak RSS per DDP process vs training-set size", body)
    print(f"peak_rss_ratio_16x_vs_1x: {ratio:.3f}")
    return ratio


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3:])
    else:
        main()
