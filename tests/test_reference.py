"""The config reference (hfstage/reference.py): complete, current in docs/config.md, and read from the losses'
source exactly as importing them would say."""

import dataclasses
import sys
from pathlib import Path

from hfstage import reference
from hfstage.config import DataConfig, RunConfig, StageConfig
from hfstage.reference import END, START, reference_markdown

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_reference_lists_every_field_and_loss():
    from hfstage.losses import LOSSES

    text = reference_markdown()
    for cls in (RunConfig, DataConfig, StageConfig):
        for f in dataclasses.fields(cls):
            assert f"| `{f.name}` |" in text
    for name in LOSSES.names():
        assert f"| `{name}` |" in text


def test_docs_config_reference_is_current():
    page = (DOCS / "config.md").read_text()
    current = page.split(START, 1)[1].split(END, 1)[0].strip()
    assert current == reference_markdown().strip(), "run `make reference` to regenerate docs/config.md"


def test_losses_read_from_source_say_what_the_imported_classes_say():
    """The reference does not import torch, so it reads each loss's constructor from its source; that reading must
    agree with the imported class (arguments, defaults, label smoothing, summary), loss by loss."""
    from hfstage import losses

    facts = {f.name: f for f in reference.loss_facts()}
    assert sorted(facts) == losses.LOSSES.names()
    for name in losses.LOSSES.names():
        assert facts[name] == reference._imported(name), name
    teacher = losses.base.loss_arguments(losses.DistillationLoss, {}, "teacher", "teacher", ("hard_loss",))
    assert reference.teacher_arguments() == teacher


def test_a_plugin_loss_is_read_from_its_source(tmp_path, monkeypatch):
    """An entry point naming a class, one naming a module whose class registers itself, and one whose constructor is
    inherited (imported instead): all three in the table, with their arguments."""
    pkg = tmp_path / "lossplug"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "named.py").write_text(
        '"""Module doc."""\nfrom hfstage.losses.base import StageLoss\n\n\nclass Squared(StageLoss):\n'
        '    """Squared error on the logits."""\n\n    def __init__(self, scale: float = 2.0, *, power: int = 2):\n'
        '        super().__init__()\n')
    (pkg / "registering.py").write_text(
        '"""A hinge loss."""\nfrom hfstage.losses.base import LOSSES, StageLoss\n\n\n@LOSSES.register("hinge")\n'
        'class Hinge(StageLoss):\n    def __init__(self, margin=1.0, label_smoothing: float = 0.0):\n'
        '        super().__init__()\n')
    dist = tmp_path / "lossplug-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: lossplug\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[hfstage.losses]\nsquared = lossplug.named:Squared\n"
                                           "hinge = lossplug.registering\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    facts = {f.name: f for f in reference.loss_facts()}
    assert facts["squared"] == reference.LossFacts("squared", {"scale": 2.0, "power": 2},
                                                   "Squared error on the logits.", False)
    assert facts["hinge"] == reference.LossFacts("hinge", {"margin": 1.0}, "A hinge loss.", True)
    assert "lossplug.named" not in sys.modules  # read, not imported
