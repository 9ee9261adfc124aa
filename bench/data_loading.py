"""Data loading vs training: is the loader ever the bottleneck?

For each data kind, with its shipped recipe's model, batch size, workers and the augmentation of the
recipe's first augmenting stage: samples/s of the training DataLoader alone (decode + augment + collate)
and samples/s of the training step alone (forward, backward, AdamW on batches already in memory), in
one process. Target: the loader is at least 3x the step rate (``pair_images``: the pairs as two ``Image()`` columns
of PNG bytes, decoded per batch). For pairs and sequences also: loading plus
stepping from the memory-mapped ``datasets`` split vs from the same arrays in memory, alternated in one
run (target: within 5%). The last line is
``min_loader_to_step_ratio: <the smallest ratio>``.

    python bench/data_loading.py            # ~3 min on 2 CPU cores
    python bench/data_loading.py --quick    # smoke mode: tiny data, a few batches
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line, update_benchmarks  # noqa: E402


def _prepare(kind: str, root: Path, quick: bool) -> Path:
    from hfstage.data import prepare

    out = root / kind
    if kind == "pairs":
        prepare.prepare_mnist_pairs(out, train_pairs=2000 if quick else 20000, val_pairs=200, test_pairs=200)
    elif kind == "pair_images":
        _pair_images(root / "pairs", out)
    elif kind == "sequences":
        prepare.prepare_japanese_vowels(out)
    elif kind == "images":
        prepare.prepare_mnist_images(out, train_images=300 if quick else 3000, val_images=50, test_images=50)
    else:
        prepare.prepare_espeak_l2(out, words=3 if quick else 30)
    return out


def _pair_images(npz_folder: Path, out: Path) -> None:
    """The same pairs in the Hub's standard form: two ``Image()`` columns (PNG bytes) and a ``ClassLabel``, saved
    with ``save_to_disk`` (decoded per batch by hfstage)."""
    import io

    import datasets
    import numpy as np
    from PIL import Image

    def png(a):
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        return {"bytes": buf.getvalue(), "path": None}

    features = datasets.Features({"left": datasets.Image(), "right": datasets.Image(),
                                  "same": datasets.ClassLabel(names=["different", "same"])})
    splits = {}
    for split, file in (("train", "train.npz"), ("validation", "val.npz"), ("test", "test_public.npz")):
        z = np.load(npz_folder / file)
        splits[split] = datasets.Dataset.from_dict({"left": [png(a) for a in z["x"][:, 0]],
                                                    "right": [png(b) for b in z["x"][:, 1]], "same": z["y"]},
                                                   features=features)
    datasets.DatasetDict(splits).save_to_disk(str(out))


KINDS = {  # data kind -> (recipe, overrides)
    "pairs": ("configs/quickstart.yaml", []),
    "pair_images": ("configs/quickstart.yaml", ["data.columns={image_a: left, image_b: right, label: same}"]),
    "sequences": ("configs/sign_5stage.yaml", []),
    "images": ("configs/images_quick_test.yaml", ["data.max_train_samples=null", "data.max_eval_samples=null"]),
    "audio": ("configs/speech_wav2vec2.yaml", []),
}


def measure(kind: str, data: Path, batches: int) -> dict:
    import torch
    from torch.utils.data import DataLoader

    from hfstage.config import load_config
    from hfstage.models import build_model
    from hfstage.tasks import TASKS

    recipe, overrides = KINDS[kind]
    cfg = load_config(ROOT / recipe, [f"data.path={data}", *overrides])
    task = TASKS.get(cfg.task)()
    splits = task.load_splits(cfg.data)
    model = build_model(cfg.model, **task.model_args(splits)).train()
    stage = next((s for s in cfg.stages if s.augmentation), cfg.stages[0])
    collate = task.collator(stage, training=True, model_config=model.config)
    loader = DataLoader(splits.train, batch_size=stage.batch_size, shuffle=True, collate_fn=collate,
                        num_workers=cfg.data.num_workers, drop_last=True)
    n = min(batches, len(loader))
    began = time.perf_counter()
    kept = list(itertools.islice(iter(loader), n))
    loader_rate = n * stage.batch_size / (time.perf_counter() - began)

    from hfstage.losses import build_loss

    loss_fn = build_loss(stage.loss, stage.label_smoothing)
    loss_fn.bind_model(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(batch):
        batch = dict(batch)
        labels = batch.pop("labels")
        targets = {k: batch.pop(k) for k in loss_fn.label_keys}
        loss = loss_fn(model(**batch), labels, **targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(kept[0])  # warm-up
    began = time.perf_counter()
    for batch in kept:
        step(batch)
    step_rate = len(kept) * stage.batch_size / (time.perf_counter() - began)
    in_memory = _in_memory(kind, splits.train)
    arrow_vs_memory = None
    if in_memory is not None:  # load + step from the memory-mapped split vs from arrays in memory, alternated
        rates = {"arrow": [], "memory": []}
        for _ in range(5):
            for name, dataset in (("arrow", splits.train), ("memory", in_memory)):
                loader = DataLoader(dataset, batch_size=stage.batch_size, shuffle=True, collate_fn=collate,
                                    num_workers=cfg.data.num_workers, drop_last=True)
                began = time.perf_counter()
                for batch in itertools.islice(iter(loader), n):
                    step(batch)
                rates[name].append(n * stage.batch_size / (time.perf_counter() - began))
        arrow_vs_memory = statistics.median(a / m for a, m in zip(rates["arrow"], rates["memory"]))
    return {"kind": kind, "recipe": recipe, "batch": stage.batch_size, "workers": cfg.data.num_workers,
            "augmentation": ",".join(f"{k}={v:g}" for k, v in stage.augmentation.items()) or "-",
            "loader": loader_rate, "step": step_rate, "ratio": loader_rate / step_rate,
            "arrow_vs_memory": arrow_vs_memory}


def _in_memory(kind: str, split):
    """The same training split as arrays held in memory (the loader hfstage used before datasets), or None."""
    import numpy as np

    if kind == "pairs":
        from hfstage.data.npz_pairs import PairDataset

        return PairDataset(np.concatenate(list(split.images.blocks()))[: len(split)], split.y.numpy())
    if kind == "sequences":
        from hfstage.data.npz_sequences import SequenceDataset

        return SequenceDataset(split.x, split.y.numpy(), split.lengths.numpy(), split.classes)
    return None


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--batches", type=int, default=30)
    args = parser.parse_args(argv)
    from hfstage.devices import tune_cpu_allocator

    tune_cpu_allocator()  # as StageTrainer.train does: the step rate is the one hfstage trains at
    os.chdir(ROOT)
    tmp = Path(tempfile.mkdtemp())
    kinds = [k for k in KINDS if k != "audio" or shutil.which("espeak-ng")]
    rows = []
    try:
        for kind in kinds:
            data = _prepare(kind, tmp, args.quick)
            rows.append(measure(kind, data, 3 if args.quick else args.batches))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    from hfstage.reporting import format_table

    table = format_table([("data kind", "recipe", "batch", "workers", "augmentation", "loader samples/s",
                           "step samples/s", "loader / step", "load+step: arrow / in-memory")] +
                         [(r["kind"], r["recipe"], str(r["batch"]), str(r["workers"]), r["augmentation"],
                           f"{r['loader']:.0f}", f"{r['step']:.0f}", f"{r['ratio']:.2f}",
                           f"{r['arrow_vs_memory']:.3f}" if r["arrow_vs_memory"] else "-") for r in rows])
    worst = min(r["ratio"] for r in rows)
    print(table)
    if not args.quick:
        body = (f"{machine_line()}. Target: loader >= 3x the training step rate; loading and stepping from the "
                "memory-mapped `datasets` split within 5% of the same arrays held in memory (median of 5 alternated "
                f"rounds). `python bench/data_loading.py`\n\n```\n{table}\n```\n")
        update_benchmarks("data_loading", "Data loading vs training step (`bench/data_loading.py`)", body)
    print(f"min_loader_to_step_ratio: {worst:.3f}")
    return worst


if __name__ == "__main__":
    main()
