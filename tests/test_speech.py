"""Speech: data with exact labels, the four heads, CTC decoding/PER, the multi-task loss, the recipe."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import torch.nn.functional as F
from conftest import ROOT
from transformers import AutoModel, Wav2Vec2Processor

from hfstage.cli import main
from hfstage.data.audio import (
    AudioCollator,
    AudioDataset,
    build_vocabulary,
    load_clips,
    make_processor,
)
from hfstage.errors import ConfigError, DataError
from hfstage.losses.speech import CTCMispronunciationLoss
from hfstage.metrics.speech import edit_distance, greedy_decode, speech_metrics
from hfstage.models import build_model
from hfstage.models.speech import HEADS, SpeechAssessmentModel

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (make install)")
TINY = {"type": "speech", "encoder": {"hidden_size": 32, "intermediate_size": 64, "conv_dim": [16, 16, 16, 16, 16]},
        "head_dim": 16}


@pytest.fixture(scope="session")
def l2_data(tmp_path_factory) -> Path:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (make install)")
    from hfstage.data.prepare import prepare_espeak_l2

    out = tmp_path_factory.mktemp("espeak_l2")
    prepare_espeak_l2(out, seed=0, words=6)
    return out


def test_best_threshold_and_average_precision_by_hand():
    from hfstage.metrics.speech import best_threshold

    probs = np.array([0.9, 0.8, 0.7, 0.4, 0.3, 0.1])
    truth = np.array([1, 0, 1, 1, 0, 0])
    t, f1 = best_threshold(probs, truth)  # flag the top 4: tp 3, fp 1 -> F1 6/7; the top 3 or 1 do worse
    assert f1 == pytest.approx(6 / 7) and t == pytest.approx(0.35)
    assert ((probs > t) == np.array([1, 1, 1, 1, 0, 0], bool)).all()
    ties = best_threshold(np.array([0.6, 0.6, 0.2]), np.array([1, 0, 0]))  # tied scores are flagged together
    assert ties == (pytest.approx(0.4), pytest.approx(2 / 3))
    assert best_threshold(np.array([0.2, 0.3]), np.array([0, 0])) == (0.5, 0.0)


def test_edit_distance_greedy_decoding_and_per_by_hand():
    assert edit_distance([1, 2, 3], [1, 2, 3]) == 0
    assert edit_distance([1, 3], [1, 2, 3]) == 1 and edit_distance([1, 2, 3, 4], [1, 2, 3]) == 1
    assert edit_distance([4, 2, 3], [1, 2, 3]) == 1 and edit_distance([], [1, 2]) == 2
    frames = np.eye(5)[[2, 2, 0, 2, 3, 3, 0, 0, 4, 1]]  # "2 2 _ 2 3 3 _ _ 4" + a padded frame
    assert greedy_decode(frames, 9) == [2, 2, 3, 4]
    assert greedy_decode(frames, 10) == [2, 2, 3, 4, 1]
    logits = np.stack([frames, frames])
    labels = np.array([[2, 2, 3, 4], [2, 3, -100, -100]])
    errors = np.array([[2.0, -1.0, -100.0], [-3.0, 1.0, 4.0]])
    error_labels = np.array([[1, 0, -100], [0, 0, 1]])
    m = speech_metrics(logits, np.array([9, 9]), labels, errors, error_labels)
    assert m["per"] == pytest.approx((0 + 2) / 6)  # second clip: 2 insertions over 2 reference phonemes
    assert m["error_accuracy"] == pytest.approx(4 / 5) and m["error_precision"] == pytest.approx(2 / 3)
    assert m["error_recall"] == pytest.approx(1.0) and m["error_f1"] == pytest.approx(0.8)


@pytest.mark.parametrize("head", HEADS)
def test_every_head_trains_and_reloads(head, tmp_path):
    torch.manual_seed(0)
    model = build_model({**TINY, "head": head}, vocab_size=9, pad_token_id=0)
    x = torch.randn(3, 8000)
    mask = torch.ones(3, 8000, dtype=torch.long)
    mask[1, 5000:] = 0
    canonical = torch.tensor([[3, 4, 5], [6, 7, 0], [8, 0, 0]])
    out = model(input_values=x, attention_mask=mask, canonical_ids=canonical, canonical_mask=canonical.ne(0).long())
    assert out.logits.shape[:2] == (3, out.output_lengths.max()) and out.logits.shape[2] == 9
    assert out.error_logits.shape == (3, 3) and out.output_lengths[1] < out.output_lengths[0]
    loss = CTCMispronunciationLoss()(out, torch.tensor([[3, 4, 5], [6, 7, -100], [8, -100, -100]]),
                                     torch.tensor([[0.0, 1, 0], [1, 0, -100], [0, -100, -100]]))
    loss.backward()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not [n for n in trainable if not n.startswith("encoder.masked_spec_embed")], trainable
    model.save_pretrained(tmp_path)
    again = AutoModel.from_pretrained(tmp_path).eval()
    model.eval()
    with torch.no_grad():
        a = model(input_values=x, attention_mask=mask, canonical_ids=canonical)
        b = again(input_values=x, attention_mask=mask, canonical_ids=canonical)
    assert isinstance(again, SpeechAssessmentModel) and torch.allclose(a.error_logits, b.error_logits, atol=1e-5)
    assert torch.allclose(a.logits, b.logits, atol=1e-5)


def test_hierarchical_pooling_splits_frames_evenly_over_the_phonemes():
    audio = torch.arange(12.0).reshape(1, 6, 2)
    pooled = SpeechAssessmentModel._segments(audio, torch.tensor([6]), torch.tensor([[1, 1, 1, 0]]))
    expected = torch.tensor([[[1.0, 2.0], [5.0, 6.0], [9.0, 10.0], [0.0, 0.0]]])  # frames (0,1), (2,3), (4,5)
    assert torch.allclose(pooled, expected)
    short = SpeechAssessmentModel._segments(audio, torch.tensor([4]), torch.tensor([[1, 1, 0, 0]]))
    assert torch.allclose(short[0, :2], torch.tensor([[1.0, 2.0], [5.0, 6.0]]))  # padded frames 4, 5 ignored


def test_multitask_loss_by_hand():
    torch.manual_seed(1)
    logits = torch.randn(2, 7, 5)
    lengths = torch.tensor([7, 5])
    labels = torch.tensor([[1, 2, 3], [4, -100, -100]])
    error_logits = torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.0, 0.0]])
    error_labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, -100, -100]])
    out = {"logits": logits, "output_lengths": lengths, "error_logits": error_logits}
    ctc = F.ctc_loss(F.log_softmax(logits, -1).transpose(0, 1), torch.tensor([[1, 2, 3], [4, 0, 0]]), lengths,
                     torch.tensor([3, 1]), blank=0)
    z, y = torch.tensor([0.5, -1.0, 2.0, 1.5]), torch.tensor([1.0, 0.0, 1.0, 0.0])
    sig = torch.sigmoid(z)
    weighted = -(3.0 * y * torch.log(sig) + (1 - y) * torch.log(1 - sig)).mean()
    loss = CTCMispronunciationLoss(ctc_weight=0.3, error_weight=2.0, pos_weight=3.0)(out, labels, error_labels)
    assert loss.item() == pytest.approx(0.3 * ctc.item() + 2.0 * weighted.item(), rel=1e-5)
    p_t = sig * y + (1 - sig) * (1 - y)
    focal = (0.5 * (1 - p_t) ** 2 * -torch.log(p_t)).mean()
    loss = CTCMispronunciationLoss(ctc_weight=0.0, error_loss="focal", focal_alpha=0.5)(out, labels, error_labels)
    assert loss.item() == pytest.approx(focal.item(), rel=1e-5)
    assert CTCMispronunciationLoss(ctc_weight=5, pos_weight=9).evaluation().pos_weight == 1.0


@needs_espeak
def test_espeak_l2_labels_are_exact(l2_data):
    rows = [json.loads(line) for line in (l2_data / "metadata.jsonl").read_text().splitlines()]
    assert {r["split"] for r in rows} == {"train", "val", "test"} and len(rows) == 6 * 8 * 2
    assert not {r["voice"] for r in rows if r["split"] == "test"} & {r["voice"] for r in rows if r["split"] == "train"}
    for r in rows:
        canonical, spoken = r["canonical"].split(), r["spoken"].split()
        assert len(r["labels"]) == len(canonical)
        if r["path"].endswith("_ok.wav"):
            assert spoken == canonical and sum(r["labels"]) == 0
        elif len(spoken) == len(canonical):  # substitutions exactly where the labels say
            assert [int(a != b) for a, b in zip(canonical, spoken)] == r["labels"] and sum(r["labels"]) >= 1
        else:  # the final phoneme was dropped
            assert spoken == canonical[:-1] and r["labels"] == [0] * (len(canonical) - 1) + [1]
        wave, rate = soundfile.read(l2_data / r["path"])
        assert rate == 16000 and len(wave) > 1600


def _write_clip(path: Path, seconds: float = 0.3, rate: int = 16000) -> None:
    t = np.arange(int(seconds * rate)) / rate
    soundfile.write(path, (0.3 * np.sin(2 * math.pi * 220 * t)).astype(np.float32), rate)


def test_bad_audio_and_metadata_rows(tmp_path):
    (tmp_path / "a").mkdir()
    _write_clip(tmp_path / "a" / "good.wav")
    _write_clip(tmp_path / "a" / "rate.wav", rate=22050)
    soundfile.write(tmp_path / "a" / "empty.wav", np.zeros(0, np.float32), 16000)
    (tmp_path / "a" / "broken.wav").write_bytes(b"RIFF....WAVEfmt nonsense")
    good = {"path": "a/good.wav", "split": "train", "canonical": "k a t", "spoken": "k a t", "labels": [0, 0, 0]}
    cases = [
        ({**good, "labels": [0, 1]}, "line 1: 2 labels for 3 canonical phonemes"),
        ({**good, "path": "a/none.wav"}, "line 1: .*none.wav: audio file not found"),
        ({**good, "path": "a/broken.wav"}, "line 1: .*broken.wav: not readable audio"),
        ({**good, "path": "a/empty.wav"}, "line 1: .*empty.wav: empty audio"),
        ({k: v for k, v in good.items() if k != "spoken"}, "line 1: missing 'spoken' for spoken \\(the default; map it with data.columns.spoken\\); the row has: path, split, canonical, labels"),
        ({**good, "labels": [0, 2, 0]}, "line 1: field 'labels' \\(column 'labels'\\) must be 0/1 per phoneme, got \\[0, 2, 0\\]"),
    ]
    for row, message in cases:
        (tmp_path / "metadata.jsonl").write_text(json.dumps(row) + "\n")
        with pytest.raises(DataError, match=f"metadata.jsonl: {message}"):
            load_clips(tmp_path, "train", "data.train_file")
    (tmp_path / "metadata.jsonl").write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(DataError, match="metadata.jsonl: line 2: not JSON"):
        load_clips(tmp_path, "train", "data.train_file")
    (tmp_path / "metadata.jsonl").write_text(json.dumps(good) + "\n" + json.dumps({**good, "path": "a/rate.wav"}) + "\n")
    with pytest.raises(DataError, match="no clips with split 'val' \\(data.eval_file; values there: train\\)"):
        load_clips(tmp_path, "val", "data.eval_file")
    clips = load_clips(tmp_path, "train", "data.train_file")
    vocab = build_vocabulary(clips)
    data = AudioDataset(clips, vocab)
    assert len(data[1]["wave"]) == pytest.approx(0.3 * 16000, abs=2)  # 22.05 kHz resampled to 16 kHz
    processor = make_processor(vocab, tmp_path / "proc")
    batch = AudioCollator(processor.feature_extractor)([data[0], data[1]])
    assert batch["input_values"].shape == (2, 4800) and batch["labels"].tolist() == [[vocab["k"], vocab["a"], vocab["t"]]] * 2
    assert batch["error_labels"].tolist() == [[0.0, 0.0, 0.0]] * 2


@needs_espeak
@pytest.mark.slow
def test_speech_recipe_quick_test_saves_processor_with_every_stage(l2_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--config", str(ROOT / "configs/speech_wav2vec2.yaml"), "quick_test=true",
                 f"data.path={l2_data}", f"output_dir={out}", "report_to=[none]", "model.head=cross",
                 "model.encoder.hidden_size=32", "model.encoder.intermediate_size=64",
                 "defaults.loss.pos_weight=auto"]) == 0
    run = json.loads((out / "run.json").read_text())
    assert [s["status"] for s in run["stages"]] == ["finished"] * 3
    for stage in run["stages"]:
        record = json.loads((out / stage["dir"] / "stage.json").read_text())
        assert {"eval_per", "eval_error_f1", "eval_error_weighted_f1"} <= set(record["metrics"])
        assert {"test_per", "test_error_f1"} <= set(record["test_metrics"])
        processor = Wav2Vec2Processor.from_pretrained(out / stage["dir"])
        model = AutoModel.from_pretrained(out / stage["dir"])
        assert model.config.vocab_size == len(processor.tokenizer.get_vocab()) and model.config.head == "cross"
    heads = json.loads((out / "stage_1_heads" / "stage.json").read_text())
    assert heads["frozen_parameters"] == sum(p.numel() for n, p in model.named_parameters() if n.startswith("encoder."))
    capsys.readouterr()
    assert main(["evaluate", str(out), "--split", "val", "--save-predictions"]) == 0
    printed = capsys.readouterr().out
    assert "per" in printed and "error_f1" in printed and "examples" in printed
    best = run["best_stage_dir"]
    result = json.loads((out / best / "eval" / "val.json").read_text())
    record = json.loads((out / best / "stage.json").read_text())
    # the recorded eval metrics of the run are reproduced from the saved stage
    assert result["metrics"]["per"] == pytest.approx(record["metrics"]["eval_per"], rel=1e-6)
    # evaluate flags at the threshold the stage chose on this (eval) split: the best F1 found there
    assert result["metrics"]["error_f1"] == pytest.approx(record["metrics"]["eval_error_best_f1"], rel=1e-6)
    assert result["metrics"]["loss"] == pytest.approx(record["metrics"]["eval_loss"], rel=1e-3)
    # pos_weight: auto resolved from the training split; the error threshold chosen on the eval split, saved
    # with the model and used by evaluate (and below, by the pipeline)
    assert record["stage_config"]["loss"]["pos_weight"] == "auto" and record["resolved"]["loss.pos_weight"] > 1
    threshold = record["resolved"]["error_threshold"]
    assert threshold == record["metrics"]["eval_error_best_threshold"] and 0 < threshold < 1
    assert json.loads((out / best / "config.json").read_text())["error_threshold"] == threshold
    assert result["metrics"]["error_threshold"] == threshold and 0 <= result["metrics"]["error_ap"] <= 1
    assert record["test_metrics"]["test_error_threshold"] == threshold and "test_error_ap" in record["test_metrics"]
    rows = (out / best / "eval" / "val_predictions.csv").read_text().splitlines()
    assert rows[0] == "id,canonical,spoken,predicted,labels,predicted_labels,diagnosis,insertions"
    assert len(rows) == 1 + 6 * 2
    # what is reported as heard was chosen on the eval split, saved with the model, and is never worse there than
    # echoing the canonical phonemes; every candidate's PER is reported
    config = json.loads((out / best / "config.json").read_text())
    assert config["recognizer"] in ("prompt_aware", "audio", "diagnosed") and config["edit_penalty"] >= 0
    metrics = record["metrics"]
    assert metrics["eval_per"] <= metrics["eval_prompt_echo_per"] + 1e-12
    assert metrics["eval_per"] == min(metrics["eval_prompt_aware_per"], metrics["eval_audio_only_per"],
                                      metrics["eval_diagnosed_per"])
    assert {"test_per", "test_prompt_echo_per", "test_prompt_aware_per", "test_audio_only_per", "test_diagnosed_per",
            "test_diagnosis_accuracy",
            "test_false_acceptance_rate", "test_false_rejection_rate"} <= set(record["test_metrics"])
    assert result["metrics"]["prompt_echo_per"] == pytest.approx(metrics["eval_prompt_echo_per"])
    # the pronunciation-assessment pipeline: one recording (a file, or a waveform at another rate) as evaluate saw it
    import csv

    import soundfile
    from transformers import pipeline

    import hfstage  # noqa: F401  (registers the pipeline)

    assess = pipeline("pronunciation-assessment", model=str(out / best))
    clips = {Path(r["path"]).stem: r for r in map(json.loads, (l2_data / "metadata.jsonl").read_text().splitlines())}
    predicted = list(csv.DictReader((out / best / "eval" / "val_predictions.csv").open()))
    results = assess([{"audio": str(l2_data / clips[r["id"]]["path"]), "canonical": r["canonical"]} for r in predicted])
    names = {"substitution": "sub", "deletion": "del"}
    for row, result in zip(predicted, results):
        assert " ".join(result["recognized"]) == row["predicted"]
        assert [p["phoneme"] for p in result["phonemes"]] == row["canonical"].split()
        assert " ".join(str(int(p["mispronounced"])) for p in result["phonemes"]) == row["predicted_labels"]
        assert all(0 <= p["score"] <= 1 for p in result["phonemes"] if p.get("assessed", True))
        # each flagged phoneme says what was heard instead, as evaluate's diagnosis column does
        for p, diagnosed in zip(result["phonemes"], row["diagnosis"].split()):
            assert (diagnosed == "unassessed") == (p.get("assessed") is False)
            assert ("diagnosis" in p) == p["mispronounced"]
            assert (diagnosed not in ("ok", "unassessed")) == p["mispronounced"]
            if p["mispronounced"]:
                said = names[p["diagnosis"]] + (f":{p['heard']}" if p["diagnosis"] == "substitution" else "")
                assert said == diagnosed
        assert " ".join(f"{i['after']}:{i['phoneme']}" for i in result["insertions"]) == row["insertions"]
    wave, rate = soundfile.read(l2_data / clips[predicted[0]["id"]]["path"], dtype="float32")
    as_array = assess({"audio": {"array": wave, "sampling_rate": rate}, "canonical": predicted[0]["canonical"].split()})
    assert as_array == results[0]
    # a phoneme the model never heard in training is not judged: no score, never flagged, said so
    odd = assess({"audio": {"array": wave, "sampling_rate": rate},
                  "canonical": ["zz#", *predicted[0]["canonical"].split()]})
    assert odd["phonemes"][0] == {"phoneme": "zz#", "mispronounced": False, "score": None, "assessed": False}
    assert "<unk>" not in odd["recognized"]
    # evaluate too: the test accent's dental t[ is never said in training, so it is not judged
    assert main(["evaluate", str(out / best), "--split", "test", "--save-predictions"]) == 0
    tested = list(csv.DictReader((out / best / "eval" / "test_predictions.csv").open()))
    unheard = [(r, r["canonical"].split().index("t[")) for r in tested if "t[" in r["canonical"].split()]
    assert unheard and all(r["diagnosis"].split()[i] == "unassessed" and r["predicted_labels"].split()[i] == "0"
                           for r, i in unheard)
    # and "you said" names it (the prompt's own phoneme where the recogniser kept it), never <unk>
    assert not any("<unk>" in r["predicted"].split() for r in tested)
    from hfstage.export import export_stage  # wav2vec2 encoder + heads, dynamic samples and phonemes

    exported = export_stage(out / best, "onnx", tmp_path / "onnx")
    assert exported["max_abs_difference"] <= 1e-4 and exported["outputs"] == ["logits", "error_logits", "output_lengths"]
    # distillation wraps the speech loss: one more stage, taught by the run's best stage
    assert main(["continue", str(out), "--preset", "fine_tune", f"teacher={out}", "epochs=1"]) == 0
    distilled = json.loads((out / "stage_4_fine_tune" / "stage.json").read_text())
    assert distilled["stage_config"]["teacher"] == {"checkpoint": str(out), "temperature": 4.0, "alpha": 0.5}
    assert distilled["stage_config"]["loss"]["type"] == "ctc_mispronunciation" and distilled["global_steps"] > 0
    assert math.isfinite(distilled["metrics"]["eval_loss"]) and "eval_per" in distilled["metrics"]


def test_encoder_and_head_learning_rates():
    from hfstage.config import StageConfig
    from hfstage.surgery import with_encoder_lr
    from hfstage.errors import ConfigError

    model = build_model(TINY, vocab_size=5)
    stage = with_encoder_lr(StageConfig(name="s", lr=1e-3, encoder_lr=2e-4, head_lr=5e-3,
                                        lr_multipliers={"ctc_head.*": 0.5}), model, "stages.1")
    assert stage.lr == 5e-3 and list(stage.lr_multipliers) == ["encoder.*", "ctc_head.*"]
    assert stage.lr_multipliers["encoder.*"] == pytest.approx(0.04)
    assert with_encoder_lr(StageConfig(name="s", lr=1e-3, encoder_lr=1e-4), model, "x").lr_multipliers == {
        "encoder.*": pytest.approx(0.1)}
    sequence = build_model({"type": "sequence"}, input_dim=3, num_labels=2)
    with pytest.raises(ConfigError, match="stages.1.encoder_lr: model 'SequenceClassifier' has no single encoder"):
        with_encoder_lr(StageConfig(name="s", encoder_lr=1e-4), sequence, "stages.1")


def test_group_by_length_batches_similar_clips(tmp_path):
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from hfstage.trainer import StageTrainer, StageTrainingArguments

    rng = np.random.default_rng(0)
    seconds = rng.uniform(0.1, 1.5, 32).round(2)
    rows = []
    (tmp_path / "a").mkdir()
    for i, sec in enumerate(seconds):
        _write_clip(tmp_path / "a" / f"{i}.wav", float(sec))
        rows.append({"path": f"a/{i}.wav", "split": "train", "canonical": "k", "spoken": "k", "labels": [0]})
    (tmp_path / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    clips = load_clips(tmp_path, "train", "data.train_file")
    data = AudioDataset(clips, build_vocabulary(clips))
    assert data.lengths == [round(s * 16000) for s in seconds]

    def padding(strategy: str) -> int:
        args = StageTrainingArguments(output_dir=str(tmp_path / "o"), per_device_train_batch_size=2, use_cpu=True,
                                      train_sampling_strategy=strategy, report_to="none")
        trainer = StageTrainer(model=build_model(TINY, vocab_size=3), args=args, train_dataset=data,
                               data_collator=lambda x: x)
        sampler = trainer._get_train_sampler()
        if strategy == "group_by_length":
            assert isinstance(sampler, LengthGroupedSampler) and sampler.lengths == data.lengths
        torch.manual_seed(0)
        order = list(sampler)
        return sum(abs(data.lengths[a] - data.lengths[b]) for a, b in zip(order[::2], order[1::2]))

    assert padding("group_by_length") < 0.5 * padding("random")  # far less padding in each batch


def test_speech_from_a_saved_dataset_with_list_columns_trains_like_the_metadata(l2_data, tmp_path):
    """The same clips as a DatasetDict (an Audio column of WAV bytes, phonemes as lists, the common column names
    canonical_phonemes / spoken_phonemes / error_labels, mapped with data.columns) train to exactly the metrics of
    the metadata.jsonl layout."""
    import datasets

    rows = [json.loads(line) for line in (l2_data / "metadata.jsonl").read_text().splitlines() if line.strip()]
    splits = {}
    for split in ("train", "val", "test"):
        chosen = [r for r in rows if r["split"] == split]
        splits[split] = datasets.Dataset.from_dict(
            {"clip": [{"bytes": (l2_data / r["path"]).read_bytes(), "path": Path(r["path"]).name} for r in chosen],
             "canonical_phonemes": [r["canonical"].split() for r in chosen],
             "spoken_phonemes": [r["spoken"].split() for r in chosen], "error_labels": [r["labels"] for r in chosen]}
        ).cast_column("clip", datasets.Audio())  # WAV bytes as an Audio feature (encoding would need torchcodec)
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "saved"))
    columns = "data.columns={audio: clip, canonical: canonical_phonemes, spoken: spoken_phonemes, labels: error_labels}"
    native, saved = (run_metrics(tmp_path / out, data) for out, data in (
        ("native", [f"data.path={l2_data}"]), ("saved", [f"data.path={tmp_path / 'saved'}", columns])))
    assert native == saved and "test_per" in saved
    import hfstage  # the same splits as Dataset objects, from Python

    final = hfstage.train(ROOT / "configs/speech_wav2vec2.yaml", train_dataset=splits["train"], eval_dataset=splits["val"],
                          overrides=[f"output_dir={tmp_path / 'api'}", "quick_test=true", "report_to=[none]",
                                     "model.encoder.hidden_size=32", "model.encoder.intermediate_size=64", columns])
    assert final.status == "finished"
    assert Wav2Vec2Processor.from_pretrained(tmp_path / "api" / "stage_3_polish").tokenizer.get_vocab()
    assert main(["evaluate", str(tmp_path / "saved"), "--split", "val"]) == 0


def test_speech_from_an_audiofolder_with_list_columns(l2_data, tmp_path):
    """An audiofolder-style folder (a sub-folder per split: the clips and a metadata.jsonl naming them by
    file_name, phonemes and error labels as lists) trains like the metadata.jsonl layout."""
    rows = [json.loads(line) for line in (l2_data / "metadata.jsonl").read_text().splitlines() if line.strip()]
    folder = tmp_path / "clips"
    for split, name in (("train", "train"), ("val", "val"), ("test", "test")):  # the recipe's split names
        (folder / name).mkdir(parents=True)
        with open(folder / name / "metadata.jsonl", "w") as fh:
            for r in (r for r in rows if r["split"] == split):
                shutil.copy(l2_data / r["path"], folder / name / Path(r["path"]).name)
                fh.write(json.dumps({"file_name": Path(r["path"]).name, "canonical_phonemes": r["canonical"].split(),
                                     "spoken_phonemes": r["spoken"].split(), "error_labels": r["labels"]}) + "\n")
    columns = "data.columns={canonical: canonical_phonemes, spoken: spoken_phonemes, labels: error_labels}"
    assert run_metrics(tmp_path / "native", [f"data.path={l2_data}"]) == \
        run_metrics(tmp_path / "folder", [f"data.path={folder}", columns])


def run_metrics(out: Path, data: list[str]) -> dict:
    """The speech recipe's quick test (tiny encoder) with ``data`` overrides: its last stage's metrics (no timings)."""
    common = ["quick_test=true", "report_to=[none]", "model.encoder.hidden_size=32", "model.encoder.intermediate_size=64"]
    assert main(["train", "--config", str(ROOT / "configs/speech_wav2vec2.yaml"), f"output_dir={out}", *common,
                 *data]) == 0
    record = json.loads((out / "stage_3_polish" / "stage.json").read_text())
    return {k: v for part in ("metrics", "test_metrics") for k, v in record[part].items()
            if "runtime" not in k and "per_second" not in k}


@needs_espeak
def test_espeak_l2_shapes_mixed_voices_split_by_word_one_substitution(tmp_path, capsys):
    words = tmp_path / "words.txt"
    words.write_text("ship sheep think this very vine right light rock cat bed zoo\n")
    out = tmp_path / "l2"
    assert main(["prepare", "espeak-l2", "--out", str(out), "--word-source", str(words), "--words", "10",
                 "--split-by", "word", "--wrong-fraction", "0.3", "--errors", "substitution",
                 "--errors-per-clip", "1"]) == 0
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    by_split = {s: [r for r in rows if r["split"] == s] for s in ("train", "val", "test")}
    words_of = {s: {r["word"] for r in clips} for s, clips in by_split.items()}
    assert not words_of["train"] & (words_of["val"] | words_of["test"]) and not words_of["val"] & words_of["test"]
    assert len(words_of["train"] | words_of["val"] | words_of["test"]) == 10 and "zoo" not in words_of["train"]
    voices = {s: {r["voice"] for r in clips} for s, clips in by_split.items()}
    assert voices["train"] == voices["val"] == voices["test"] and len(voices["train"]) == 8  # mixed across splits
    assert len(rows) == 8 * 10  # one clip per voice and word
    wrong = [r for r in rows if any(r["labels"])]
    assert 0.1 < len(wrong) / len(rows) < 0.5
    for r in wrong:  # exactly one substitution: same length, one phoneme differs, where the label says
        canonical, spoken = r["canonical"].split(), r["spoken"].split()
        assert sum(r["labels"]) == 1 and len(spoken) == len(canonical)
        assert [int(a != b) for a, b in zip(canonical, spoken)] == r["labels"]
    shape = json.loads((out / "prepare.json").read_text())
    assert shape["shape"]["split_by"] == "word" and shape["splits"]["train"]["phoneme_error_rate"] < 0.2
    printed = capsys.readouterr().out
    assert "metadata.jsonl (test): clips" in printed and "phoneme_error_rate" in printed

    assert main(["prepare", "espeak-l2", "--out", str(tmp_path / "x"), "--wrong-fraction", "1.5"]) == 2
    assert "--wrong-fraction 1.5: must be in (0, 1)" in capsys.readouterr().err
    assert main(["prepare", "mnist-pairs", "--out", str(tmp_path / "y"), "--split-by", "word"]) == 2
    assert "--split-by applies to espeak-l2 only" in capsys.readouterr().err


def test_ctc_forced_alignment_finds_the_known_best_path():
    from hfstage.models.alignment import aligned_segments, ctc_forced_align, gop_features

    def posteriors(frames: list[int], vocab: int = 5) -> torch.Tensor:
        lp = torch.full((len(frames), vocab), 0.1 / (vocab - 1))
        lp[torch.arange(len(frames)), torch.tensor(frames)] = 0.9
        return lp.log()

    # frames: a a a <blank> b b b c c c, then two padding frames
    lp = torch.cat([posteriors([1, 1, 1, 0, 2, 2, 2, 3, 3, 3]), posteriors([0, 0])])[None]
    segments, ok = ctc_forced_align(lp, torch.tensor([10]), torch.tensor([[1, 2, 3]]), torch.tensor([3]))
    assert ok.tolist() == [True]
    assert segments[0].tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3]  # the blank joins the phoneme before it
    # a repeated phoneme needs a blank between its two frames; padding phonemes (target length 2 of 3) are ignored
    lp = posteriors([4, 4, 0, 4, 0])[None]
    segments, ok = ctc_forced_align(lp, torch.tensor([5]), torch.tensor([[4, 4, 0]]), torch.tensor([2]))
    assert ok.tolist() == [True] and segments[0].tolist() == [0, 0, 0, 1, 1]
    # too few frames for the phonemes: no path, and the even split is used instead
    lp = posteriors([1, 2])[None]
    _, ok = ctc_forced_align(lp, torch.tensor([2]), torch.tensor([[1, 1, 2]]), torch.tensor([3]))
    assert ok.tolist() == [False]
    fallback = aligned_segments(lp, torch.tensor([2]), torch.tensor([[1, 1, 2]]), torch.tensor([3]))
    assert fallback[0].tolist() == [0, 1]
    # goodness of pronunciation: each phoneme's own frames favour it over every competitor
    lp = posteriors([1, 1, 1, 0, 2, 2, 2, 3, 3, 3])[None]
    segments, _ = ctc_forced_align(lp, torch.tensor([10]), torch.tensor([[1, 2, 3]]), torch.tensor([3]))
    gop = gop_features(lp, segments, torch.tensor([[1, 2, 3]]))
    assert gop.shape == (1, 3, 3) and (gop[0, :, 2] > 0).all()
    wrong = gop_features(lp, segments, torch.tensor([[3, 2, 1]]))  # the first and last phonemes are not what was said
    assert wrong[0, 0, 2] < 0 and wrong[0, 2, 2] < 0 and wrong[0, 1, 2] > 0


def test_aligned_head_shapes_masking_and_reload(tmp_path):
    model = build_model({"type": "speech", "head": "aligned", "encoder": {"hidden_size": 32, "intermediate_size": 64}},
                        vocab_size=12).eval()
    waves = torch.randn(2, 8000)
    mask = torch.ones(2, 8000, dtype=torch.long)
    mask[1, 5000:] = 0
    canonical = torch.tensor([[3, 4, 5, 6], [7, 8, 0, 0]])
    with torch.no_grad():
        out = model(input_values=waves, attention_mask=mask, canonical_ids=canonical, canonical_mask=canonical.ne(0))
        short = model(input_values=waves[1:, :5000], attention_mask=mask[1:, :5000], canonical_ids=canonical[1:, :2],
                      canonical_mask=canonical[1:, :2].ne(0))
    assert out.error_logits.shape == (2, 4) and torch.isfinite(out.error_logits).all()
    # padding (of the audio and of the phonemes) changes nothing for the shorter clip
    torch.testing.assert_close(out.error_logits[1, :2], short.error_logits[0], atol=1e-4, rtol=1e-4)
    model.save_pretrained(tmp_path / "m")
    again = AutoModel.from_pretrained(tmp_path / "m").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(input_values=waves, attention_mask=mask, canonical_ids=canonical,
                                         canonical_mask=canonical.ne(0)).error_logits, out.error_logits)


def test_a_phoneme_never_heard_in_training_is_aligned_as_any_and_never_flagged():
    from hfstage.models.alignment import aligned_segments
    from hfstage.models.speech import UNASSESSED_LOGIT

    model = build_model({"type": "speech", "head": "aligned", "encoder": {"hidden_size": 32, "intermediate_size": 64}},
                        vocab_size=6).eval()
    unk = model.config.unk_token_id
    assert unk == 1
    # frames: a a c c b b, canonical a <unk> b (the speaker said c, a phoneme the canonical sequence does not hold)
    lp = torch.full((6, 6), 0.02)
    lp[torch.arange(6), torch.tensor([2, 2, 4, 4, 3, 3])] = 0.9
    lp = lp.log()[None]
    args = (torch.tensor([6]), torch.tensor([[2, unk, 3]]), torch.tensor([3]))
    assert aligned_segments(model._unknown_as_any(lp), *args)[0].tolist() == [0, 0, 1, 1, 2, 2]
    assert aligned_segments(lp, *args)[0].tolist() != [0, 0, 1, 1, 2, 2]  # <unk>'s own column: it gets one frame
    # in the model: the unknown phoneme's error logit says "not mispronounced" whatever the audio; the others are
    # judged from the audio as before
    waves = torch.randn(1, 8000)
    with torch.no_grad():
        out = model(input_values=waves, canonical_ids=torch.tensor([[2, unk, 3]]))
        known = model(input_values=waves, canonical_ids=torch.tensor([[2, 4, 3]]))
    assert out.error_logits[0, 1] == UNASSESSED_LOGIT and known.error_logits[0, 1] != UNASSESSED_LOGIT
    assert torch.isfinite(out.error_logits).all() and (out.error_logits[0, [0, 2]] > UNASSESSED_LOGIT).all()


MEL = {"type": "mel_conformer", "hidden_size": 32, "num_layers": 2, "num_heads": 2, "ff_size": 64, "num_mel_bins": 40}


def test_mel_conformer_encoder_shapes_padding_and_spec_augment(tmp_path):
    from hfstage.models.mel_encoder import MelConformerEncoder

    encoder = MelConformerEncoder(**{k: v for k, v in MEL.items() if k != "type"}).eval()
    waves = torch.randn(2, 16000)
    mask = torch.ones(2, 16000, dtype=torch.long)
    mask[1, 9600:] = 0
    with torch.no_grad():
        out = encoder(waves, attention_mask=mask).last_hidden_state
        short = encoder(waves[1:, :9600], attention_mask=mask[1:, :9600]).last_hidden_state
    assert out.shape == (2, 25, 32)  # 98 STFT frames wholly inside the second, subsampled 4x
    lengths = encoder.output_lengths(mask.sum(-1))
    assert lengths.tolist() == [25, 15] and short.shape[1] == 15
    torch.testing.assert_close(out[1, :15], short[0], atol=1e-4, rtol=1e-4)  # padding changes nothing
    assert torch.count_nonzero(out[1, 15:]) == 0
    feats = encoder.log_mel(waves, encoder.feature_lengths(mask.sum(-1)))
    masked = encoder.spec_augment(feats, encoder.feature_lengths(mask.sum(-1)), torch.tensor([0.3, 0.3]))
    assert masked.shape == feats.shape and (masked == 0).sum() > (feats == 0).sum()
    # the model: the mel encoder in place of wav2vec2, reloaded from its config
    model = build_model({"type": "speech", "head": "aligned", "encoder": MEL}, vocab_size=12).eval()
    canonical = torch.tensor([[3, 4, 5], [6, 7, 0]])
    with torch.no_grad():
        got = model(input_values=waves, attention_mask=mask, canonical_ids=canonical, canonical_mask=canonical.ne(0))
    assert got.logits.shape == (2, 25, 12) and got.output_lengths.tolist() == [25, 15]
    model.save_pretrained(tmp_path / "m")
    again = AutoModel.from_pretrained(tmp_path / "m").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(input_values=waves, attention_mask=mask, canonical_ids=canonical,
                                         canonical_mask=canonical.ne(0)).error_logits, got.error_logits)
    with pytest.raises(ConfigError, match="encoder.depth: not an argument of the mel_conformer encoder"):
        build_model({"type": "speech", "encoder": {"type": "mel_conformer", "depth": 3}}, vocab_size=12)


def test_vtlp_moves_the_formants_by_the_clip_factor_and_keeps_the_band():
    from hfstage.models.mel_encoder import HOP, WINDOW, MelConformerEncoder

    tone = torch.sin(torch.arange(8000) * 2 * math.pi * 1000 / 16000)[None]  # 1 kHz: STFT bin 25
    spec = torch.stft(tone, n_fft=WINDOW, hop_length=HOP, window=torch.hann_window(WINDOW), center=False,
                      return_complex=True).abs().pow(2).repeat(3, 1, 1)
    warped = MelConformerEncoder.vtlp(spec, torch.tensor([1.0, 1.2, 0.8]))
    torch.testing.assert_close(warped[0], spec[0])  # factor 1: nothing moves
    peaks = warped.mean(-1).argmax(-1).tolist()
    assert peaks == [25, 30, 20]  # 1 kHz heard at 1.2 kHz and 0.8 kHz
    edge = torch.zeros(3, 201, 1)
    edge[:, 200] = 1.0
    assert MelConformerEncoder.vtlp(edge, torch.tensor([1.0, 1.2, 0.8]))[:, 200, 0].tolist() == [1.0, 1.0, 1.0]
    # in the encoder: training batches that carry a strength are warped, evaluation never is
    encoder = MelConformerEncoder(**{k: v for k, v in MEL.items() if k != "type"})
    encoder.dropout.p = 0.0
    for block in encoder.blocks:
        block.eval()
    waves = torch.randn(2, 8000)
    mask = torch.ones_like(waves, dtype=torch.long)
    still = encoder(waves, mask, spec_augment=torch.tensor([0.0, 0.0, 0.0])).last_hidden_state
    moved = encoder(waves, mask, spec_augment=torch.tensor([0.0, 0.0, 0.2])).last_hidden_state
    assert (moved - still).abs().max() > 1e-3
    encoder.eval()
    torch.testing.assert_close(encoder(waves, mask, spec_augment=torch.tensor([0.0, 0.0, 0.2])).last_hidden_state,
                               encoder(waves, mask).last_hidden_state)


def test_mel_floor_makes_digital_silence_and_a_faint_noise_floor_alike():
    from hfstage.models.mel_encoder import MelConformerEncoder

    torch.manual_seed(0)
    tone = torch.sin(torch.arange(16000) * 2 * math.pi * 440 / 16000) * torch.linspace(0.2, 1, 16000)
    silent = torch.cat([tone, torch.zeros(8000)])[None]  # a clip ending in exact zeros, as espeak's do
    hiss = silent + 1e-4 * torch.randn_like(silent)  # ~ -77 dB below the tone's power
    frames = torch.tensor([silent.shape[1]])
    args = {k: v for k, v in MEL.items() if k != "type"}
    plain = MelConformerEncoder(**args)
    floored = MelConformerEncoder(**args, mel_floor_db=60)
    lengths = plain.feature_lengths(frames)
    # without a floor the silent half is ~10 nats below the hiss, and per-clip normalisation moves the tone too
    assert (plain.log_mel(silent, lengths) - plain.log_mel(hiss, lengths)).abs().max() > 1
    apart = (floored.log_mel(silent, lengths) - floored.log_mel(hiss, lengths)).abs()
    assert apart.max() < 0.1 and (apart > 1e-3).float().mean() < 0.01  # alike but where the tone fades into the floor
    raw = torch.log(torch.stft(silent[0], 400, 160, window=torch.hann_window(400), center=False,
                               return_complex=True).abs().pow(2).T @ floored._constant("mel_bank", "cpu") + 1e-6)
    assert raw.max() - raw.min() > 60 * math.log(10) / 10  # the floor did cut something
    with pytest.raises(ConfigError, match="encoder.mel_floor_db must be a positive number of dB"):
        build_model({"type": "speech", "encoder": {"type": "mel_conformer", "mel_floor_db": -3}}, vocab_size=12)


def test_ctc_with_the_canonical_phonemes_in_view(tmp_path):
    model = build_model({"type": "speech", "head": "aligned", "encoder": MEL, "ctc_context": "canonical"},
                        vocab_size=12).eval()
    waves = torch.randn(2, 16000)
    mask = torch.ones(2, 16000, dtype=torch.long)
    mask[1, 9600:] = 0
    canonical = torch.tensor([[3, 4, 5], [6, 7, 0]])
    with torch.no_grad():
        out = model(input_values=waves, attention_mask=mask, canonical_ids=canonical, canonical_mask=canonical.ne(0))
        short = model(input_values=waves[1:, :9600], attention_mask=mask[1:, :9600], canonical_ids=canonical[1:, :2],
                      canonical_mask=canonical[1:, :2].ne(0))
        other = model(input_values=waves, attention_mask=mask, canonical_ids=torch.tensor([[3, 4, 5], [8, 9, 0]]))
    assert out.logits.shape == (2, 25, 12)
    # padding of the audio and of the phonemes changes nothing; another prompt changes that clip's recognition only
    torch.testing.assert_close(out.logits[1, :15], short.logits[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(other.logits[0], out.logits[0])
    assert not torch.allclose(other.logits[1, :15], out.logits[1, :15])
    torch.testing.assert_close(other.acoustic_logits, out.acoustic_logits)  # the audio-only layer ignores the prompt
    assert out.acoustic_logits.shape == (2, 25, 12)
    model.save_pretrained(tmp_path / "m")
    again = AutoModel.from_pretrained(tmp_path / "m").eval()
    assert again.config.ctc_context == "canonical"
    with torch.no_grad():
        torch.testing.assert_close(again(input_values=waves, attention_mask=mask, canonical_ids=canonical).logits,
                                   out.logits)
    with pytest.raises(ValueError, match="pass canonical_ids"):
        model(input_values=waves, attention_mask=mask)
    with pytest.raises(ConfigError, match="ctc_context must be one of none, canonical"):
        build_model({"type": "speech", "encoder": MEL, "ctc_context": "prompt"}, vocab_size=12)


def test_speed_perturbation_changes_duration_and_pitch_together():
    from hfstage.data.audio import AudioCollator, change_speed

    t = np.arange(16000) / 16000
    tone = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    fast = change_speed(tone, 1.1)
    assert len(fast) == round(16000 / 1.1) and fast.dtype == np.float32
    peak = np.abs(np.fft.rfft(fast)).argmax() * 16000 / len(fast)
    assert peak == pytest.approx(484, abs=3)  # 440 Hz played 1.1x faster
    assert np.array_equal(change_speed(tone, 1.0), tone)

    class Extractor:  # records the waves the collator hands to the feature extractor
        def __call__(self, waves, **kwargs):
            self.lengths = [len(w) for w in waves]
            return {"input_values": torch.zeros(len(waves), 1), "attention_mask": torch.ones(len(waves), 1)}

    extractor = Extractor()
    sample = {"wave": tone, "spoken": [1], "canonical": [1], "error_labels": [0]}
    np.random.seed(0)
    AudioCollator(extractor, speed=0.2)([sample] * 8)
    assert all(13333 <= n <= 20000 for n in extractor.lengths) and len(set(extractor.lengths)) > 4


@needs_espeak
def test_speech_multitask_recipe_trains_with_spec_augment(l2_data, tmp_path, capsys):
    out = tmp_path / "run"
    common = ["quick_test=true", f"data.path={l2_data}", f"output_dir={out}", "report_to=[none]",
              "model.encoder.hidden_size=32", "model.encoder.num_layers=1", "model.encoder.num_heads=2",
              "model.encoder.ff_size=64", "stages.2.augmentation.time_mask=0.2", "stages.2.augmentation.vtlp=0.1",
              "stages.3.train_on_eval=true"]
    assert main(["train", "--config", str(ROOT / "configs/speech_multitask.yaml"), *common]) == 0
    record = json.loads((out / "stage_2_finetune" / "stage.json").read_text())
    assert math.isfinite(record["metrics"]["eval_loss"]) and "eval_per" in record["metrics"]
    assert 0 <= record["metrics"]["eval_audio_only_per"] <= 2  # the recipe's recogniser reads the canonical phonemes
    # a refit on train + eval keeps the error threshold its start stage chose on held-out eval clips
    refit = json.loads((out / "stage_3_polish" / "stage.json").read_text())
    start = json.loads((out / refit["started_from"] / "stage.json").read_text())
    assert refit["trained_on_eval"] and refit["resolved"]["error_threshold"] == start["resolved"]["error_threshold"]
    assert json.loads((out / "stage_3_polish" / "config.json").read_text())["error_threshold"] == \
        start["resolved"]["error_threshold"]
    capsys.readouterr()
    # SpecAugment on a wav2vec2 encoder is refused before anything is written
    assert main(["train", "--config", str(ROOT / "configs/speech_wav2vec2.yaml"), "quick_test=true",
                 f"data.path={l2_data}", f"output_dir={tmp_path / 'w2v'}", "report_to=[none]",
                 "stages.2.augmentation={time_mask: 0.2}"]) == 2
    assert "augmentation.time_mask: SpecAugment masks the log-mel features of model.encoder.type: mel_conformer" \
        in capsys.readouterr().err
    assert main(["train", "--config", str(ROOT / "configs/speech_wav2vec2.yaml"), "quick_test=true",
                 f"data.path={l2_data}", f"output_dir={tmp_path / 'w2v'}", "report_to=[none]",
                 "stages.2.augmentation={vtlp: 0.1}"]) == 2
    assert "augmentation.vtlp: VTLP warps the log-mel features of model.encoder.type: mel_conformer" \
        in capsys.readouterr().err
    assert not (tmp_path / "w2v").exists()
    # a gain would be undone by the per-clip normalisation: refused, not silently ignored
    assert main(["train", "--config", str(ROOT / "configs/speech_multitask.yaml"), *common[:2],
                 f"output_dir={tmp_path / 'gain'}", "stages.2.augmentation.gain=6"]) == 2
    assert "stages.2 (finetune).augmentation.gain: a random gain changes nothing here" in capsys.readouterr().err
    assert not (tmp_path / "gain").exists()
