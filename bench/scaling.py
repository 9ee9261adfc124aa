"""Scaling: time per epoch vs training-set size, and the npz loaders' peak memory vs the data's size.

1. One 1-epoch stage of the quickstart pair model through the real curriculum on 1x, 2x and 4x the
   training pairs (same model, batch and evaluation set): the epoch time should grow linearly, so
   ``t(kx) / (k * t(1x))`` should be ~1.
2. In a fresh process per size: peak RSS growth while loading the split with hfstage's loader and
   iterating one epoch of its DataLoader, divided by the size of the decoded arrays. The split is
   memory-mapped from the ``datasets`` cache, so an epoch that reads every sample maps each page once
   (shared with other processes, and given back under memory pressure): about 1, never a copy more.

The last line is ``worst_epoch_time_linearity: <max of t(kx) / (k * t(1x))>``.

    python bench/scaling.py            # 5k/10k/20k pairs, ~4 min on 2 CPU cores
    python bench/scaling.py --quick    # smoke mode
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

MEMORY_PROBE = r"""
import json, sys
import numpy as np, torch
from torch.utils.data import DataLoader
from hfstage.tasks import TASKS

def status(key):  # kB, from /proc (Linux)
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key))

task = TASKS.get("pair_classification")()
collate = task.collator(None, training=True)
collate([task.load_split(sys.argv[1], limit=2)[i] for i in range(2)])  # warm up lazy imports
before = status("VmRSS:")
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
data = task.load_split(sys.argv[1])
for batch in DataLoader(data, batch_size=256, shuffle=True, collate_fn=collate):
    pass
peak = status("VmHWM:")
images = data.images
print(json.dumps({"rss_growth_mb": (peak - before) / 1024,
                  "array_mb": len(data) * int(np.prod(images.shape)) * images.dtype.itemsize / 2**20}))
"""


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--base", type=int, default=5000, help="training pairs at 1x")
    args = parser.parse_args(argv)

    from hfstage.config import load_config
    from hfstage.curriculum import run
    from hfstage.data.prepare import prepare_mnist_pairs

    os.chdir(ROOT)
    base = 400 if args.quick else args.base
    tmp = Path(tempfile.mkdtemp())
    rows = []
    try:
        for k in (1, 2, 4):
            data = tmp / f"data_{k}"
            prepare_mnist_pairs(data, train_pairs=k * base, val_pairs=200, test_pairs=200)
            out = tmp / f"run_{k}"
            cfg = load_config(ROOT / "configs/quickstart.yaml",
                              [f"data.path={data}", f"output_dir={out}", "report_to=[none]",
                               "stages=[{name: epoch, epochs: 1, lr: 0.002}]"])
            run(cfg)
            seconds = json.loads((out / "stage_1_epoch" / "stage.json").read_text())["training_time_s"]
            probe = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(data / "train.npz")], capture_output=True,
                                   text=True, check=True)
            memory = json.loads(probe.stdout.strip().splitlines()[-1])
            rows.append({"k": k, "pairs": k * base, "seconds": seconds, "file_mb": (data / "train.npz").stat().st_size / 2**20,
                         **memory})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    t1 = rows[0]["seconds"]
    for r in rows:
        r["linearity"] = r["seconds"] / (r["k"] * t1)
    from hfstage.reporting import format_table

    table = format_table([("size", "train pairs", "epoch s", "t(kx) / (k t(1x))", ".npz MB", "arrays MB",
                           "peak RSS growth MB", "RSS / arrays")] +
                         [(f"{r['k']}x", str(r["pairs"]), f"{r['seconds']:.1f}", f"{r['linearity']:.2f}",
                           f"{r['file_mb']:.1f}", f"{r['array_mb']:.1f}", f"{r['rss_growth_mb']:.1f}",
                           f"{r['rss_growth_mb'] / r['array_mb']:.2f}") for r in rows])
    worst = max(r["linearity"] for r in rows)
    print(table)
    if not args.quick:
        body = (f"{machine_line()}; quickstart pair model, one epoch through the curriculum (eval on 200 pairs). "
                "`python bench/scaling.py`\n\n"
                f"```\n{table}\n```\n\nEpoch time is linear in the data size when the ratio column is ~1; the "
                "loader holds the data once when RSS / arrays is ~1 (the .npz members are compressed, so they "
                "are decoded into memory once, not memory-mapped).")
        update_benchmarks("scaling", "Scaling with data size (`bench/scaling.py`)", body)
    print(f"worst_epoch_time_linearity: {worst:.3f}")
    return worst


if __name__ == "__main__":
    main()
