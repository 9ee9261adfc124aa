"""Pronunciation feedback a learner can trust (issue #36): what `speech_multitask.yaml` reports as heard, against
echoing the prompt and against a plain recogniser, and how well it diagnoses the errors it flags.

Two differently shaped espeak-l2 sets: the default one (val and test accents never heard in training, errors of
every kind) and a words set (other words, every voice in every split, splits by word, 30% of the clips wrong with
one substitution each). On each: the recipe trained in full (its best stage by the audio-only layer's eval PER),
its test PERs (`per`: the recogniser chosen on eval; `prompt_echo_per`: the canonical phonemes unchanged;
the prompted layer's, the prompt-aware decoder's, the diagnosed prompt's and the audio-only layer's), error F1,
diagnosis accuracy, false acceptance and rejection rates; and `bench/speech_baseline.py` (log-mel + BiGRU + CTC,
recognise-and-compare) on the same set. Seeds: data 0, recipe 42, 1 and 2 (one run each: the recipe's figures
move with its seed by more than some targets' margins), baseline 0.

    python bench/speech_feedback.py              # both sets, three recipe seeds, ~35 min on 2 CPU cores
    python bench/speech_feedback.py --seeds 42   # one recipe seed
    python bench/speech_feedback.py --quick      # smoke mode: 8 words of the default set, every stage one epoch,
                                                 # the first seed, no plain recogniser

The last line is ``speech_feedback_worst_per_over_echo: <max over the sets and seeds of per / prompt_echo_per>``
(target <= 0.6).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line, update_benchmarks  # noqa: E402

SEEDS = (42, 1, 2)
SETS = {
    "default": {},
    "words": {"word_source": ROOT / "bench" / "speech_words.txt", "split_by": "word", "wrong_fraction": 0.3,
              "errors": "substitution", "errors_per_clip": 1, "voices": 4},
}
KEYS = ("per", "prompt_echo_per", "prompted_per", "prompt_aware_per", "diagnosed_per", "audio_only_per", "error_f1",
        "diagnosis_accuracy", "false_acceptance_rate", "false_rejection_rate")


def recipe(data: Path, out: Path, quick: bool, seed: int) -> dict:
    import hfstage
    from hfstage.run_dir import RunDir

    extra = ["quick_test=true"] if quick else []
    hfstage.train(str(ROOT / "configs" / "speech_multitask.yaml"),
                  overrides=[f"data.path={data}", f"output_dir={out}", "report_to=[none]", f"seed={seed}", *extra])
    run = RunDir(out).read()
    record = RunDir(out).read_stage(run.best_stage_dir)
    config = json.loads((out / run.best_stage_dir / "config.json").read_text())
    return {"stage": run.best_stage_dir, "recognizer": config.get("recognizer"),
            "penalty": config.get("edit_penalty"), "eval_per": record.metrics.get("eval_per"),
            "eval_echo": record.metrics.get("eval_prompt_echo_per"),
            **{k: record.test_metrics.get(f"test_{k}") for k in KEYS}}


def plain_recogniser(data: Path, name: str) -> float:
    command = [sys.executable, str(ROOT / "bench" / "speech_baseline.py"), "--data", str(data), "--name", name,
               "--no-docs"]
    proc = subprocess.run(command, capture_output=True, text=True, check=True)
    return float(re.search(r"^test: PER ([0-9.]+)", proc.stdout, re.M).group(1))


def seed_list(text: str) -> list[int]:
    """``--seeds 42,1,2``: argparse reports anything else as a bad value of --seeds (exit code 2)."""
    return [int(s) for s in text.split(",")]


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=seed_list, default=list(SEEDS), help="the recipe's seeds, comma-separated")
    args = parser.parse_args(argv)
    seeds = args.seeds[: 1 if args.quick else None]
    from hfstage.data.prepare import prepare_espeak_l2

    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, shape in (list(SETS.items())[:1] if args.quick else SETS.items()):
            data = Path(tmp) / name
            prepare_espeak_l2(data, seed=0, **({"words": 8} if args.quick else {}), **shape)
            # the plain recogniser's own smoke test runs it quickly (tests/test_bench.py): not again here
            plain = None if args.quick else plain_recogniser(data, name)
            for seed in seeds:
                rows[name, seed] = {**recipe(data, Path(tmp) / f"run_{name}_{seed}", args.quick, seed), "plain": plain}

    def f(value) -> str:
        return "-" if value is None else f"{value:.3f}"

    lines = [f"{machine_line()}; seeds: data 0, recipe {', '.join(map(str, seeds))}, baseline 0. Test split; `per` is "
             "what the stage reports as heard (the recogniser chosen on the eval split).", "",
             "| set | seed | per | prompt_echo_per | per / echo | prompted | prompt-aware | diagnosed | audio-only "
             "| plain recogniser | error F1 | diagnosis acc. | FAR | FRR | chosen on eval |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows.values():
        r["ratio"] = r["per"] / max(r["prompt_echo_per"], 1e-12)
    for (name, seed), r in rows.items():
        penalty = "" if r["recognizer"] != "prompt_aware" else f" (penalty {r['penalty']:g})"
        lines.append(f"| {name} | {seed} | {f(r['per'])} | {f(r['prompt_echo_per'])} | {r['ratio']:.2f} | "
                     f"{f(r['prompted_per'])} | {f(r['prompt_aware_per'])} | {f(r['diagnosed_per'])} | "
                     f"{f(r['audio_only_per'])} | "
                     f"{f(r['plain'])} | {f(r['error_f1'])} | "
                     f"{f(r['diagnosis_accuracy'])} | {f(r['false_acceptance_rate'])} | "
                     f"{f(r['false_rejection_rate'])} | {r['recognizer']}{penalty}, {r['stage']} |")
    for name in dict.fromkeys(n for n, _ in rows):
        runs = [r for (n, _), r in rows.items() if n == name]
        lines.append(f"\n{name}, over the seeds: worst per / echo {max(r['ratio'] for r in runs):.2f}, audio-only PER "
                     f"{min(r['audio_only_per'] for r in runs):.3f}-{max(r['audio_only_per'] for r in runs):.3f}, "
                     f"error F1 {min(r['error_f1'] for r in runs):.3f}-{max(r['error_f1'] for r in runs):.3f}, "
                     f"diagnosis accuracy {min(r['diagnosis_accuracy'] for r in runs):.3f}-"
                     f"{max(r['diagnosis_accuracy'] for r in runs):.3f}.")
    lines += ["", "Targets (issue #36): per <= 0.6 x prompt_echo_per and <= the plain recogniser's PER; audio-only PER "
              "<= 0.10; error F1 >= 0.80; diagnosis accuracy >= 0.80, on both sets.", "",
              "`python bench/speech_feedback.py`"]
    body = "\n".join(lines)
    print(body)
    if not args.quick:
        update_benchmarks("speech_feedback", "Speech feedback a learner can trust", body)
    worst = max(r["ratio"] for r in rows.values())
    print(f"speech_feedback_worst_per_over_echo: {worst:.3f}")
    return worst


if __name__ == "__main__":
    main()
