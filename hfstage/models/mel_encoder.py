"""A from-scratch speech encoder: log-mel filterbanks, conv subsampling, conformer blocks.

``model: {type: speech, encoder: {type: mel_conformer, hidden_size: 144, num_layers: 4, ...}}``. What from-scratch
speech recipes (ESPnet, SpeechBrain) start from on ~1k clips, where a random wav2vec2 (raw waveform, its own conv
feature encoder) learns poorly. The log-mel features are computed inside the model (torch STFT, 25 ms windows
every 10 ms, a fixed mel filterbank buffer, per-clip mean/variance normalisation over the valid frames), so the
stage's processor, the collators and the pipeline are the same as for wav2vec2: the model takes the normalised
waveform (``input_values``) and its ``attention_mask``. ``hfstage export`` refuses it for now (exit 2, naming
both exporters' reasons): ONNX's exporters do not take the complex STFT.

SpecAugment (time and frequency masking) and VTLP (vocal tract length perturbation: the power spectrum's
frequency axis warped by a random factor per clip, as a shorter or longer vocal tract moves the formants) are
applied in training only, at the strengths the batch carries (``spec_augment``: the stage's ``augmentation:
{time_mask: p, freq_mask: p, vtlp: w}``, added by the training collator).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch
from torch import nn

from hfstage.models.sequence import sinusoidal_positions

MEL_DEFAULTS = {"hidden_size": 144, "num_layers": 4, "num_heads": 4, "ff_size": 576, "conv_kernel": 15,
                "num_mel_bins": 80, "dropout": 0.1, "mel_floor_db": None}
SAMPLING_RATE, WINDOW, HOP = 16000, 400, 160


def _mel_bank(bins: int) -> torch.Tensor:
    from transformers.audio_utils import mel_filter_bank

    bank = mel_filter_bank(num_frequency_bins=WINDOW // 2 + 1, num_mel_filters=bins, min_frequency=20.0,
                           max_frequency=SAMPLING_RATE / 2, sampling_rate=SAMPLING_RATE)
    return torch.from_numpy(bank).float()  # (201, bins)


class _ConvModule(nn.Module):
    def __init__(self, d: int, kernel: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.pointwise_in = nn.Linear(d, 2 * d)
        self.depthwise = nn.Conv1d(d, d, kernel, padding=kernel // 2, groups=d)
        self.depth_norm = nn.LayerNorm(d)  # not BatchNorm: padded frames must not change the statistics
        self.pointwise_out = nn.Linear(d, d)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        y = nn.functional.glu(self.pointwise_in(self.norm(x)), dim=-1) * keep
        y = self.depthwise(y.transpose(1, 2)).transpose(1, 2)
        y = self.pointwise_out(nn.functional.silu(self.depth_norm(y)))
        return self.dropout(y)


class _ConformerBlock(nn.Module):
    """Macaron feed-forward halves around self-attention and a convolution module (Gulati et al., 2020)."""

    def __init__(self, d: int, heads: int, ff: int, kernel: int, dropout: float):
        super().__init__()

        def feed_forward():
            return nn.Sequential(nn.LayerNorm(d), nn.Linear(d, ff), nn.SiLU(), nn.Dropout(dropout), nn.Linear(ff, d),
                                 nn.Dropout(dropout))

        self.ff1, self.ff2 = feed_forward(), feed_forward()
        self.attn_norm = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.attn_dropout = nn.Dropout(dropout)
        self.conv = _ConvModule(d, kernel, dropout)
        self.out_norm = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        keep = (~padding).unsqueeze(-1).to(x.dtype)
        x = x + 0.5 * self.ff1(x)
        h = self.attn_norm(x)
        x = x + self.attn_dropout(self.attn(h, h, h, key_padding_mask=padding, need_weights=False)[0])
        x = x + self.conv(x, keep)
        return self.out_norm(x + 0.5 * self.ff2(x)) * keep


def mel_floor_nats(mel_floor_db) -> float | None:
    """``mel_floor_db`` (checked) in the natural-log units of the features. Mel power more than this many dB below
    the clip's loudest bin is raised to that level, as Whisper clamps its log-mel 80 dB below the peak: digital
    silence and a faint noise floor then give the same features."""
    if mel_floor_db is None:
        return None
    if isinstance(mel_floor_db, bool) or not isinstance(mel_floor_db, (int, float)) or not 0 < mel_floor_db <= 200:
        raise ValueError(f"encoder.mel_floor_db must be a positive number of dB (e.g. 80), got {mel_floor_db!r}")
    return float(mel_floor_db) * math.log(10) / 10


class MelConformerEncoder(nn.Module):
    """Waveform -> log-mel -> 4x conv subsampling -> conformer blocks: ``(B, samples)`` -> ``(B, frames / 4, H)``."""

    def __init__(self, hidden_size: int = 144, num_layers: int = 4, num_heads: int = 4, ff_size: int = 576,
                 conv_kernel: int = 15, num_mel_bins: int = 80, dropout: float = 0.1, mel_floor_db: float | None = None):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"encoder.hidden_size {hidden_size} must be divisible by encoder.num_heads {num_heads}")
        self.mel_floor = mel_floor_nats(mel_floor_db)
        self.config = SimpleNamespace(hidden_size=hidden_size, num_mel_bins=num_mel_bins)
        # the filterbank and window are constants, rebuilt rather than saved (from_pretrained materialises a model
        # from its checkpoint, which would leave unsaved buffers uninitialised)
        self._constants: dict = {}
        channels = 32
        self.subsample = nn.ModuleList([nn.Conv2d(1, channels, 3, stride=2, padding=1),
                                        nn.Conv2d(channels, channels, 3, stride=2, padding=1)])
        self.input_proj = nn.Linear(channels * math.ceil(math.ceil(num_mel_bins / 2) / 2), hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(_ConformerBlock(hidden_size, num_heads, ff_size, conv_kernel, dropout)
                                    for _ in range(num_layers))

    def _constant(self, name: str, device) -> torch.Tensor:
        key = (name, str(device))
        if key not in self._constants:
            value = _mel_bank(self.config.num_mel_bins) if name == "mel_bank" else torch.hann_window(WINDOW)
            self._constants[key] = value.to(device)
        return self._constants[key]

    @staticmethod
    def feature_lengths(sample_lengths: torch.Tensor) -> torch.Tensor:
        """STFT frames that lie wholly inside the clip (windows are not centred: no frame sees padding)."""
        return ((sample_lengths - WINDOW).clamp(min=0) // HOP + 1)

    def output_lengths(self, sample_lengths: torch.Tensor) -> torch.Tensor:
        frames = self.feature_lengths(sample_lengths)
        return (((frames + 1) // 2) + 1) // 2  # two stride-2 convolutions (kernel 3, padding 1)

    def _subsample(self, feats: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, bins) -> (B, C, T/4, bins/4); what lies past a clip's frames is zeroed after each convolution, so a
        padded clip gives what it gives alone."""
        x = feats.unsqueeze(1)
        for conv in self.subsample:
            x = torch.relu(conv(x))
            frames = (frames + 1) // 2
            x = x * (torch.arange(x.shape[2], device=x.device)[None, :] < frames[:, None])[:, None, :, None].to(x.dtype)
        return x

    @staticmethod
    def vtlp(spec: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
        """(B, F, T) power spectra with each clip's frequency axis warped by its factor (Jaitly & Hinton's VTLP): what
        lay at frequency f moves to f * factor below a boundary (80% of the band, less for factors above 1), and
        from there the rest of the band is stretched or squeezed linearly so the Nyquist frequency stays put."""
        bins = spec.shape[1]
        top = bins - 1
        k = torch.arange(bins, device=spec.device, dtype=spec.dtype)[None, :]  # output bins
        alpha = factors.to(spec.dtype)[:, None]
        edge = 0.8 * top * torch.clamp(1 / alpha, max=1.0)  # output bin where the linear part ends
        source = torch.where(k <= edge, k / alpha, edge / alpha + (k - edge) * (top - edge / alpha) / (top - edge))
        source = source.clamp(0, top)
        low = source.floor().long().clamp(max=top - 1)
        weight = (source - low).unsqueeze(-1)  # (B, F, 1)
        below = spec.gather(1, low.unsqueeze(-1).expand(-1, -1, spec.shape[2]))
        above = spec.gather(1, (low + 1).unsqueeze(-1).expand(-1, -1, spec.shape[2]))
        return below * (1 - weight) + above * weight

    def log_mel(self, waves: torch.Tensor, frames: torch.Tensor, warp: torch.Tensor | None = None) -> torch.Tensor:
        """(B, samples) -> (B, T, bins): log-mel, normalised per clip over its valid frames; ``warp``: per-clip VTLP
        factors (training)."""
        if waves.shape[1] < WINDOW:
            waves = nn.functional.pad(waves, (0, WINDOW - waves.shape[1]))
        spec = torch.stft(waves.float(), n_fft=WINDOW, hop_length=HOP, win_length=WINDOW,
                          window=self._constant("window", waves.device), center=False,
                          return_complex=True).abs().pow(2)  # (B, 201, T)
        if warp is not None:
            spec = self.vtlp(spec, warp)
        mel = torch.log(torch.einsum("bft,fm->btm", spec, self._constant("mel_bank", waves.device)) + 1e-6)
        valid = (torch.arange(mel.shape[1], device=mel.device)[None, :] < frames[:, None]).unsqueeze(-1).to(mel.dtype)
        if self.mel_floor is not None:
            peak = mel.masked_fill(valid == 0, float("-inf")).amax(dim=(1, 2), keepdim=True)
            mel = torch.maximum(mel, peak - self.mel_floor)
        count = valid.sum(1, keepdim=True).clamp(min=1)
        mean = (mel * valid).sum(1, keepdim=True) / count
        std = (((mel - mean) ** 2 * valid).sum(1, keepdim=True) / count).clamp(min=1e-8).sqrt()
        return (mel - mean) / std * valid

    def spec_augment(self, feats: torch.Tensor, frames: torch.Tensor, strengths: torch.Tensor) -> torch.Tensor:
        """Two time masks (each up to ``time_mask`` of the clip) and two frequency masks (each up to ``freq_mask`` of
        the bands), per clip, zeroing the normalised features."""
        b, t, m = feats.shape
        time_p, freq_p = float(strengths[0]), float(strengths[1])
        keep = torch.ones_like(feats)
        pos_t = torch.arange(t, device=feats.device)[None, :]
        pos_f = torch.arange(m, device=feats.device)[None, :]
        for _ in range(2):
            if time_p > 0:
                width = (torch.rand(b, device=feats.device) * time_p * frames).long()
                start = (torch.rand(b, device=feats.device) * (frames - width).clamp(min=1)).long()
                keep = keep * ~((pos_t >= start[:, None]) & (pos_t < (start + width)[:, None])).unsqueeze(-1)
            if freq_p > 0:
                width = (torch.rand(b, device=feats.device) * freq_p * m).long()
                start = (torch.rand(b, device=feats.device) * (m - width).clamp(min=1)).long()
                keep = keep * ~((pos_f >= start[:, None]) & (pos_f < (start + width)[:, None])).unsqueeze(1)
        return feats * keep

    def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None,
                spec_augment: torch.Tensor | None = None):
        from transformers.modeling_outputs import BaseModelOutput

        samples = attention_mask.sum(-1) if attention_mask is not None else torch.full(
            (input_values.shape[0],), input_values.shape[1], device=input_values.device)
        frames = self.feature_lengths(samples)
        if attention_mask is not None:
            input_values = input_values * attention_mask.to(input_values.dtype)
        augment = self.training and spec_augment is not None
        warp = None
        if augment and len(spec_augment) > 2 and float(spec_augment[2]) > 0:  # VTLP: a factor in 1 +- w per clip
            w = float(spec_augment[2])
            warp = 1 + (torch.rand(input_values.shape[0], device=input_values.device) * 2 - 1) * w
        feats = self.log_mel(input_values, frames, warp)
        if augment:
            feats = self.spec_augment(feats, frames, spec_augment)
        x = self._subsample(feats, frames)  # (B, C, T/4, bins/4)
        b, c, t, f = x.shape
        x = self.input_proj(x.permute(0, 2, 1, 3).reshape(b, t, c * f))
        x = self.dropout(x + sinusoidal_positions(t, x.shape[-1], x.device)[None].to(x.dtype))
        padding = torch.arange(t, device=x.device)[None, :] >= self.output_lengths(samples).clamp(max=t)[:, None]
        for block in self.blocks:
            x = block(x, padding)
        return BaseModelOutput(last_hidden_state=x)
