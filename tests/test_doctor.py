"""``hfstage doctor`` reports the machine and fails when something needed is missing."""

from __future__ import annotations

import pytest
import torch

from hfstage import cli, doctor


def test_doctor_reports_and_exit_codes(capsys, monkeypatch):
    assert cli.main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "package timm" in out and "free disk" in out and "Hugging Face Hub" in out and out.rstrip().endswith("ready")
    if not torch.cuda.is_available():
        assert cli.main(["doctor", "--require-gpu"]) == 1
        assert "problem(s): GPUs" in capsys.readouterr().out
    monkeypatch.setattr(doctor, "REQUIRED", (*doctor.REQUIRED, "hfstage_no_such_package"))
    assert cli.main(["doctor"]) == 1
    assert "package hfstage_no_such_package  MISSING" in capsys.readouterr().out


@pytest.mark.parametrize("answers", [True, False])
def test_doctor_hub_check_follows_the_endpoint(hub_server, answers, monkeypatch, capsys):
    if not answers:
        monkeypatch.setattr(doctor, "_hub_answers", lambda timeout=3.0: (False, "http://127.0.0.1:1 does not answer"))
    assert cli.main(["doctor", "--require-hub"]) == (0 if answers else 1)
