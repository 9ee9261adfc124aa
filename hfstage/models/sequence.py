"""Sequence classifiers for padded feature clips: a 1-D CNN, a GRU/LSTM, or a small Transformer.

All three read ``input_values`` (B, T, F) with an ``attention_mask`` (B, T), never let padded frames
reach the output (zeroed after every layer, packed sequences, key padding masks) and pool the valid
frames with a masked mean, so padding a clip further does not change its logits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

from hfstage.models.base import MODELS

ARCHS = ("cnn", "gru", "lstm", "transformer")


class SequenceConfig(PretrainedConfig):
    model_type = "hfstage_sequence"

    def __init__(self, arch: str = "gru", input_dim: int = 1, num_labels: int | None = None, hidden_dim: int = 64,
                 num_layers: int = 2, num_heads: int = 4, kernel_size: int = 5, bidirectional: bool = True,
                 dropout: float = 0.1, **kwargs):
        if arch not in ARCHS:
            raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {arch!r}")
        if arch == "transformer" and hidden_dim % num_heads:
            raise ValueError(f"hidden_dim {hidden_dim} must be divisible by num_heads {num_heads}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.arch = arch
        self.input_dim = input_dim
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.kernel_size = kernel_size
        self.bidirectional = bidirectional
        self.dropout = dropout
        if num_labels is not None:  # a saved config carries id2label instead, which sets num_labels
            kwargs["num_labels"] = num_labels
        super().__init__(**kwargs)


@dataclass
class SequenceOutput(ModelOutput):
    logits: torch.Tensor | None = None


def masked_mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(h.dtype)
    return (h * m).sum(1) / m.sum(1).clamp(min=1)


def sinusoidal_positions(t: int, dim: int, device) -> torch.Tensor:
    pos = torch.arange(t, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(t, dim, device=device)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
    return pe


@MODELS.register("sequence")
class SequenceClassifier(PreTrainedModel):
    config_class = SequenceConfig
    main_input_name = "input_values"

    def __init__(self, config: SequenceConfig):
        super().__init__(config)
        h = config.hidden_dim
        self.input_proj = nn.Linear(config.input_dim, h)
        if config.arch == "cnn":
            self.convs = nn.ModuleList(nn.Conv1d(h, h, config.kernel_size, padding=config.kernel_size // 2)
                                       for _ in range(config.num_layers))
            out = h
        elif config.arch in ("gru", "lstm"):
            rnn = nn.GRU if config.arch == "gru" else nn.LSTM
            self.rnn = rnn(h, h, num_layers=config.num_layers, batch_first=True, bidirectional=config.bidirectional,
                           dropout=config.dropout if config.num_layers > 1 else 0.0)
            out = h * (2 if config.bidirectional else 1)
        else:
            layer = nn.TransformerEncoderLayer(h, config.num_heads, 4 * h, config.dropout, batch_first=True,
                                               norm_first=True)
            self.encoder = nn.TransformerEncoder(layer, config.num_layers, enable_nested_tensor=False)
            out = h
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(out, config.num_labels)
        self.post_init()

    def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, **kwargs) -> SequenceOutput:
        b, t, _ = input_values.shape
        mask = attention_mask.bool() if attention_mask is not None else torch.ones(b, t, dtype=torch.bool,
                                                                                     device=input_values.device)
        keep = mask.unsqueeze(-1).to(input_values.dtype)
        h = self.input_proj(input_values) * keep
        arch = self.config.arch
        if arch == "cnn":
            for conv in self.convs:
                h = torch.relu(conv(h.transpose(1, 2)).transpose(1, 2)) * keep  # padding stays zero
        elif arch in ("gru", "lstm"):
            lengths = mask.sum(1).clamp(min=1).cpu()
            packed = pack_padded_sequence(h, lengths, batch_first=True, enforce_sorted=False)
            h, _ = pad_packed_sequence(self.rnn(packed)[0], batch_first=True, total_length=t)
        else:
            h = h + sinusoidal_positions(t, h.shape[-1], h.device).to(h.dtype)
            h = self.encoder(h, src_key_padding_mask=~mask)
        return SequenceOutput(logits=self.classifier(self.dropout(masked_mean(h, mask))))


AutoConfig.register(SequenceConfig.model_type, SequenceConfig)
AutoModel.register(SequenceConfig, SequenceClassifier)
