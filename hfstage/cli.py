"""The ``hfstage`` command line: thin wrappers that parse arguments and call the library."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from hfstage.errors import HfstageError

logger = logging.getLogger("hfstage")


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="recipe YAML (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="override any config field: defaults.lr=3e-4, stages.2.lr=1e-4, stages.finetune.epochs=2")
    _add_verbose(p)


def _add_verbose(p: argparse.ArgumentParser) -> None:
    p.add_argument("--verbose", action="store_true",
                   help="also the libraries' own output: the Trainer's log dicts, progress and weight-loading bars")


def build_parser() -> argparse.ArgumentParser:
    from hfstage.executors import EXECUTORS
    from hfstage.version import __version__

    parser = argparse.ArgumentParser(prog="hfstage", description="Staged training on transformers.Trainer + accelerate.")
    parser.add_argument("--version", action="version", version=f"hfstage {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="run or resume a curriculum in this process (use `accelerate launch hfstage/train.py` for several)")
    _add_config_args(p)
    p.add_argument("--executor", choices=EXECUTORS.names(), help="where the folds, seeds or stack bases train: "
                   "local (one after another) or ray (side by side as Ray tasks); the same as executor.type=NAME (the "
                   "recipe's other executor keys are kept)")
    p.add_argument("--address", help="the cluster the executor joins (Ray: auto, HOST:6379, ray://HOST:10001; default a "
                   "local Ray); the same as executor.address=A")

    p = sub.add_parser("search", help="search one stage's hyperparameters (Optuna): the stages before it train once, "
                       "every trial starts from their kept checkpoint (docs/search.md)")
    p.add_argument("--config", required=True, help="recipe YAML (its search: block gives defaults for these flags)")
    p.add_argument("stage", help="the stage to search (number or name), or all: every stage in turn, each from the "
                   "best trial of the one before")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override any config field, as for train")
    p.add_argument("--trials", type=int, help="trials of the stage, counted over reruns (default 20)")
    p.add_argument("--space", action="append", metavar="KEY=DIST", help="a stage field and its distribution: "
                   "lr=loguniform(1e-5,1e-2), dropout=uniform(0,0.5), batch_size=choice(32,64), epochs=int(1,5), "
                   "loss.gamma=uniform(0,5), training_args.adam_beta2=uniform(0.9,0.999); model.FIELD for stage 1 (repeatable)")
    p.add_argument("--metric", help="the metric to optimise (default: the recipe's metric_for_best_model, its direction)")
    p.add_argument("--pruner", choices=("median", "hyperband", "none"), help="stop hopeless trials at an evaluation "
                   "(default median)")
    p.add_argument("--timeout", metavar="DURATION", help="no trial starts after this long (90s, 15m, 2h, 1h30m)")
    p.add_argument("--out", help="the search folder (default <output_dir>/search_<stage>)")
    p.add_argument("--from", dest="from_run", metavar="RUN", help="a finished run whose earlier stages the trials "
                   "start from (instead of training them)")
    p.add_argument("--through", metavar="LAST", help="each trial also trains the stages after the searched one, up to "
                   "this one")
    p.add_argument("--storage", help="an Optuna RDB URL (sqlite:///..., postgresql://...) or journal:PATH (a journal file "
                   "on a shared filesystem) instead of <out>/study.db")
    p.add_argument("--trials-per-stage", type=int, help="all: the trials of each stage (default --trials)")
    p.add_argument("--executor", choices=EXECUTORS.names(), help="where trials train: local (one after another) or "
                   "ray (side by side as Ray tasks, as many as the cluster fits)")
    p.add_argument("--address", help="the cluster the executor joins (Ray: auto, HOST:6379; default a local Ray)")
    _add_verbose(p)

    p = sub.add_parser("auto", help="the best model or stacked ensemble a time budget buys on a data set: portfolio "
                       "recipes quick then full, a stage search, k-fold bags, the stack (docs/auto.md)")
    p.add_argument("--data", required=True, help="the data: hfstage's own files, a save_to_disk/parquet/csv/json folder "
                   "or hf://datasets/OWNER/NAME")
    p.add_argument("--budget", required=True, metavar="DURATION", help="wall time for all of it (90s, 15m, 2h, 1h30m); "
                   "a rerun with a larger budget continues")
    p.add_argument("--task", help="the task kind: pair_classification, sequence_classification, image_classification "
                   "or speech_assessment (default: read from the data's fields)")
    p.add_argument("--out", default="runs/auto", help="the auto folder (default runs/auto)")
    p.add_argument("--metric", help="the eval metric models are ranked by (default accuracy; speech error_f1)")
    p.add_argument("--executor", choices=EXECUTORS.names(), help="where the folds of a bag and the trials of a search "
                   "train: local (in turn) or ray (side by side)")
    p.add_argument("--address", help="the cluster the executor joins (Ray: auto, HOST:6379; default a local Ray)")
    p.add_argument("--preset", choices=("quick", "best"), default="best", help="quick: the portfolio quickly, then the "
                   "best recipe in full; best (default): then a stage search, k-fold bags and the stack")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="applied to every recipe (data.columns.label=y ...)")
    _add_verbose(p)

    p = sub.add_parser("plan", help="print the resolved stages without training (a dry run)")
    _add_config_args(p)

    p = sub.add_parser("prepare", help="write a real data set in hfstage's format")
    p.add_argument("name", help="data set: mnist-pairs (MNIST same/different pairs), digits-pairs (a second pair "
                   "set: scikit-learn's 8x8 digits upscaled), mnist-images (MNIST digits as PNG "
                   "class folders + unlabelled test images), japanese-vowels (sequences), aeon --dataset NAME (a UCR/UEA time-series "
                   "set aeon bundles: ArrowHead, BasicMotions, GunPoint, ItalyPowerDemand, JapaneseVowels) or espeak-l2 (speech: "
                   "words said right and wrong by espeak-ng, exact per-phoneme labels)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dataset", help="aeon only: which bundled UCR/UEA set")
    p.add_argument("--train-pairs", type=int, help="mnist-pairs (default 60000), digits-pairs (6000)")
    p.add_argument("--val-pairs", type=int, help="mnist-pairs (default 10000), digits-pairs (2000)")
    p.add_argument("--test-pairs", type=int, help="mnist-pairs (default 10000), digits-pairs (2000)")
    p.add_argument("--train-images", type=int, help="mnist-images only (default 10000, at most 50000)")
    p.add_argument("--val-images", type=int, help="mnist-images only (default 2000, at most 10000)")
    p.add_argument("--test-images", type=int, help="mnist-images only (default 2000, at most 10000)")
    p.add_argument("--shift", help="mnist-images only: also write a target domain, the val and test images under a "
                   "fixed shift (dark-blur-noise or washed-noisy): val_shifted/, test_shifted/ and unlabelled target/")
    p.add_argument("--words", type=int, help="espeak-l2 only: how many words (default: all of the list)")
    p.add_argument("--word-source", help="espeak-l2 only: a text file of words (default: a built-in list of ~150)")
    p.add_argument("--split-by", choices=("voice", "word"),
                   help="espeak-l2 only: voice (default; val/test accents unseen) or word (voices mixed, val/test words unseen)")
    p.add_argument("--wrong-fraction", type=float,
                   help="espeak-l2 only: one clip per voice and word, mispronounced with this probability "
                   "(default: every word said once right and once wrong)")
    p.add_argument("--errors", choices=("both", "substitution"),
                   help="espeak-l2 only: substitutions and final-consonant deletions (both, default) or substitutions only")
    p.add_argument("--errors-per-clip", type=int, choices=(1, 2), help="espeak-l2 only: at most 1 or 2 errors (default 2)")
    p.add_argument("--voices", type=int, help="espeak-l2 with --split-by word only: how many of the 8 voices "
                   "(default all)")

    p = sub.add_parser("evaluate", help="evaluate a saved stage (or a run's best stage, or a stack) on a data split")
    p.add_argument("checkpoint", help="a stage folder (stage_<N>_<name>), a run folder (its best stage), "
                   "hf://OWNER/NAME[@REVISION][/stage_<N>_<name>], or a stack folder (stack_meta.json)")
    p.add_argument("--out", help="folder for the eval files (default: eval/ beside a local stage, "
                   "./eval/<owner>--<name>/<stage> for a Hub one)")
    p.add_argument("--data", help="folder with the split files (default: what the run trained on)")
    p.add_argument("--split", default="test", help="train, val, test, or NAME for NAME.npz (default: test)")
    p.add_argument("--save-predictions", action="store_true", help="also write eval/<split>_predictions.csv")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")

    p = sub.add_parser("export", help="export a saved stage to ONNX (or a torch.export program), checked against PyTorch")
    p.add_argument("stage", help="a stage folder, a run folder (its best stage) or hf://OWNER/NAME[/stage_<N>_<name>]")
    p.add_argument("--format", choices=("onnx", "pt2"), default="onnx")
    p.add_argument("--out", help="output folder (default: <stage>/onnx or <stage>/pt2)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--data", help="folder with the split files, if the stage's data has moved (a real batch checks the export)")

    p = sub.add_parser("inspect-shift", help="image statistics of the training split vs a target folder: how far "
                       "brightness, contrast, blur, noise, size and colour shifted")
    p.add_argument("--data", required=True, help="the image data folder (as data.path)")
    p.add_argument("--train-split", default="train", help="training split under --data: a class-folder tree or a "
                   "path,label CSV (default: train)")
    p.add_argument("--target", help="folder of target images, under --data or a path (default: test_images, else test)")
    p.add_argument("--out", default="shift.json", help="the report (JSON; default shift.json); the histograms of the "
                   "most shifted statistics go beside it as .png")
    p.add_argument("--max-images", type=int, default=2000, help="a seeded random sample of at most this many images "
                   "from each side (default 2000)")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")

    p = sub.add_parser("stack", help="fit a meta-learner over base models' predictions and compare ensembles")
    p.add_argument("--models", nargs="+", required=True, help="base models: run folders (best stage), stage folders or hf:// references")
    p.add_argument("--out", required=True, help="folder for stack.json and the fitted meta-learner")
    p.add_argument("--data", help="folder with the split files (default: what the first model trained on)")
    p.add_argument("--meta", default="auto", help="meta-learner saved for `predict`: mean, selection (greedy ensemble "
                   "selection), logreg, lightgbm, or auto (default: of those within one standard error of the best CV "
                   "accuracy on the meta-train split, the lowest CV log-loss)")
    p.add_argument("--folds", type=int, default=5, help="stratified folds of the meta-learner's CV")
    p.add_argument("--agreement", action="store_true", help="add std/max/min of the base probabilities as features")
    p.add_argument("--passthrough", action="store_true", help="add the original inputs (flattened) as features")
    p.add_argument("--train-split", help="split the meta-learner trains on (default val; never a base model's training "
                   "data; not with k-fold bases, whose out-of-fold predictions are used)")
    p.add_argument("--test-split", default="test")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("predict", help="predict images with runs (folds, TTA) into a submission CSV, or with a fitted "
                       "stack or an hfstage auto folder (DIR --data NEW)")
    p.add_argument("runs", nargs="*", help="with --images: runs (k-fold runs average their folds), stages or hf:// "
                   "references; with --data: one hfstage auto (or stack) folder")
    p.add_argument("--images", help="folder of images to predict (flat, or with class folders to also score them)")
    p.add_argument("--tta", type=int, default=1, help="test-time augmentation views, 1-8 (1-6 never flip; see docs/tasks/images.md)")
    p.add_argument("--proba", action="store_true", help="add one p_<class> probability column per class")
    p.add_argument("--stack", help="a folder written by `hfstage stack` (instead of runs and --images)")
    p.add_argument("--data", help="--stack or an auto folder: the data (folder or source) holding the split")
    p.add_argument("--split", default="test", help="--stack or an auto folder: split to predict")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--out", help="CSV to write (required with --images; final_results.json goes beside it)")

    p = sub.add_parser("continue", help="append a stage to a finished run, starting from one of its stages")
    p.add_argument("run", nargs="?", help="the run folder, or hf://OWNER/NAME[@REVISION] (pulled into --out first)")
    p.add_argument("--out", help="with an hf:// run: the empty folder to pull it into and continue in")
    p.add_argument("--list", nargs="?", const="runs", metavar="DIR", help="list the stages that can be continued")
    p.add_argument("--from", dest="from_stage", help="stage number or name (default: the run's best stage)")
    p.add_argument("--preset", help="fine_tune (low lr), regularization (stronger LS/dropout/wd), exploration (higher lr, warm restart)")
    p.add_argument("--data", help="folder with the split files, if the run's data path has moved")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="stage fields of the new stage: lr=1e-5 epochs=2")
    _add_verbose(p)

    p = sub.add_parser("push", help="push a run (or some of its stages), or an hfstage auto answer, to the Hub")
    p.add_argument("run", help="the run folder, or an hfstage auto folder (its answer and card)")
    p.add_argument("--repo-id", required=True, help="OWNER/NAME of the Hub repository (created when missing)")
    p.add_argument("--stage", default="all", help="N, NAME, best or all (default: all finished stages)")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument("--revision", help="branch to push to (created from main when missing)")
    p.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing to the branch")
    p.add_argument("--commit-message", help="default: the pushed stage folders")

    p = sub.add_parser("pull", help="download a pushed run (or one stage), or a pushed hfstage auto answer")
    p.add_argument("name", help="OWNER/NAME or hf://OWNER/NAME[@REVISION][/stage_<N>_<name>]")
    p.add_argument("--out", required=True, help="an empty (or new) folder")
    p.add_argument("--stage", help="N, NAME, best or all (default: all pushed stages)")
    p.add_argument("--revision", help="branch, tag (stage-<N>-<name>) or commit")

    p = sub.add_parser("runs", help="look at finished runs")
    runs = p.add_subparsers(dest="runs_command", required=True)
    q = runs.add_parser("list", help="every run under a folder, with its best stage and metric")
    q.add_argument("folder", nargs="?", default="runs")
    q = runs.add_parser("show", help="the stages table of one run")
    q.add_argument("run")
    q = runs.add_parser("compare", help="several runs side by side, best value per metric marked")
    q.add_argument("runs", nargs="+")
    q.add_argument("--metric", action="append", help="metric(s) to show (default: eval loss/accuracy/f1, test accuracy)")
    q.add_argument("--format", choices=("table", "markdown", "csv"), default="table")
    q.add_argument("--no-config", action="store_true", help="leave out the table of config keys that differ")
    q = runs.add_parser("cleanup", help="delete old or poor runs, never the best K of a (task, model type) group")
    q.add_argument("folder", nargs="?", default="runs")
    q.add_argument("--days-old", type=float, help="only runs last updated at least this many days ago")
    q.add_argument("--keep-best", type=int, default=1, help="runs kept in every group, by their tracked metric")
    q.add_argument("--pattern", default="*", help="only run folders whose name matches this glob")
    q.add_argument("--dry-run", action="store_true", help="print what would be deleted, delete nothing")
    q = runs.add_parser("archive", help="pack runs into a .tar.gz (extract it to restore the run folders)")
    q.add_argument("runs", nargs="+")
    q.add_argument("--out", required=True, help="FILE.tar.gz")

    p = sub.add_parser("doctor", help="check this machine: packages, devices, precision, disk, the Hub")
    p.add_argument("--require-gpu", action="store_true", help="fail when no GPU is visible")
    p.add_argument("--require-hub", action="store_true", help="fail when the Hub endpoint does not answer")

    p = sub.add_parser("config", help="config tools")
    p.add_argument("--reference", action="store_true", required=True, help="print the config reference (Markdown)")
    p.add_argument("--update-readme", metavar="FILE",
                   help="replace the text between the reference markers of FILE (docs/config.md) instead of printing")
    return parser


def _train(args) -> int:
    from hfstage.config import load_config, read_yaml
    from hfstage.ensemble import is_stack_job, load_stack_job, run_stack_job
    from hfstage.sweeps import run_seeds

    args.overrides = [*args.overrides, *([f"executor.type={args.executor}"] if args.executor else []),
                      *([f"executor.address={args.address}"] if args.address else [])]

    if is_stack_job(read_yaml(args.config)):  # a stacking recipe: its bases, then the stack
        run_stack_job(load_stack_job(args.config, args.overrides))
        return 0
    cfg = load_config(args.config, args.overrides)
    run_seeds(cfg, config_file=args.config)
    return 0


def _search(args) -> int:
    from hfstage.stage_search.runner import search

    executor = {**({"type": args.executor} if args.executor else {}), **({"address": args.address} if args.address else {})}
    result = search(args.config, args.stage, args.overrides, space=args.space, trials=args.trials, metric=args.metric,
                    pruner=args.pruner, timeout=args.timeout, out=args.out, from_run=args.from_run,
                    through=args.through, storage=args.storage, trials_per_stage=args.trials_per_stage,
                    executor=executor or None)
    return 0 if result.best is not None else 1


def _plan(args) -> int:
    from hfstage.config import load_config, read_yaml
    from hfstage.ensemble import is_stack_job, load_stack_job, plan_stack_job
    from hfstage.errors import about_recipe
    from hfstage.plan import plan

    if is_stack_job(read_yaml(args.config)):
        print(plan_stack_job(load_stack_job(args.config, args.overrides)))
        return 0
    cfg = load_config(args.config, args.overrides)
    with about_recipe(args.config):
        print(plan(cfg))
    return 0


def _prepare(args) -> int:
    from hfstage.data.prepare import PREPARERS

    preparer = PREPARERS.get(args.name, "prepare")
    flags = {"mnist-pairs": ("train_pairs", "val_pairs", "test_pairs"),
             "digits-pairs": ("train_pairs", "val_pairs", "test_pairs"),
             "mnist-images": ("train_images", "val_images", "test_images", "shift"),
             "espeak-l2": ("words", "word_source", "split_by", "wrong_fraction", "errors", "errors_per_clip", "voices"),
             "aeon": ("dataset",)}
    sizes = {k: getattr(args, k) for names in flags.values() for k in names if getattr(args, k) is not None}
    wrong = [k for k in sizes if k not in flags.get(args.name, ())]
    if wrong:
        from hfstage.errors import ConfigError

        owners = " and ".join(n for n, names in flags.items() if wrong[0] in names)
        raise ConfigError(f"prepare {args.name}: --{wrong[0].replace('_', '-')} applies to {owners} only")
    summary = preparer(args.out, seed=args.seed, **sizes)
    for split, info in summary["splits"].items():
        where = Path(args.out) / {"mnist-images": split, "espeak-l2": f"metadata.jsonl ({split})"}.get(args.name, f"{split}.npz")
        print(f"{where}: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    return 0


def _evaluate(args) -> int:
    import json

    from hfstage.api import evaluate
    from hfstage.evaluation import format_result

    result = evaluate(args.checkpoint, args.data, args.split, args.save_predictions, args.batch_size, args.out)
    from hfstage.devices import distributed_state

    if distributed_state().is_main_process:
        print(json.dumps(result, indent=2) if args.json else format_result(result))
    return 0


def _export(args) -> int:
    from hfstage.export import export_stage

    result = export_stage(args.stage, args.format, args.out, args.opset, args.data)
    print(f"{result['path']}: {args.format}, dynamic {', '.join(sorted({a for v in result['inputs'].values() for a in v}))}; "
          f"max abs difference vs PyTorch {result['max_abs_difference']:.3g} on a batch of {result['checked_batch_size']}")
    return 0


def _inspect_shift(args) -> int:
    import json

    from hfstage.checkpoint import atomic_write_json
    from hfstage.data.shift import inspect_shift, plot_shift, shift_table
    from hfstage.errors import ConfigError

    data = Path(args.data)
    if not data.is_dir():
        raise ConfigError(f"inspect-shift --data: {data} is not a folder")
    if args.max_images < 2:
        raise ConfigError(f"inspect-shift --max-images: {args.max_images} must be at least 2")
    target = args.target or next((t for t in ("test_images", "test") if (data / t).is_dir()), None)
    if target is None:
        raise ConfigError(f"inspect-shift --target: give the folder of target images ({data} has no test_images/ or test/)")
    target = Path(target) if Path(target).is_absolute() or not (data / target).exists() else data / target
    report, source_stats, target_stats = inspect_shift(data / args.train_split, target, args.max_images)
    out = Path(args.out)
    picture = out.with_suffix(".png")
    report["picture"] = str(picture)
    atomic_write_json(out, report)
    plot_shift(report, source_stats, target_stats, picture)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{report['source']} ({report['source_images']} images) -> {report['target']} "
              f"({report['target_images']} images); most shifted first\n")
        print(shift_table(report))
        print(f"\nwrote {out} and {picture}")
    return 0


def _auto(args) -> int:
    from hfstage.automl.leaderboard import format_leaderboard
    from hfstage.automl.runner import auto

    executor = {**({"type": args.executor} if args.executor else {}), **({"address": args.address} if args.address else {})}
    result = auto(args.data, args.budget, args.task, args.out, args.metric, executor or None, args.preset,
                  args.overrides)
    print(format_leaderboard(result.leaderboard, result.metric))
    print(f"answer: {result.final['name']} ({result.final['why']}); {result.out / 'leaderboard.csv'}, "
          f"{result.out / 'auto.json'}")
    return 0


def _stack(args) -> int:
    from hfstage.stacking import format_stack, stack

    result = stack(args.models, args.out, args.data, args.meta, args.folds, args.agreement, args.passthrough,
                   args.train_split, args.test_split, args.seed)
    print(format_stack(result))
    return 0


def _predict(args) -> int:
    from hfstage.api import predict_answer
    from hfstage.checkpoint import atomic_write_text
    from hfstage.errors import ConfigError

    if len(args.runs) == 1 and not args.images and not args.stack and args.data:  # an auto (or stack) folder
        args.stack, args.runs = args.runs[0], []
    if args.images or args.runs:
        if args.stack or not args.images or not args.runs or not args.out:
            raise ConfigError("predict: give RUN [RUN ...] --images DIR --out FILE.csv (or --stack DIR --data DIR)")
        from hfstage.predict import predict_images

        result = predict_images(args.runs, args.images, args.out, args.tta, args.proba, args.batch_size)
        scored = f", accuracy {result['accuracy']:.4f}" if "accuracy" in result else ""
        print(f"{result['samples']} images, {len(result['models'])} model(s) x {len(result['tta'])} TTA view(s)"
              f"{scored}; wrote {args.out} and final_results.json")
        return 0
    if not args.stack or not args.data:
        raise ConfigError("predict: give --stack DIR --data DIR (or RUN [RUN ...] --images DIR --out FILE.csv)")
    summary, table = predict_answer(args.stack, args.data, args.split)
    if args.out:
        atomic_write_text(args.out, table)
    scores = ", ".join(f"{k} {v:.4f}" for k, v in summary.items() if k in ("accuracy", "error_f1", "per"))
    print(f"{summary['data_file']}: {summary['samples']} samples" + (f", {scores}" if scores else "")
          + (f"; predictions in {args.out}" if args.out else ""))
    return 0


def _continue(args) -> int:
    from hfstage import experiments
    from hfstage.curriculum import run
    from hfstage.errors import ConfigError

    if args.list:
        print(experiments.continuable_table(args.list))
        return 0
    if not args.run or not args.preset:
        raise ConfigError("continue: give a RUN folder and --preset (or --list to see what can be continued)")
    if args.run.startswith("hf://"):
        from hfstage.hub import pull

        if not args.out:
            raise ConfigError(f"continue {args.run}: give --out DIR, the empty folder to pull the run into and continue in")
        args.run = str(pull(args.run, args.out))
    elif args.out:
        raise ConfigError("continue: --out is for hf:// runs; a local run is continued in its own folder")
    cfg = experiments.continuation_config(args.run, args.preset, args.from_stage, args.overrides, args.data)
    run(cfg, config_file=experiments.load_run(args.run)[0].config_file)
    return 0


def _doctor(args) -> int:
    from hfstage.doctor import report

    text, code = report(args.require_gpu, args.require_hub)
    print(text)
    return code


def _push(args) -> int:
    from hfstage.api import push

    result = push(args.run, args.repo_id, args.stage, args.private, args.revision, args.create_pr, args.commit_message)
    print(f"{args.run} -> {result['repo_id']} @ {result['commit'][:12]}: {len(result['uploaded'])} file(s) uploaded, "
          f"{result['unchanged']} unchanged; stages {', '.join(result['stages'])}"
          + (f"; tags {', '.join(result['tags'])}" if result["tags"] else "")
          + (f"; pull request {result['pr_url']}" if result["pr_url"] else ""))
    return 0


def _pull(args) -> int:
    from hfstage.hub import pull

    out = pull(args.name, args.out, args.stage, args.revision)
    print(f"{args.name} -> {out}")
    return 0


def _runs(args) -> int:
    from hfstage import experiments

    if args.runs_command == "list":
        print(experiments.list_runs_table(args.folder))
    elif args.runs_command == "show":
        print(experiments.show_run(args.run))
    elif args.runs_command == "compare":
        print(experiments.compare_runs(args.runs, args.metric, args.format))
        if not args.no_config and args.format != "csv":  # csv: one table, for tools
            print("\n" + experiments.config_differences(args.runs, args.format))
    elif args.runs_command == "cleanup":
        doomed = experiments.cleanup(args.folder, args.days_old, args.keep_best, args.pattern, args.dry_run)
        verb = "would delete" if args.dry_run else "deleted"
        for path, reason in doomed:
            print(f"{verb} {path} ({reason})")
        print(f"{len(doomed)} run(s) {verb}")
    else:
        out = experiments.archive(args.runs, args.out)
        print(f"archived {len(args.runs)} run(s) into {out}")
    return 0


def _config(args) -> int:
    from hfstage import reference

    if args.update_readme:
        reference.update_page(Path(args.update_readme))
    else:
        print(reference.reference_markdown())
    return 0


COMMANDS = {"train": _train, "search": _search, "auto": _auto, "plan": _plan, "prepare": _prepare, "evaluate": _evaluate, "export": _export, "stack": _stack,
            "predict": _predict, "continue": _continue, "push": _push, "pull": _pull, "doctor": _doctor, "runs": _runs,
            "config": _config, "inspect-shift": _inspect_shift}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # key=value overrides may stand anywhere after the command (argparse only takes one run of positionals)
    args, extra = parser.parse_known_args(argv)
    stray = [e for e in extra if e.startswith("-") or "=" not in e]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    from hfstage.errors import Interrupted
    from hfstage.log import set_verbose, setup_console

    setup_console()
    if getattr(args, "verbose", False):
        set_verbose(True)
    try:
        return COMMANDS[args.command](args)
    except HfstageError as exc:
        print(f"hfstage: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Interrupted as exc:
        print(f"hfstage: stopped by {exc.signal_name}; rerun the same command to resume", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
