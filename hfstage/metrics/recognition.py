"""What a speech model reports as recognised, and what it says was heard instead (docs/tasks/speech.md).

Four recognisers read a clip: ``audio`` (the audio-only CTC layer's greedy path), ``prompted`` (the layer that
reads the canonical phonemes, when the model has one), ``prompt_aware``: the canonical sequence or one of its
single or double edits (substitution, deletion, insertion), whichever has the highest CTC log-likelihood under the
audio-only layer minus ``edit_penalty`` per edit, and ``diagnosed``: the canonical sequence with each phoneme the
error head flags as diagnosed (below: the substitution heard in its place, or dropped for a deletion), so what is
reported as heard tells the same story as the flags. The penalty and the recogniser are chosen on the eval split at
the end of each stage (lowest PER; a penalty of ``ECHO`` returns the canonical phonemes unchanged, so the choice is
never worse on eval than echoing the prompt; ``diagnosed`` is judged with the flags at the error threshold the stage
saves) and saved in the model's config.

Diagnosis: each canonical phoneme flagged as mispronounced is a substitution (``sub`` and the phoneme heard) or a
deletion (``del``), whichever the audio-only layer finds most likely (``flagged_diagnosis``); the others are ``ok``.
The phonemes inserted between canonical ones come from the sequence reported as heard, aligned with the canonical
one (``diagnose``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RECOGNIZERS = ("prompt_aware", "audio", "prompted", "diagnosed")  # the order ties are broken in
PER_KEYS = {"prompt_aware": "prompt_aware_per", "audio": "audio_only_per", "prompted": "prompted_per",
            "diagnosed": "diagnosed_per"}  # their metrics
PRIMARY = "primary"  # the recogniser of a model saved before one was chosen: its own output layer
ECHO = 1e6  # an edit penalty no likelihood outweighs: the canonical phonemes unchanged
PENALTIES = (0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 12.0, ECHO)
DOUBLE_FROM = 8  # double edits combine the best few single edits
FIRST_PHONEME = 2  # ids 0 (<pad>, the CTC blank) and 1 (<unk>) are never proposed


def edit_distance(a: list, b: list) -> int:
    """Levenshtein distance (substitutions, insertions, deletions all cost 1)."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def phoneme_error_rate(predictions: list[list[int]], references: list[list[int]]) -> float:
    """Total edit distance over total reference length (not a mean of per-clip rates)."""
    errors = sum(edit_distance(p, r) for p, r in zip(predictions, references))
    return errors / max(1, sum(len(r) for r in references))


def greedy_decode(logits: np.ndarray, length: int, blank: int = 0) -> list[int]:
    """Best path: argmax per frame, repeats collapsed, blanks removed."""
    best = np.asarray(logits)[:length].argmax(axis=-1)
    out, last = [], None
    for token in best.tolist():
        if token != last and token != blank:
            out.append(token)
        last = token
    return out


# --- the prompt-aware decoder -----------------------------------------------------------------------------------

Edit = tuple[int, str, int]  # (canonical position, "sub" | "del" | "ins", phoneme id; -1 for a deletion)


def apply_edits(canonical: list[int], edits: list[Edit]) -> list[int]:
    """The canonical sequence with ``edits`` made (an insertion at position i goes before canonical phoneme i)."""
    out = list(canonical)
    for pos, op, phone in sorted(edits, key=lambda e: (e[0], e[1] != "ins"), reverse=True):
        if op == "sub":
            out[pos] = phone
        elif op == "del":
            del out[pos]
        else:
            out.insert(pos, phone)
    return out


def single_edits(canonical: list[int], vocab_size: int) -> list[Edit]:
    phones = range(FIRST_PHONEME, vocab_size)
    edits: list[Edit] = [(i, "del", -1) for i in range(len(canonical))]
    edits += [(i, "sub", p) for i, c in enumerate(canonical) for p in phones if p != c]
    edits += [(i, "ins", p) for i in range(len(canonical) + 1) for p in phones]
    return edits


def ctc_log_likelihoods(log_probs: np.ndarray, candidates: list[list[int]]) -> np.ndarray:
    """log P(candidate | clip) under CTC for each candidate, from one clip's (frames, classes) log-probabilities."""
    import torch
    import torch.nn.functional as F

    frames = log_probs.shape[0]
    lp = torch.as_tensor(log_probs, dtype=torch.float32)[:, None, :].expand(frames, len(candidates), -1).contiguous()
    lengths = torch.tensor([len(c) for c in candidates], dtype=torch.long)
    targets = torch.tensor([t for c in candidates for t in c], dtype=torch.long)
    loss = F.ctc_loss(lp, targets, torch.full((len(candidates),), frames, dtype=torch.long), lengths, blank=0,
                      reduction="none", zero_infinity=False)
    return -loss.double().numpy()


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def scoring_log_probs(logits: np.ndarray) -> np.ndarray:
    """The log-posteriors sequences of canonical phonemes are scored with: <unk> (id 1, a canonical phoneme never
    heard in training) as a garbage phoneme (models.alignment.unknown_as_garbage)."""
    import torch

    from hfstage.models.alignment import unknown_as_garbage

    lp = log_softmax(logits)
    return unknown_as_garbage(torch.from_numpy(lp), FIRST_PHONEME - 1).numpy() if lp.shape[-1] > 1 else lp


def best_by_edits(logits: np.ndarray, canonical: list[int]) -> list[tuple[list[int], float]]:
    """For 0, 1 and 2 edits of ``canonical``: the most likely sequence and its CTC log-likelihood (``-inf`` when the
    clip has too few frames for it)."""
    log_probs = scoring_log_probs(logits)
    vocab = log_probs.shape[-1]
    singles = single_edits(canonical, vocab)
    sequences = [list(canonical)] + [apply_edits(canonical, [e]) for e in singles]
    scores = ctc_log_likelihoods(log_probs, sequences)
    out = [(sequences[0], float(scores[0]))]
    if not singles:
        return out
    order = np.argsort(-scores[1:], kind="stable")
    k = int(order[0])
    out.append((sequences[k + 1], float(scores[k + 1])))
    top = [singles[int(i)] for i in order[:DOUBLE_FROM]]
    pairs = [[a, b] for i, a in enumerate(top) for b in top[i + 1:]
             if (a[0], a[1] == "ins") != (b[0], b[1] == "ins")]  # two edits of the same place are one edit
    if pairs:
        doubles = [apply_edits(canonical, pair) for pair in pairs]
        double_scores = ctc_log_likelihoods(log_probs, doubles)
        j = int(np.argmax(double_scores))
        out.append((doubles[j], float(double_scores[j])))
    return out


def prompt_aware_paths(options: list[list[tuple[list[int], float]]], penalty: float) -> list[list[int]]:
    """Each clip's sequence with the best log-likelihood minus ``penalty`` per edit."""
    return [max(enumerate(clip), key=lambda e: (e[1][1] - penalty * e[0], -e[0]))[1][0] for clip in options]


def choose_penalty(options: list[list[tuple[list[int], float]]], references: list[list[int]]) -> float:
    """The edit penalty with the lowest PER on these clips (ties: the larger penalty, nearer the prompt)."""
    rates = [(phoneme_error_rate(prompt_aware_paths(options, p), references), -p) for p in PENALTIES]
    return -min(rates)[1]


# --- the recognisers, together -----------------------------------------------------------------------------------

@dataclass
class Recognition:
    """Every recogniser's sequence per clip, and the edit penalty the prompt-aware one used."""

    paths: dict[str, list[list[int]]]
    penalty: float | None = None

    @property
    def primary(self) -> str:
        """The model's own output layer: the prompted one when it has one."""
        return "prompted" if "prompted" in self.paths else "audio"

    def choose(self, references: list[list[int]]) -> str:
        """The recogniser with the lowest PER on these clips."""
        return best_recognizer({name: phoneme_error_rate(seqs, references) for name, seqs in self.paths.items()})


def best_recognizer(rates: dict[str, float]) -> str:
    """The recogniser with the lowest PER among ``rates`` (ties broken in the order of RECOGNIZERS)."""
    return min(rates, key=lambda name: (rates[name], RECOGNIZERS.index(name)))


def recognise(ctc_logits: list[np.ndarray], acoustic_logits: list[np.ndarray] | None = None,
              canonical: list[list[int]] | None = None, references: list[list[int]] | None = None,
              penalty: float | None = None) -> Recognition:
    """Every recogniser on these clips (each clip's logits already cut to its frames). Without ``penalty`` the
    prompt-aware decoder's penalty is chosen on ``references``."""
    audio = acoustic_logits if acoustic_logits is not None else ctc_logits
    paths = {"audio": [greedy_decode(a, len(a)) for a in audio]}
    if acoustic_logits is not None:
        paths["prompted"] = [greedy_decode(c, len(c)) for c in ctc_logits]
    if canonical is None:
        return Recognition(paths)
    options = [best_by_edits(a, c) for a, c in zip(audio, canonical)]
    if penalty is None:
        penalty = choose_penalty(options, references) if references is not None else ECHO
    paths["prompt_aware"] = prompt_aware_paths(options, penalty)
    return Recognition(paths, penalty)


# --- diagnosis -----------------------------------------------------------------------------------------------------

def align(canonical: list, heard: list) -> list[tuple[int | None, int | None]]:
    """A minimum-edit alignment: pairs (canonical index or None, heard index or None); a substitution is preferred
    to a deletion plus an insertion."""
    n, m = len(canonical), len(heard)
    cost = np.zeros((n + 1, m + 1), dtype=np.int64)
    cost[:, 0], cost[0, :] = np.arange(n + 1), np.arange(m + 1)
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            cost[i, j] = min(cost[i - 1, j - 1] + (canonical[i - 1] != heard[j - 1]), cost[i - 1, j] + 1,
                             cost[i, j - 1] + 1)
    pairs, i, j = [], n, m
    while i or j:
        if i and j and cost[i, j] == cost[i - 1, j - 1] + (canonical[i - 1] != heard[j - 1]):
            pairs.append((i - 1, j - 1))
            i, j = i - 1, j - 1
        elif i and cost[i, j] == cost[i - 1, j] + 1:
            pairs.append((i - 1, None))
            i -= 1
        else:
            pairs.append((None, j - 1))
            j -= 1
    return pairs[::-1]


@dataclass
class Diagnosis:
    """Per canonical phoneme ``("ok", None)``, ``("sub", heard)`` or ``("del", None)``; and the insertions as
    ``(position, phoneme)``: inserted before canonical phoneme ``position``."""

    phonemes: list[tuple[str, object]]
    insertions: list[tuple[int, object]]


def diagnose(canonical: list, heard: list) -> Diagnosis:
    phonemes: list[tuple[str, object]] = [("ok", None)] * len(canonical)
    insertions, before = [], 0
    for i, j in align(canonical, heard):
        if i is None:
            insertions.append((before, heard[j]))
            continue
        before = i + 1
        if j is None:
            phonemes[i] = ("del", None)
        elif heard[j] != canonical[i]:
            phonemes[i] = ("sub", heard[j])
    return Diagnosis(phonemes, insertions)


def flagged_diagnosis(logits: np.ndarray, canonical: list[int], flags) -> list[tuple[str, object]]:
    """For each canonical phoneme flagged as mispronounced, what the audio-only layer most likely heard instead: the
    substitution (with the phoneme) or the deletion of that phoneme whose sequence, the other phonemes as canonical,
    has the highest CTC log-likelihood; ``("ok", None)`` for the phonemes not flagged. What the detector flags is
    diagnosed even when the sequence reported as heard is the prompt itself."""
    out: list[tuple[str, object]] = [("ok", None)] * len(canonical)
    flagged = [i for i, f in enumerate(list(flags)[: len(canonical)]) if f]
    if not flagged:
        return out
    log_probs = scoring_log_probs(logits)
    edits = [(i, "del", -1) for i in flagged]
    edits += [(i, "sub", p) for i in flagged for p in range(FIRST_PHONEME, log_probs.shape[-1]) if p != canonical[i]]
    scores = ctc_log_likelihoods(log_probs, [apply_edits(canonical, [e]) for e in edits])
    best: dict[int, tuple[float, str, int]] = {}
    for (i, op, phone), score in zip(edits, scores.tolist()):
        if i not in best or score > best[i][0]:
            best[i] = (score, op, phone)
    for i, (_, op, phone) in best.items():
        out[i] = (op, None if op == "del" else phone)
    return out


def only_flagged(diagnosis: list[tuple[str, object]], flags) -> list[tuple[str, object]]:
    """``diagnosis`` with the phonemes ``flags`` does not flag back to ``("ok", None)``."""
    flags = list(flags)
    return [d if i < len(flags) and flags[i] else ("ok", None) for i, d in enumerate(diagnosis)]


def diagnosed_sequence(canonical: list[int], diagnosis: list[tuple[str, object]]) -> list[int]:
    """The canonical phonemes with each diagnosed one as heard: a substitution's phoneme in its place, a deletion
    dropped (the ``diagnosed`` recogniser)."""
    return [c if op == "ok" else said for c, (op, said) in zip(canonical, diagnosis) if op != "del"]


def diagnosis_of(logits: np.ndarray, canonical: list[int], flags, heard: list[int]) -> Diagnosis:
    """The flagged phonemes diagnosed from the audio (``flagged_diagnosis``), the insertions from the sequence
    reported as heard."""
    return Diagnosis(flagged_diagnosis(logits, canonical, flags), diagnose(canonical, heard).insertions)


@dataclass
class Feedback:
    """What a model tells a learner about each clip: every recogniser's sequence (``found``), the one reported as
    heard (``chosen``: ``heard``), and with flags each canonical phoneme's diagnosis."""

    found: Recognition
    chosen: str
    canonical: list[list[int]] | None
    diagnoses: list[list[tuple[str, object]]] | None

    @property
    def heard(self) -> list[list[int]]:
        return self.found.paths[self.chosen]

    def diagnosis(self, i: int) -> Diagnosis:
        """Clip ``i``'s diagnosis: its flagged phonemes diagnosed from the audio, the insertions from what is heard."""
        return Diagnosis(self.diagnoses[i], diagnose(self.canonical[i], self.heard[i]).insertions)


def feedback(ctc_logits: list[np.ndarray], acoustic_logits: list[np.ndarray] | None = None,
             canonical: list[list[int]] | None = None, flags: list | None = None, recognizer: str | None = None,
             penalty: float | None = None, references: list[list[int]] | None = None,
             judged_flags: list | None = None) -> Feedback:
    """Every recogniser on these clips (``recognise``) and the one reported as heard: ``recognizer`` (as saved in
    a model's config); without one, the one with the lowest PER on ``references`` (the end of a stage, on its eval
    split); for ``PRIMARY`` or without canonical phonemes, the model's own output layer. With ``flags`` (per clip,
    one per canonical phoneme) also the diagnosis of each flagged phoneme, from the audio-only layer, and the
    ``diagnosed`` recogniser, from ``judged_flags`` where given (the flags at the threshold a stage is choosing)."""
    found = recognise(ctc_logits, acoustic_logits, canonical, references, penalty)
    diagnoses = None
    if canonical is not None and flags is not None:
        audio = acoustic_logits if acoustic_logits is not None else ctc_logits
        judged = flags if judged_flags is None else judged_flags
        # a phoneme's diagnosis does not depend on the other flags: diagnose every phoneme either set flags, once
        either = [np.logical_or(np.asarray(f, dtype=bool), np.asarray(g, dtype=bool)) for f, g in zip(flags, judged)]
        every = [flagged_diagnosis(a, c, e) for a, c, e in zip(audio, canonical, either)]
        diagnoses = [only_flagged(d, f) for d, f in zip(every, flags)]
        found.paths["diagnosed"] = [diagnosed_sequence(c, only_flagged(d, g))
                                    for c, d, g in zip(canonical, every, judged)]
    if recognizer in found.paths:
        chosen = recognizer
    elif recognizer is None and canonical is not None and references is not None:
        chosen = found.choose(references)
    else:
        chosen = found.primary
    return Feedback(found, chosen, canonical, diagnoses)


def diagnosis_text(d: Diagnosis, name=str) -> tuple[str, str]:
    """(one token per canonical phoneme: ``ok``, ``sub:<heard>``, ``del``; the insertions as ``<pos>:<phoneme>``)."""
    per = " ".join("ok" if op == "ok" else "del" if op == "del" else f"sub:{name(p)}" for op, p in d.phonemes)
    return per, " ".join(f"{pos}:{name(p)}" for pos, p in d.insertions)


def mdd_metrics(canonical: list[list[int]], spoken: list[list[int]], diagnoses: list[list[tuple[str, object]]],
                truth: list[np.ndarray], flags: list[np.ndarray]) -> dict[str, float]:
    """As mispronunciation detection and diagnosis papers report them: ``false_acceptance_rate`` (mispronounced
    phonemes not flagged, over the mispronounced), ``false_rejection_rate`` (correct phonemes flagged, over the
    correct) and ``diagnosis_accuracy`` (among mispronounced phonemes flagged, those whose diagnosis, one per
    canonical phoneme in ``diagnoses``, is what was said: the spoken phonemes aligned with the canonical ones)."""
    wrong = accepted = correct = rejected = detected = diagnosed = 0
    for c, s, found, t, f in zip(canonical, spoken, diagnoses, truth, flags):
        t, f = np.asarray(t).astype(bool)[: len(c)], np.asarray(f).astype(bool)[: len(c)]
        said = diagnose(c, s).phonemes
        for i in range(len(c)):
            if t[i]:
                wrong += 1
                accepted += not f[i]
                if f[i]:
                    detected += 1
                    diagnosed += found[i] == said[i]
            else:
                correct += 1
                rejected += bool(f[i])
    return {"false_acceptance_rate": accepted / max(1, wrong), "false_rejection_rate": rejected / max(1, correct),
            "diagnosis_accuracy": diagnosed / max(1, detected)}
