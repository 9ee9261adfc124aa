"""The newer model code on a real accelerator: masking, reload and bf16 on the device, not only on the CPU.

For each sequence architecture (the recurrent/convolutional/transformer zoo and the time-series models
InceptionTime and ResNet-1D) and for the speech model with the recogniser that reads the canonical phonemes
(`ctc_context: canonical`, mel-conformer encoder, aligned head), it checks on the device:
  - padding changes nothing (the same clips padded further give the same logits),
  - the device's fp32 logits equal the CPU's (same weights),
  - bf16 autocast gives finite logits close to fp32 (the relative error is printed),
  - one training step's BatchNorm statistics ignore padded frames (time-series models).
Run where a GPU is lent (bench/gpu_checks.sh, PARTS=models); the last line is the number of failed checks.
`--quick` (the suite's smoke run) runs the same checks on the CPU where there is no GPU, so the script does not rot.
"""

from __future__ import annotations

import sys

import torch

from hfstage.models import build_model

MEL = {"type": "mel_conformer", "hidden_size": 32, "num_layers": 2, "num_heads": 2, "ff_size": 64, "num_mel_bins": 40}
failed: list[str] = []


def check(name: str, ok: bool, detail: str = "") -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {name} {detail}")
    if not ok:
        failed.append(name)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-6))


def sequences(device: torch.device) -> None:
    for arch in ["cnn", "gru", "lstm", "transformer", "resnet1d", "inception"]:
        torch.manual_seed(0)
        cfg = {"type": "sequence", "arch": arch, "hidden_dim": 32, "num_layers": 3, "num_heads": 2}
        model = build_model(cfg, input_dim=3, num_labels=5).eval()
        lengths = torch.tensor([40, 70, 20, 70])
        x = torch.randn(4, 70, 3) * (torch.arange(70)[None, :, None] < lengths[:, None, None])
        mask = (torch.arange(70)[None, :] < lengths[:, None]).long()
        xd, md = x.to(device), mask.to(device)
        # the same clips padded by 50 more frames
        xp = torch.cat([xd, torch.zeros(4, 50, 3, device=device)], 1)
        mp = torch.cat([md, torch.zeros(4, 50, dtype=md.dtype, device=device)], 1)
        with torch.no_grad():
            cpu = model(input_values=x, attention_mask=mask).logits
            model.to(device)
            dev = model(input_values=xd, attention_mask=md).logits
            longer = model(input_values=xp, attention_mask=mp).logits
            with torch.autocast(device.type, dtype=torch.bfloat16):
                half = model(input_values=xd, attention_mask=md).logits
        check(f"sequence/{arch} padding", torch.allclose(dev, longer, atol=1e-3), f"max diff {(dev - longer).abs().max():.2e}")
        check(f"sequence/{arch} device = cpu", torch.allclose(dev.cpu(), cpu, atol=1e-3, rtol=1e-3),
              f"max diff {(dev.cpu() - cpu).abs().max():.2e}")
        check(f"sequence/{arch} bf16", bool(torch.isfinite(half).all()) and rel(half, dev) < 0.1, f"rel err {rel(half, dev):.3f}")
        if arch in ("resnet1d", "inception"):
            from hfstage.models.sequence import MaskedBatchNorm1d

            stats = []
            for inputs, m in ((xd, md), (xp, mp)):
                trained = build_model(cfg, input_dim=3, num_labels=5).to(device)
                trained.load_state_dict(model.state_dict())
                trained.train()
                with torch.autocast(device.type, dtype=torch.bfloat16):
                    trained(input_values=inputs, attention_mask=m).logits.float().sum().backward()
                stats.append(torch.cat([b.running_mean for b in trained.modules() if isinstance(b, MaskedBatchNorm1d)]))
            check(f"sequence/{arch} bf16 batchnorm ignores padding", torch.allclose(stats[0], stats[1], atol=1e-3),
                  f"max diff {(stats[0] - stats[1]).abs().max():.2e}")


def speech(device: torch.device) -> None:
    torch.manual_seed(0)
    model = build_model({"type": "speech", "head": "aligned", "encoder": MEL, "ctc_context": "canonical"},
                        vocab_size=12).eval()
    waves = torch.randn(3, 32000)
    mask = torch.ones(3, 32000, dtype=torch.long)
    mask[1, 19200:] = 0
    canonical = torch.tensor([[3, 4, 5, 6], [6, 7, 0, 0], [8, 9, 10, 0]])
    with torch.no_grad():
        cpu = model(input_values=waves, attention_mask=mask, canonical_ids=canonical, canonical_mask=canonical.ne(0))
        model.to(device)
        w, m, c = waves.to(device), mask.to(device), canonical.to(device)
        out = model(input_values=w, attention_mask=m, canonical_ids=c, canonical_mask=c.ne(0))
        short = model(input_values=w[1:2, :19200], attention_mask=m[1:2, :19200], canonical_ids=c[1:2, :2],
                      canonical_mask=c[1:2, :2].ne(0))
        with torch.autocast(device.type, dtype=torch.bfloat16):
            half = model(input_values=w, attention_mask=m, canonical_ids=c, canonical_mask=c.ne(0))
    frames = short.logits.shape[1]
    for field in ("logits", "acoustic_logits", "error_logits"):
        a, b = getattr(out, field), getattr(cpu, field)
        if a is None:
            check(f"speech/{field} present", False)
            continue
        check(f"speech/{field} device = cpu", torch.allclose(a.cpu(), b, atol=1e-3, rtol=1e-3),
              f"max diff {(a.cpu() - b).abs().max():.2e}")
        h = getattr(half, field)
        check(f"speech/{field} bf16", bool(torch.isfinite(h).all()) and rel(h, a) < 0.1, f"rel err {rel(h, a):.3f}")
    check("speech/logits padding", torch.allclose(out.logits[1, :frames], short.logits[0], atol=1e-3),
          f"max diff {(out.logits[1, :frames] - short.logits[0]).abs().max():.2e}")


def main() -> int:
    if torch.cuda.is_available():
        device = torch.device("cuda")
        print(torch.__version__, torch.cuda.get_device_name(0))
    elif "--quick" in sys.argv:
        device = torch.device("cpu")
        print(torch.__version__, "no CUDA device: the checks on the CPU (device = cpu holds trivially)")
    else:
        print("no CUDA device: nothing to check here (--quick checks on the CPU)", file=sys.stderr)
        return 2
    sequences(device)
    speech(device)
    print(f"gpu_model_checks_failed: {len(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
