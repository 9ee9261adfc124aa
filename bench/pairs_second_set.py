"""Do the pair recipes carry to another pair set? Every shipped pair recipe on `hfstage prepare digits-pairs`.

The second set is made unlike MNIST pairs: scikit-learn's bundled 8x8 digits (other writers, 17 grey
levels) upscaled to 28x28, split by image before pairing (6,000 / 2,000 / 2,000 pairs from 1,078 / 360 /
359 images). Each recipe trains there with its own settings (only ``data.path`` and ``output_dir`` change);
the yardstick is a plain PyTorch siamese CNN written here (two conv blocks, ``|a - b|`` and ``a * b`` head,
5 epochs of Adam), the "plain 5-epoch siamese CNN" no recipe may fall below.

    python bench/pairs_second_set.py            # ~10 min on 2 CPU cores
    python bench/pairs_second_set.py --quick    # smoke mode: small set, one recipe in quick_test mode

The last line is ``worst_recipe_minus_plain_cnn: X``: the lowest test accuracy of a recipe minus the plain
CNN's (>= 0: every recipe holds). The table goes to docs/benchmarks.md (section ``pairs_second_set``).
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

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line, update_benchmarks  # noqa: E402

RECIPES = ("quickstart", "pairs_base", "pairs_fusion", "pairs_resnet_se_focal", "pairs_lightgbm", "pairs_multiseed",
           "pairs_stack")


class PlainSiamese(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                     nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                                     nn.Linear(64 * 7 * 7, 128), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 1))

    def forward(self, x):  # (B, 2, 28, 28) in [0, 1]
        b = x.shape[0]
        e = self.encoder(x.reshape(b * 2, 1, *x.shape[-2:])).reshape(b, 2, -1)
        return self.head(torch.cat([(e[:, 0] - e[:, 1]).abs(), e[:, 0] * e[:, 1]], dim=1))[:, 0]


def plain_cnn(data: Path, epochs: int = 5, seed: int = 0) -> float:
    torch.manual_seed(seed)
    train, test = np.load(data / "train.npz"), np.load(data / "test_public.npz")
    x = torch.from_numpy(train["x"]).float() / 255
    y = torch.from_numpy(train["y"]).float()
    model = PlainSiamese()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x)).split(128):
            opt.zero_grad()
            nn.functional.binary_cross_entropy_with_logits(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(test["x"]).float() / 255)
    return float(((logits > 0).long().numpy() == test["y"]).mean())


def recipe_accuracy(recipe: str, data: Path, out: Path, extra: list[str]) -> tuple[float, float]:
    subprocess.run([sys.executable, "-m", "hfstage", "train", "--config", f"configs/{recipe}.yaml",
                    f"data.path={data}", f"output_dir={out}", "report_to=[none]", *extra], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # the stages' own training times (every seed and base), so a rerun that reuses finished runs reports them too
    seconds = sum(json.loads(p.read_text())["training_time_s"] for p in out.rglob("stage.json"))
    runs = sorted(out.glob("seed_*")) or [out]  # a multi-seed recipe: the mean of its seeds' best stages
    accs = []
    for run in runs:
        shown = subprocess.run([sys.executable, "-m", "hfstage", "evaluate", str(run), "--split", "test", "--json"],
                               check=True, capture_output=True, text=True).stdout
        accs.append(json.loads(shown)["metrics"]["accuracy"])
    return float(np.mean(accs)), seconds


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--data", default="data/digits_pairs")
    parser.add_argument("--runs", default="runs/pairs_second_set")
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    tmp = tempfile.TemporaryDirectory()
    data, runs, extra, recipes = Path(args.data), Path(args.runs), [], RECIPES
    from hfstage.data.prepare import prepare_digits_pairs

    if args.quick:
        data, runs = Path(tmp.name) / "data", Path(tmp.name) / "runs"
        prepare_digits_pairs(data, train_pairs=400, val_pairs=200, test_pairs=200)
        extra, recipes = ["quick_test=true"], ("pairs_lightgbm",)
    elif not (data / "test_public.npz").is_file():
        prepare_digits_pairs(data)
    began = time.time()
    plain = plain_cnn(data, epochs=1 if args.quick else 5)
    rows = [("method", "test_accuracy", "minus plain CNN", "train_s"),
            ("plain siamese CNN, 5 epochs (this script)", f"{plain:.4f}", "-", f"{time.time() - began:.0f}")]
    worst = float("inf")
    for recipe in recipes:
        acc, seconds = recipe_accuracy(recipe, data, runs / recipe, extra)
        worst = min(worst, acc - plain)
        rows.append((f"configs/{recipe}.yaml", f"{acc:.4f}", f"{acc - plain:+.4f}", f"{seconds:.0f}"))
        print(f"{recipe}: {acc:.4f}", flush=True)
    from hfstage.reporting import format_table

    table = format_table(rows)
    print(table)
    if not args.quick:
        body = (f"{machine_line()}\n\n```\nhfstage prepare digits-pairs --out {data}\npython bench/pairs_second_set.py\n"
                "```\n\nEach recipe as shipped, with `data.path` and `output_dir` changed (seeds: the recipes'; "
                "the plain CNN seed 0); test accuracy of the best stage (pairs_multiseed: the mean over its "
                f"seeds; pairs_stack: the saved stack, `hfstage evaluate RUN --json`) on the 2,000 test pairs.\n\n```\n{table}\n```\n\nWorst recipe minus the plain CNN: "
                f"{worst:+.4f} (target: >= 0).")
        update_benchmarks("pairs_second_set", "Pair recipes on a second pair set (`bench/pairs_second_set.py`)",
                          body)
    tmp.cleanup()
    print(f"worst_recipe_minus_plain_cnn: {worst:.4f}")
    return worst


if __name__ == "__main__":
    main()
