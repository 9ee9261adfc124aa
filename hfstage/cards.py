"""Model cards: ``README.md`` in every stage folder (written when the stage finishes) and at a pushed run's root.

The YAML metadata is what a Hub reader understands: ``library_name``, ``pipeline_tag`` where a Hub task fits the
task kind, ``license`` (the recipe's ``license``), ``tags``, ``datasets`` when the data came from a Hub data set,
``base_model`` when the weights started from timm's published weights, and a ``model-index`` with
the stage's eval and test metrics. The text holds the curriculum up to the stage, the stage's config, where its
weights came from, and how to use it after ``pip install hfstage`` (never from a source checkout).
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from hfstage.reporting import format_number
from hfstage.run_dir import CURVES_PNG, RunRecord, StageRecord, headline_metrics

def task_card_metrics(task: str) -> tuple[str, ...] | None:
    """The task kind's headline metrics (``Task.headline_metrics``), or None for a kind hfstage does not know."""
    from hfstage.tasks import TASKS

    return TASKS.get(task).headline_metrics if task in TASKS else None


def task_card(task: str):
    """The task kind's card facts (``Task.card``): pipeline tag, model-index type, title, pipeline and its example;
    None for a kind hfstage does not know (a card of a run from a plug-in that is not installed)."""
    from hfstage.tasks import TASKS

    return TASKS.get(task).card if task in TASKS else None


CARD_METRICS = ("accuracy", "f1", "precision", "recall", "loss", "per", "prompt_echo_per", "audio_only_per",
                "prompt_aware_per", "diagnosed_per", "error_f1", "diagnosis_accuracy", "false_acceptance_rate",
                "false_rejection_rate")


def hub_dataset(data: dict | None) -> str | None:
    """OWNER/NAME when the data came from a Hub data set (``hf://datasets/OWNER/NAME[@REV]``)."""
    path = str((data or {}).get("path") or "")
    if path.startswith("hf://datasets/"):
        return path[len("hf://datasets/"):].split("@")[0]
    return None


def base_model(config: dict, stage_dir: Path | None = None) -> str | None:
    """The Hub model the first weights came from: timm's published weights (``model.pretrained: true``)."""
    if not config.get("model", {}).get("pretrained") or stage_dir is None or not (stage_dir / "config.json").is_file():
        return None
    saved = json.loads((stage_dir / "config.json").read_text(encoding="utf-8"))
    hub_id = (saved.get("hfstage_timm") or saved).get("hf_hub_id")
    return hub_id.rstrip("/") if hub_id else None


def _results(records: list[StageRecord], task: str, data_name: str, named: bool):
    from huggingface_hub import EvalResult

    facts = task_card(task)
    task_type, task_name = (facts.index_type, facts.title) if facts else (task, task)
    results = []
    for record in records:
        for split, prefix, metrics in (("validation", "eval_", record.metrics), ("test", "test_", record.test_metrics)):
            for key, value in metrics.items():
                name = key[len(prefix):]
                if name in CARD_METRICS and isinstance(value, (int, float)):
                    label = f"{record.dir} {split} {name}" if named else f"{split} {name}"
                    results.append(EvalResult(task_type=task_type, task_name=task_name, dataset_type=data_name,
                                              dataset_name=data_name, dataset_split=split, metric_type=name,
                                              metric_value=round(float(value), 6), metric_name=label))
    return results


def _table(records: list[StageRecord], best: int | None) -> str:
    known = task_card_metrics(records[0].task) if records else None
    columns = ("eval_loss", *headline_metrics(records, known))
    rows = ["| stage | kept | " + " | ".join(c.replace("_", " ") for c in columns) + " | started from |",
            "|---|---|" + "---|" * len(columns) + "---|"]
    for r in records:
        mark = " (best)" if r.stage_index == best else ""
        rows.append(f"| `{r.dir}`{mark} | {'yes' if r.kept else 'no'} | "
                    + " | ".join(format_number(r.metric(c)) for c in columns) + f" | {r.started_from or 'random init'} |")
    return "\n".join(rows)


def _usage(task: str, model_ref: str, native: bool) -> str:
    """How to use the model after ``pip install hfstage`` (or with transformers alone, for native image stages)."""
    facts = task_card(task)
    pipe, example = (facts.pipeline, facts.example) if facts else (None, "")
    lines = ["```python"]
    if not native:
        lines.append("import hfstage  # pip install hfstage: registers its models and pipelines")
    lines += ["from transformers import pipeline", "", f'classify = pipeline("{pipe}", model="{model_ref}")', example, "```"]
    return "\n".join(lines)


def _metadata(task: str, license_: str | None, records, data: dict | None, config: dict, stage_dir: Path | None,
              model_name: str, named: bool, native: bool):
    from huggingface_hub import ModelCardData

    facts = task_card(task)
    pipeline_tag = facts.pipeline_tag if facts else None
    dataset = hub_dataset(data)
    data_name = dataset or Path(str((data or {}).get("path") or "data")).name or "data"
    return ModelCardData(
        library_name="transformers" if native else "hfstage", pipeline_tag=pipeline_tag, license=license_,
        tags=["hfstage", "staged-training", task, str(config.get("model", {}).get("type"))],
        datasets=[dataset] if dataset else None, base_model=base_model(config, stage_dir), model_name=model_name,
        eval_results=_results(records, task, data_name, named) or None,
    )


def stage_card(stage_dir: Path, record: StageRecord, earlier: list[StageRecord], config: dict, run_path: Path,
               native: bool = False) -> str:
    """README.md of a finished stage (its files in ``stage_dir``, its run in ``run_path``): its metadata, the
    curriculum up to it, its config, lineage and usage."""
    from huggingface_hub import ModelCard

    task = config.get("task", record.task or "")
    records = [*earlier, record]
    data = _metadata(task, config.get("license"), [record], record.data, config, stage_dir, record.dir, False, native)
    stage_yaml = yaml.safe_dump(record.stage_config, sort_keys=False, default_flow_style=None).strip()
    base = base_model(config, stage_dir)
    origin = f"`{record.started_from}`" if record.started_from else f"`{base}`" if base else "random initialisation"
    curves = f"\n![training curves](../{CURVES_PNG})\n" if (run_path / CURVES_PNG).is_file() else ""
    body = f"""
# {record.dir}

Stage {record.stage_index} (`{record.stage_name}`) of an hfstage curriculum: task `{task}`, model
`{config.get('model', {}).get('type')}`{f", {record.stage_description}" if record.stage_description else ""}.
It started from {origin} and was {"kept" if record.kept else "not kept (it did not improve the tracked metric enough)"}.

## The curriculum up to this stage

{_table(records, None)}
{curves}
## This stage's config

```yaml
{stage_yaml}
```

## Use

{_usage(task, f"path/to/{record.dir}", native)}
"""
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n{body}"))


def run_card(run: RunRecord, records: list[StageRecord], repo_id: str, run_path: Path, native: bool = False) -> str:
    """README.md at a pushed run's root (the best stage): every stage in the model-index, the stages table, usage."""
    from huggingface_hub import ModelCard

    cfg = run.config
    task = cfg["task"]
    best_dir = run.best_stage_dir
    data = _metadata(task, cfg.get("license"), records, cfg.get("data"), cfg,
                     run_path / best_dir if best_dir else None, repo_id, True, native)
    curves = ("\nTrain and eval loss over the whole curriculum, stages shaded (hatched: not kept):\n\n"
              f"![training curves]({CURVES_PNG})\n") if (run_path / CURVES_PNG).is_file() else ""
    config_file = run.config_file or "config.yaml"
    body = f"""
# {repo_id}

A model trained with hfstage through a curriculum of {len(cfg.get('stages', []))} stages (task `{task}`, model
`{cfg['model'].get('type')}`). The repository root holds the best stage{f" (`{best_dir}`)" if best_dir else ""};
every pushed stage is in its own folder, with its own card, and tagged `stage-<N>-<name>`.

## Stages

{_table(records, run.best_stage)}
{curves}
## Use

{_usage(task, repo_id, native)}

A stage: `hfstage evaluate hf://{repo_id}/{best_dir or 'stage_<N>_<name>'} --data DIR`, or
`hfstage pull {repo_id} --out DIR` for the whole run.

## Reproduce

`config.yaml` here is the resolved config (`{config_file}` when it was trained):

```bash
pip install hfstage
hfstage train --config config.yaml
```
"""
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n{body}"))


def auto_card(state: dict, rows: list[dict], metric: str, folder: Path) -> str:
    """README.md of an ``hfstage auto`` folder: the task, the data, the budget spent, the answer and why, the
    leaderboard, and how to use the answer."""
    from huggingface_hub import ModelCard, ModelCardData

    task, final = state["task"], state.get("final") or {}
    dataset = hub_dataset({"path": state.get("data")})
    meta = ModelCardData(library_name="hfstage", license=None, tags=["hfstage", "automl", "stacking", task],
                         datasets=[dataset] if dataset else None, model_name=folder.name)
    header = ("| model | kind | recipe | eval_" + metric + " | test_" + metric
              + " | fit s | ms / sample | stack weight | answer |\n|---|---|---|---|---|---|---|---|---|")
    lines = [header]
    for r in rows:
        lines.append(f"| {r['model']} | {r['kind']} | {r['recipe']} | {format_number(r['eval_metric'])} | "
                     f"{format_number(r['test_metric'])} | {r['fit_seconds']:.0f} | "
                     f"{'-' if r['predict_ms_per_sample'] is None else format(r['predict_ms_per_sample'], '.3f')} | "
                     f"{'-' if r['stack_weight'] is None else format(r['stack_weight'], '.2f')} | "
                     f"{'*' if r['final'] else ''} |")
    started = sum(1 for d in state["decisions"] if d["action"] in ("train", "search"))
    body = f"""
# {folder.name}

Made by `hfstage auto` (task `{task}`, data `{state.get('data')}`, preset `{state.get('preset')}`): {started} units of
work started within a budget of {state['budget_s'] / 60:.1f} min ({state.get('spent_s', 0) / 60:.1f} min spent).

**Answer: {final.get('name')}**: {final.get('why')}.

## Leaderboard

{chr(10).join(lines)}

Every decision, with its estimate and its actual time, is in `auto.json`; the rows as CSV in `leaderboard.csv`.

## Use

```bash
pip install hfstage
hfstage evaluate {folder.name} --split test
hfstage predict {folder.name} --data NEW_DATA --out predictions.csv
```
"""
    return str(ModelCard(f"---\n{meta.to_yaml()}\n---\n{body}"))
