"""A plain PyTorch speech baseline to measure hfstage's speech recipe against (issue #20).

Log-mel features (80 bands, 25 ms windows every 10 ms, per-clip normalised), two 1-D conv layers (the first
halves the frame rate), a 2-layer bidirectional GRU and a CTC phoneme head, trained with AdamW; then
recognise-and-compare detection: a canonical phoneme is flagged as mispronounced when the edit-distance
alignment of the recognised phonemes to the canonical ones substitutes or deletes it. No hfstage model,
loss or trainer is used; hfstage only reads the clips (the same splits and labels the recipe sees).

    python bench/speech_baseline.py                                        # the default set, ~3 min on 2 CPU cores
    python bench/speech_baseline.py --data data/espeak_l2_words --name words
    python bench/speech_baseline.py --quick                                # smoke mode: 8 words, 2 epochs

The last line is ``speech_baseline_test_error_f1: <F1>``; the test PER, F1 and the flag-every-phoneme F1 are
printed above it and written to docs/benchmarks.md (section ``speech_baseline_<name>``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line, update_benchmarks  # noqa: E402


def log_mel(wave: np.ndarray, bank: torch.Tensor) -> torch.Tensor:
    x = torch.from_numpy(wave)
    spec = torch.stft(x, n_fft=400, hop_length=160, win_length=400, window=torch.hann_window(400),
                      return_complex=True).abs() ** 2  # (201, T)
    mel = torch.log(bank.T @ spec + 1e-6).T  # (T, 80)
    return (mel - mel.mean(0)) / (mel.std(0) + 1e-5)


class Recogniser(nn.Module):
    def __init__(self, vocab: int, mels: int = 80, hidden: int = 128):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv1d(mels, hidden, 5, stride=2, padding=2), nn.GELU(),
                                  nn.Conv1d(hidden, hidden, 5, padding=2), nn.GELU())
        self.rnn = nn.GRU(hidden, hidden, num_layers=2, batch_first=True, bidirectional=True, dropout=0.1)
        self.out = nn.Linear(2 * hidden, vocab)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.conv(feats.transpose(1, 2)).transpose(1, 2)
        lengths = (lengths + 1) // 2
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        y, _ = self.rnn(packed)
        y, _ = nn.utils.rnn.pad_packed_sequence(y, batch_first=True)
        return self.out(y).log_softmax(-1), lengths


def flags_by_alignment(canonical: list[int], heard: list[int]) -> list[int]:
    """1 for each canonical phoneme the edit-distance alignment substitutes or deletes."""
    n, m = len(canonical), len(heard)
    d = np.zeros((n + 1, m + 1), dtype=np.int64)
    d[:, 0], d[0, :] = np.arange(n + 1), np.arange(m + 1)
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            d[i, j] = min(d[i - 1, j] + 1, d[i, j - 1] + 1, d[i - 1, j - 1] + (canonical[i - 1] != heard[j - 1]))
    flags, i, j = [0] * n, n, m
    while i > 0:
        if j > 0 and d[i, j] == d[i - 1, j - 1] + (canonical[i - 1] != heard[j - 1]):
            flags[i - 1] = int(canonical[i - 1] != heard[j - 1])
            i, j = i - 1, j - 1
        elif d[i, j] == d[i - 1, j] + 1:
            flags[i - 1] = 1  # deleted
            i -= 1
        else:
            j -= 1  # an inserted phoneme flags nothing
    return flags


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="a folder made by `hfstage prepare espeak-l2` (default: the default set, made "
                        "in a temporary folder; --quick: 8 words of it)")
    parser.add_argument("--name", default="default", help="the data set's name in the benchmarks section")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-docs", action="store_true", help="print only (a bench that reports it in its own table)")
    args = parser.parse_args()
    from transformers.audio_utils import mel_filter_bank

    from hfstage.data.audio import build_vocabulary, clip_wave, load_clips
    from hfstage.metrics.classification import classification_metrics
    from hfstage.metrics.speech import edit_distance, greedy_decode

    torch.manual_seed(args.seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.data is None:
        import tempfile

        from hfstage.data.prepare import prepare_espeak_l2

        scratch = tempfile.TemporaryDirectory(prefix="speech-baseline-")  # removed when the script ends
        root = Path(scratch.name)
        prepare_espeak_l2(root, seed=args.seed, words=8 if args.quick else None)
    else:
        root = Path(args.data)
    splits = {s: load_clips(root, s, f"split {s}") for s in ("train", "val", "test")}
    vocab = build_vocabulary(splits["train"])
    unk = vocab["<unk>"]
    bank = torch.from_numpy(mel_filter_bank(num_frequency_bins=201, num_mel_filters=80, min_frequency=20,
                                            max_frequency=8000, sampling_rate=16000)).float()
    data = {s: [(log_mel(clip_wave(c), bank), [vocab.get(p, unk) for p in c.spoken],
                 [vocab.get(p, unk) for p in c.canonical], list(c.labels)) for c in clips]
            for s, clips in splits.items()}
    model = Recogniser(len(vocab))
    optim = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-2)
    epochs = 2 if args.quick else args.epochs
    steps = epochs * ((len(data["train"]) + 15) // 16)
    sched = torch.optim.lr_scheduler.OneCycleLR(optim, max_lr=2e-3, total_steps=steps,
                                                pct_start=max(0.1, 2.5 / steps))
    ctc = nn.CTCLoss(blank=0, zero_infinity=True)

    def batches(items, shuffle):
        order = np.random.default_rng(args.seed + len(items)).permutation(len(items)) if shuffle else np.arange(len(items))
        for k in range(0, len(items), 16):
            chunk = [items[i] for i in order[k:k + 16]]
            lengths = torch.tensor([len(f) for f, *_ in chunk])
            feats = nn.utils.rnn.pad_sequence([f for f, *_ in chunk], batch_first=True)
            yield chunk, feats, lengths

    began = time.time()
    for epoch in range(epochs):
        model.train()
        for chunk, feats, lengths in batches(data["train"], True):
            log_probs, out_lengths = model(feats, lengths)
            targets = torch.cat([torch.tensor(s) for _, s, _, _ in chunk])
            loss = ctc(log_probs.transpose(0, 1), targets, out_lengths, torch.tensor([len(s) for _, s, _, _ in chunk]))
            optim.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optim.step()
            sched.step()
    train_s = time.time() - began

    def score(split):
        model.eval()
        errors = total = 0
        flags, truth = [], []
        with torch.no_grad():
            for chunk, feats, lengths in batches(data[split], False):
                log_probs, out_lengths = model(feats, lengths)
                for i, (_, spoken, canonical, labels) in enumerate(chunk):
                    heard = greedy_decode(log_probs[i].numpy(), int(out_lengths[i]))
                    errors += edit_distance(heard, spoken)
                    total += len(spoken)
                    flags += flags_by_alignment(canonical, heard)
                    truth += labels
        f1 = classification_metrics(np.array(flags), np.array(truth), average="binary")["f1"]
        every = classification_metrics(np.ones(len(truth), dtype=np.int64), np.array(truth), average="binary")["f1"]
        return errors / max(1, total), f1, every

    rows = {s: score(s) for s in ("val", "test")}
    for split, (per, f1, every) in rows.items():
        print(f"{split}: PER {per:.3f}, mispronunciation F1 {f1:.3f} (flag every phoneme: {every:.3f})")
    per, f1, every = rows["test"]
    command = "python bench/speech_baseline.py" + (f" --data {args.data}" if args.data else "") + (
        f" --name {args.name}" if args.name != "default" else "")
    import json

    shape = json.loads((root / "prepare.json").read_text()).get("shape", {}) if (root / "prepare.json").is_file() else {}
    described = ", ".join(f"{k} {v}" for k, v in shape.items() if v is not None) or "as prepared"
    body = (f"{machine_line()}; the set: {described}; {len(data['train'])} training clips, {epochs} epochs in "
            f"{train_s:.0f} s.\n\n"
            "| split | PER | mispronunciation F1 | flag-every-phoneme F1 |\n|---|---|---|---|\n"
            + "".join(f"| {s} | {p:.3f} | {f:.3f} | {e:.3f} |\n" for s, (p, f, e) in rows.items())
            + f"\n`{command}`: log-mel + 2 conv + 2-layer BiGRU + CTC, recognise-and-compare detection.")
    if not args.quick and not args.no_docs:
        update_benchmarks(f"speech_baseline_{args.name}", f"Speech: plain PyTorch baseline on {args.name} espeak-l2", body)
    print(f"speech_baseline_test_error_f1: {f1:.4f}")


if __name__ == "__main__":
    main()
