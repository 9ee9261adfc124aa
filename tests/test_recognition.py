"""What a speech model reports as heard: the echo PER, the recogniser chosen on eval (echo wins; audio wins), and
the diagnosis of substitutions, deletions and insertions, on hand-made logits and alignments."""

from __future__ import annotations

import numpy as np
import pytest

from hfstage.metrics.recognition import (
    ECHO,
    align,
    apply_edits,
    best_by_edits,
    ctc_log_likelihoods,
    diagnose,
    diagnosis_of,
    diagnosed_sequence,
    diagnosis_text,
    feedback,
    flagged_diagnosis,
    mdd_metrics,
    recognise,
)
from hfstage.metrics.speech import speech_metrics
from hfstage.tasks.speech import SpeechAssessmentTask

VOCAB = 10  # 0 blank, 1 <unk>, 2-9 phonemes


def spelled(sequence: list[int], sure: float = 6.0, doubt: dict[int, tuple[int, float]] | None = None) -> np.ndarray:
    """Logits that spell ``sequence`` (blank, phoneme, blank, ...); ``doubt[k] = (other, margin)``: the k-th phoneme's
    frame also gives ``other`` a logit only ``margin`` below it."""
    frames = []
    for k, token in enumerate(sequence):
        frames.append(np.eye(VOCAB)[0] * sure)
        frame = np.eye(VOCAB)[token] * sure
        if doubt and k in doubt:
            other, margin = doubt[k]
            frame[other] = sure - margin
        frames.append(frame)
    frames.append(np.eye(VOCAB)[0] * sure)
    return np.array(frames)


def batch(clips: list[np.ndarray], width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    width = width or max(len(c) for c in clips)
    out = np.full((len(clips), width, VOCAB), -100.0)
    for i, c in enumerate(clips):
        out[i, : len(c)] = c
    return out, np.array([len(c) for c in clips])


def padded(rows: list[list[int]], width: int) -> np.ndarray:
    return np.array([r + [-100] * (width - len(r)) for r in rows])


def test_the_echo_per_by_hand():
    canonical = [[2, 3, 4], [5, 6]]
    spoken = [[2, 7, 4], [5, 6, 8]]  # one substitution; one insertion: 2 errors over 6 phonemes
    logits, lengths = batch([spelled(s) for s in spoken])
    errors = padded([[-5, 5, -5], [-5, -5]], 3).astype(float)
    m = speech_metrics(logits, lengths, padded(spoken, 3), errors, padded([[0, 1, 0], [0, 0]], 3), 0.5, None,
                       padded(canonical, 3))
    assert m["prompt_echo_per"] == pytest.approx(2 / 6)
    assert m["audio_only_per"] == 0.0 and m["per"] == 0.0  # the audio spells what was said: it is chosen


def test_ctc_log_likelihood_prefers_the_spelled_sequence_and_edits_apply_in_place():
    logp = np.log(np.exp(spelled([2, 3])) / np.exp(spelled([2, 3])).sum(-1, keepdims=True))
    scores = ctc_log_likelihoods(logp, [[2, 3], [2, 4], [2], [2, 3, 3]])
    assert scores[0] == max(scores) and scores[0] > -0.2 and max(scores[1:]) < scores[0] - 5
    assert apply_edits([2, 3, 4], [(1, "sub", 7), (0, "ins", 9)]) == [9, 2, 7, 4]
    assert apply_edits([2, 3, 4], [(2, "del", -1), (3, "ins", 5), (0, "del", -1)]) == [3, 5]
    assert apply_edits([2, 3], [(1, "del", -1), (1, "ins", 8)]) == [2, 8]
    best = best_by_edits(spelled([2, 7, 4, 9]), [2, 3, 4])  # one substitution and one insertion away
    assert best[0][0] == [2, 3, 4] and best[1][0] in ([2, 7, 4], [2, 3, 4, 9]) and best[2][0] == [2, 7, 4, 9]
    assert best[2][1] > best[1][1] > best[0][1]


def test_the_echo_wins_on_eval_when_the_audio_doubts():
    """Learners said the canonical phonemes; the audio layer hears a near miss on one (its frame almost as sure of
    the canonical phoneme): the prompt-aware decoder with a large edit penalty returns the prompt, and is chosen."""
    canonical = [[2, 3, 4], [5, 6, 7], [8, 2, 3]]
    logits, lengths = batch([spelled([2, 9, 4], doubt={1: (3, 0.5)}), spelled([5, 6, 7]),
                             spelled([8, 4, 3], doubt={1: (2, 0.3)})])
    errors = padded([[-5, -5, -5]] * 3, 3).astype(float)
    m = speech_metrics(logits, lengths, padded(canonical, 3), errors, padded([[0, 0, 0]] * 3, 3), 0.5, None,
                       padded(canonical, 3))
    assert m["audio_only_per"] == pytest.approx(2 / 9) and m["prompt_echo_per"] == 0.0
    assert m["prompt_aware_per"] == 0.0 and m["per"] == 0.0 and m["edit_penalty"] >= 1.0
    decision = SpeechAssessmentTask().tuned_decision({f"eval_{k}": v for k, v in m.items()})
    assert decision["recognizer"] == "prompt_aware" and decision["edit_penalty"] == m["edit_penalty"]
    # on a test split the saved decision is applied, not chosen again: the audio's PER stays reported beside it
    test = speech_metrics(logits, lengths, padded([[2, 9, 4], [5, 6, 7], [8, 4, 3]], 3), errors,
                          padded([[0, 1, 0], [0, 0, 0], [0, 1, 0]], 3), 0.5, None, padded(canonical, 3),
                          decision["recognizer"], decision["edit_penalty"])
    assert test["per"] == test["prompt_aware_per"] == pytest.approx(2 / 9) and test["audio_only_per"] == 0.0


def test_the_audio_wins_on_eval_when_learners_stray_further_than_two_edits():
    canonical = [[2, 3, 4, 5], [6, 7, 8, 9]]
    spoken = [[9, 8, 7, 5], [6, 2, 3, 4]]  # three substitutions each: beyond the prompt-aware decoder's two edits
    logits, lengths = batch([spelled(s) for s in spoken])
    errors = padded([[5, 5, 5, -5], [-5, 5, 5, 5]], 4).astype(float)
    truth = padded([[1, 1, 1, 0], [0, 1, 1, 1]], 4)
    m = speech_metrics(logits, lengths, padded(spoken, 4), errors, truth, 0.5, None, padded(canonical, 4))
    assert m["prompt_echo_per"] == pytest.approx(6 / 8) and m["prompt_aware_per"] == pytest.approx(2 / 8)
    assert m["audio_only_per"] == 0.0 and m["per"] == 0.0
    assert SpeechAssessmentTask().tuned_decision({f"eval_{k}": v for k, v in m.items()})["recognizer"] == "audio"
    # every mispronounced phoneme flagged, and diagnosed from what the audio heard
    assert m["diagnosis_accuracy"] == 1.0 and m["false_acceptance_rate"] == 0.0 and m["false_rejection_rate"] == 0.0


def test_the_diagnosed_prompt_wins_on_eval_when_the_flags_are_surer_than_the_audio():
    """Three substitutions (beyond the prompt-aware decoder's two edits), all flagged; the audio layer also mishears
    a phoneme the learner said right. The canonical phonemes with the flagged ones diagnosed are exact: chosen."""
    canonical = [[2, 3, 4, 5, 6], [2, 3, 4, 5, 6]]
    spoken = [[7, 8, 9, 5, 6], [2, 3, 4, 5, 6]]
    audio = [spelled([7, 8, 9, 5, 3]), spelled([2, 3, 4, 9, 6])]  # a miss on an unflagged phoneme in each clip
    logits, lengths = batch(audio)
    errors = padded([[5, 5, 5, -5, -5], [-5, -5, -5, -5, -5]], 5).astype(float)
    truth = padded([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]], 5)
    m = speech_metrics(logits, lengths, padded(spoken, 5), errors, truth, 0.5, None, padded(canonical, 5))
    assert m["audio_only_per"] == pytest.approx(2 / 10) and m["prompt_echo_per"] == pytest.approx(3 / 10)
    assert m["prompt_aware_per"] > 0 and m["diagnosed_per"] == 0.0 and m["per"] == 0.0
    decision = SpeechAssessmentTask().tuned_decision({f"eval_{k}": v for k, v in m.items()})
    assert decision["recognizer"] == "diagnosed"
    # applied as saved: what is heard is the prompt with the flagged phonemes as diagnosed, deletions dropped
    assert diagnosed_sequence([2, 3, 4], [("ok", None), ("sub", 7), ("del", None)]) == [2, 7]
    told = feedback([spelled([2, 4])], None, [[2, 3, 4]], [np.array([0, 1, 0])], "diagnosed", 0.0)
    assert told.chosen == "diagnosed" and told.heard == [[2, 4]]
    assert told.diagnosis(0).phonemes == [("ok", None), ("del", None), ("ok", None)]


def test_the_diagnosed_recogniser_is_judged_at_the_threshold_the_stage_will_save():
    """Scores that flag the error only above a lower threshold than 0.5: while choosing, ``diagnosed`` is judged
    with the flags at the split's best threshold (the one saved), and on a split with that threshold it matches."""
    canonical, spoken = [[2, 3, 4]], [[2, 7, 4]]
    logits, lengths = batch([spelled([2, 7, 4])])
    errors = padded([[-3, -1, -3]], 3).astype(float)  # p = 0.05, 0.27, 0.05: nothing flagged at 0.5
    truth = padded([[0, 1, 0]], 3)
    m = speech_metrics(logits, lengths, padded(spoken, 3), errors, truth, 0.5, None, padded(canonical, 3))
    assert m["error_recall"] == 0.0 and 0.05 < m["error_best_threshold"] < 0.27
    assert m["diagnosed_per"] == 0.0  # judged with the flags at the best threshold
    saved = speech_metrics(logits, lengths, padded(spoken, 3), errors, truth, m["error_best_threshold"], None,
                           padded(canonical, 3), "diagnosed", m["edit_penalty"])
    assert saved["per"] == saved["diagnosed_per"] == 0.0 and saved["error_recall"] == 1.0
    at_half = speech_metrics(logits, lengths, padded(spoken, 3), errors, truth, 0.5, None, padded(canonical, 3),
                             "diagnosed", m["edit_penalty"])
    assert at_half["per"] == pytest.approx(1 / 3)  # a saved decision is applied at the threshold given


def test_with_a_prompted_layer_the_prompted_path_competes_too():
    canonical = [[2, 3, 4]]
    audio, prompted = spelled([2, 5, 4]), spelled([2, 3, 4])
    found = recognise([prompted], [audio], canonical, [[2, 3, 4]])
    assert found.paths["audio"] == [[2, 5, 4]] and found.paths["prompted"] == [[2, 3, 4]]
    assert found.choose([[2, 3, 4]]) in ("prompt_aware", "prompted") and found.primary == "prompted"
    assert recognise([audio], None, canonical, penalty=ECHO).paths["prompt_aware"] == canonical


def test_diagnosis_of_a_substitution_a_deletion_and_an_insertion_from_a_hand_made_alignment():
    canonical = ["k", "ae", "t", "s"]
    heard = ["k", "eh", "t", "ih", "z"]  # ae -> eh, ih inserted after t, s -> z
    assert align(canonical, heard) == [(0, 0), (1, 1), (2, 2), (None, 3), (3, 4)]
    d = diagnose(canonical, heard)
    assert d.phonemes == [("ok", None), ("sub", "eh"), ("ok", None), ("sub", "z")]
    assert d.insertions == [(3, "ih")]
    deleted = diagnose(["s", "t", "aa", "p"], ["t", "aa", "p"])
    assert deleted.phonemes == [("del", None), ("ok", None), ("ok", None), ("ok", None)] and not deleted.insertions
    assert diagnosis_text(d) == ("ok sub:eh ok sub:z", "3:ih")
    assert diagnose(["a", "b"], ["x", "a", "b"]).insertions == [(0, "x")]


def test_mdd_rates_by_hand():
    canonical, spoken = [[2, 3, 4], [5, 6]], [[2, 7, 4], [6]]  # 3 -> 7; 5 deleted
    heard = [[2, 8, 4], [6]]  # the substitution heard as the wrong phoneme; the deletion heard right
    diagnoses = [diagnose(c, h).phonemes for c, h in zip(canonical, heard)]
    truth = [np.array([0, 1, 0]), np.array([1, 0])]
    flags = [np.array([1, 1, 0]), np.array([1, 0])]  # both errors flagged, one correct phoneme rejected
    m = mdd_metrics(canonical, spoken, diagnoses, truth, flags)
    assert m == {"false_acceptance_rate": 0.0, "false_rejection_rate": pytest.approx(1 / 3),
                 "diagnosis_accuracy": 0.5}
    missed = mdd_metrics(canonical, spoken, diagnoses, truth, [np.array([0, 0, 0]), np.array([1, 0])])
    assert missed["false_acceptance_rate"] == 0.5 and missed["diagnosis_accuracy"] == 1.0


def test_a_flagged_phoneme_is_diagnosed_from_the_audio_even_when_the_prompt_is_reported():
    canonical = [2, 3, 4]
    assert flagged_diagnosis(spelled([2, 7, 4]), canonical, [0, 1, 0]) == [("ok", None), ("sub", 7), ("ok", None)]
    assert flagged_diagnosis(spelled([2, 4]), canonical, [0, 1, 0]) == [("ok", None), ("del", None), ("ok", None)]
    assert flagged_diagnosis(spelled([2, 4]), canonical, [0, 0, 0]) == [("ok", None)] * 3
    # the prompt reported as heard (an echo): the flags are still diagnosed; insertions come from what is reported
    d = diagnosis_of(spelled([9, 2, 7, 4]), canonical, [0, 1, 0], [9, 2, 3, 4])
    assert d.phonemes == [("ok", None), ("sub", 7), ("ok", None)] and d.insertions == [(0, 9)]
    assert diagnosis_text(d, lambda p: "ph%d" % p) == ("ok sub:ph7 ok", "0:ph9")


def test_a_canonical_phoneme_never_heard_in_training_is_scored_as_what_was_said_there():
    from hfstage.models.alignment import GARBAGE_MARGIN

    # classes: 0 blank, 1 <unk> (never trained: its column is far below the rest), 2 a, 3 b, 4 c; frames a a c c b b
    logits = np.full((6, 5), -5.0)
    logits[:, 1] = -30.0
    for t, c in enumerate([2, 2, 4, 4, 3, 3]):
        logits[t, c] = 5.0
    (kept, kept_score), (edited, edited_score), *_ = best_by_edits(logits, [2, 1, 3])
    assert kept == [2, 1, 3] and edited == [2, 4, 3]
    # kept, the unknown phoneme costs at most GARBAGE_MARGIN per frame it takes against the best phoneme there, not
    # the untrained column's ~35 nats per frame: an edit penalty of a few nats keeps the prompt
    assert 0 < edited_score - kept_score <= 2 * GARBAGE_MARGIN + 1e-9


def test_you_said_names_a_phoneme_never_heard_in_training_as_the_prompt_did():
    from hfstage.tasks.speech import heard_names

    # canonical k a t[ (t[ unknown to the model, id 1); the recogniser kept the prompt's <unk>
    assert heard_names(["k", "E", "<unk>"], ["k", "a", "t["], [5, 6, 1], 1) == ["k", "E", "t["]
    assert heard_names(["<unk>", "i:", "<unk>"], ["T[", "i:", "t["], [1, 7, 1], 1) == ["T[", "i:", "t["]
    # the counts differ (a recogniser dropped it): nothing to line up, nothing renamed
    assert heard_names(["k", "E"], ["k", "a", "t["], [5, 6, 1], 1) == ["k", "E"]
    assert heard_names(["k", "<unk>", "<unk>"], ["k", "a", "t["], [5, 6, 1], 1) == ["k", "<unk>", "<unk>"]
