"""``hfstage auto`` with a fixed budget against the recipe a user would pick by hand, and the anchors.

On each development set ``hfstage auto --budget B`` (B = 10 minutes, 2 CPU cores) is set against (a) the task's
recommended recipe from configs/ trained in full (its wall time beside) and (b) the side-by-side anchors the other
benches measure: a plain siamese CNN (pairs, as bench/pairs_second_set.py), aeon's MiniRocket and 1-NN DTW (series,
as bench/sequences_long.py), the plain speech recogniser (bench/speech_baseline.py). The score is test accuracy
(speech: the mispronunciation error F1) of auto's answer (``hfstage evaluate DIR --split test``) and of the recipe's
best stage. The sets: MNIST pairs with 2,000 training pairs (1,000 val, 1,000 test), JapaneseVowels, ArrowHead (a
long univariate aeon set) and the default espeak-l2 set (portfolio and search only: speech does not stack). Seeds:
data 0, recipes 42, anchors 0. The budget overrun is auto's wall time over the budget, minus 1.

The last line is ``auto_min_margin_vs_recommended_recipe: X`` (auto minus recipe, the worst set; target >= 0.0).

    python bench/auto.py                       # the four sets, 10-minute budgets: ~1.5 h on 2 CPU cores
    python bench/auto.py --sets pairs,vowels   # some of them (the docs section then lists only those)
    python bench/auto.py --quick               # smoke mode: 320 pairs, a 10 s budget, the recipe in quick mode
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line, update_benchmarks  # noqa: E402

SETS = {  # name -> (how it is made, the recommended recipe, the score's metric)
    "pairs": ("MNIST pairs 2,000/1,000/1,000", "configs/quickstart.yaml", "accuracy"),
    "vowels": ("JapaneseVowels", "configs/sign_5stage.yaml", "accuracy"),
    "arrowhead": ("ArrowHead (aeon)", "configs/sequences_long.yaml", "accuracy"),
    "speech": ("espeak-l2 default", "configs/speech_multitask.yaml", "error_f1"),
}


def prepare(name: str, folder: Path, quick: bool) -> None:
    from hfstage.data import prepare as p

    if name == "pairs":
        sizes = (320, 160, 160) if quick else (2000, 1000, 1000)
        p.prepare_mnist_pairs(folder, seed=0, train_pairs=sizes[0], val_pairs=sizes[1], test_pairs=sizes[2])
    elif name == "vowels":
        p.prepare_japanese_vowels(folder, seed=0)
    elif name == "arrowhead":
        p.prepare_aeon(folder, seed=0, dataset="ArrowHead")
    else:
        p.prepare_espeak_l2(folder, seed=0)


def hfstage(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "hfstage", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"hfstage {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout


def test_score(folder: Path, metric: str) -> float:
    return float(json.loads(hfstage("evaluate", str(folder), "--split", "test", "--json"))["metrics"][metric])


def anchors(name: str, data: Path, quick: bool) -> dict[str, float]:
    if name == "pairs":
        from pairs_second_set import plain_cnn

        return {"plain CNN": plain_cnn(data, epochs=1 if quick else 5)}
    if name in ("vowels", "arrowhead"):
        from sequences_long import references

        return {k: v[0] for k, v in references(data, 0).items()}
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "speech_baseline.py"), "--data", str(data)],
                         capture_output=True, text=True, check=True).stdout
    return {"plain recogniser": float(out.strip().splitlines()[-1].split(": ")[1])}


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sets", default=",".join(SETS), help="comma-separated: " + ", ".join(SETS))
    parser.add_argument("--budget", default="10m")
    parser.add_argument("--runs", default="runs/bench_auto", help="where the data, auto folders and recipe runs go")
    args = parser.parse_args(argv)
    names = ["pairs"] if args.quick else args.sets.split(",")
    budget = "10s" if args.quick else args.budget
    from hfstage.stage_search.settings import parse_duration

    seconds = parse_duration(budget, "--budget")
    tmp = tempfile.TemporaryDirectory()
    runs = Path(tmp.name) if args.quick else Path(args.runs).resolve()
    rows = [("set", "method", "test score", "seconds")]
    margins, overruns, lines = {}, {}, []
    for name in names:
        title, recipe, metric = SETS[name]
        title = "MNIST pairs 320/160/160" if args.quick else title
        data = runs / "data" / name
        if not data.exists():
            prepare(name, data, args.quick)
        out = runs / name / "auto"
        began = time.time()
        hfstage("auto", "--data", str(data), "--budget", budget, "--out", str(out))
        auto_wall = time.time() - began
        auto_score = test_score(out, metric)
        state = json.loads((out / "auto.json").read_text())
        began = time.time()
        extra = ["quick_test=true"] if args.quick else []
        hfstage("train", "--config", str(ROOT / recipe), f"data.path={data}", f"output_dir={runs / name / 'recipe'}",
                "report_to=[none]", *extra)
        recipe_wall = time.time() - began
        recipe_score = test_score(runs / name / "recipe", metric)
        anchor = anchors(name, data, args.quick)
        margins[name] = auto_score - recipe_score
        overruns[name] = auto_wall / seconds - 1
        rows.append((title, f"hfstage auto ({state['final']['name']})", f"{auto_score:.4f}", f"{auto_wall:.0f}"))
        rows.append((title, f"recommended recipe ({Path(recipe).name})", f"{recipe_score:.4f}", f"{recipe_wall:.0f}"))
        for label, value in anchor.items():
            rows.append((title, label, f"{value:.4f}", "-"))
        lines.append(f"- {title}: auto minus recipe {margins[name]:+.4f}; minus "
                     + ", ".join(f"{k} {auto_score - v:+.4f}" for k, v in anchor.items())
                     + f"; budget overrun {100 * overruns[name]:+.1f}% ({auto_wall:.0f} s for {seconds:.0f} s); "
                     f"answer: {state['final']['name']} ({state['final']['why']})")
        print(lines[-1], flush=True)
    from hfstage.reporting import format_table

    table = format_table(rows)
    print(table)
    worst = min(margins.values())
    if not args.quick:
        body = (f"{machine_line()}\n\n```\npython bench/auto.py --sets {','.join(names)} --budget {budget}\n```\n\n"
                f"Budget {budget} per set; test accuracy (speech: error F1) of auto's answer and of the recommended "
                "recipe trained in full; the anchors as the other benches measure them (seeds: data 0, recipes 42, "
                f"anchors 0).\n\n```\n{table}\n```\n\n" + "\n".join(lines)
                + f"\n\nWorst margin over the recommended recipe: {worst:+.4f} (target >= 0); worst budget overrun "
                f"{100 * max(overruns.values()):+.1f}% (target <= 10%).")
        update_benchmarks("auto", "hfstage auto against the recommended recipe (`bench/auto.py`)", body)
    tmp.cleanup()
    print(f"auto_min_margin_vs_recommended_recipe: {worst:.4f}")
    return worst


if __name__ == "__main__":
    main()
