"""Model cards: every finished stage has a README.md a Hub reader understands."""

from __future__ import annotations

import json

from huggingface_hub import ModelCard

from hfstage.config import load_config
from hfstage.curriculum import run


def test_every_stage_has_a_card_with_its_metrics(finished_run):
    for stage_dir in sorted(finished_run.glob("stage_*")):
        record = json.loads((stage_dir / "stage.json").read_text())
        card = ModelCard.load(stage_dir / "README.md")
        data = card.data.to_dict()
        assert data["library_name"] == "hfstage" and "license" not in data and "pipeline_tag" not in data
        assert "hfstage" in data["tags"] and "pair_classification" in data["tags"]
        metrics = {m["name"]: m["value"] for r in data["model-index"][0]["results"] for m in r["metrics"]}
        assert metrics["validation accuracy"] == round(record["metrics"]["eval_accuracy"], 6)
        assert metrics["test accuracy"] == round(record["test_metrics"]["test_accuracy"], 6)
        assert data["model-index"][0]["name"] == stage_dir.name
        assert f"`{stage_dir.name}`" in card.text and "## This stage's config" in card.text
        assert 'pipeline("pair-classification", model="path/to/' + stage_dir.name in card.text
        assert "import hfstage" in card.text and "accelerate launch" not in card.text
    second = ModelCard.load(finished_run / "stage_2_finetune" / "README.md").text
    assert "`stage_1_baseline`" in second and "started from `stage_1_baseline`" in " ".join(second.split())


def test_license_and_hub_dataset_reach_the_card(recipe, tmp_path):
    cfg = load_config(recipe([{"name": "only", "epochs": 1}], license="apache-2.0"))
    run(cfg)
    card = ModelCard.load(tmp_path / "run" / "stage_1_only" / "README.md")
    assert card.data.license == "apache-2.0" and card.data.datasets is None  # local data: no Hub data set named
    from hfstage.cards import base_model, hub_dataset

    assert hub_dataset({"path": "hf://datasets/someone/pairs@v1"}) == "someone/pairs"
    stage = tmp_path / "pretrained"
    stage.mkdir()
    (stage / "config.json").write_text(json.dumps({"hfstage_timm": {"hf_hub_id": "timm/resnet18.a1_in1k/"}}))
    assert base_model({"model": {"type": "timm", "pretrained": True}}, stage) == "timm/resnet18.a1_in1k"
    assert base_model({"model": {"type": "timm", "pretrained": False}}, stage) is None
