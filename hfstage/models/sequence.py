"""Sequence classifiers for padded feature clips: a 1-D CNN, a GRU/LSTM, a small Transformer, and the two
time-series classifiers of Fawaz et al.: ``resnet1d`` (the 2019 review's ResNet: residual blocks of three
convolutions with kernels 7, 5, 3 (8, 5, 3 in the paper; odd for symmetric padding) and filters h, 2h, 2h) and ``inception`` (InceptionTime, 2020: inception
modules of a 1x1 bottleneck, three long convolutions (kernels 39, 19, 9) and a max-pool branch, a shortcut
every three modules).

All read ``input_values`` (B, T, F) with an ``attention_mask`` (B, T), never let padded frames
reach the output (zeroed after every layer, packed sequences, key padding masks, BatchNorm statistics
over the valid frames only, max-pooling that never picks a padded frame) and pool the valid frames with a
masked mean, so padding a clip further does not change its logits.
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

ARCHS = ("cnn", "gru", "lstm", "transformer", "resnet1d", "inception")
DEFAULT_KERNELS = {"resnet1d": [7, 5, 3], "inception": [39, 19, 9]}  # odd: symmetric "same" padding


class SequenceConfig(PretrainedConfig):
    model_type = "hfstage_sequence"

    def __init__(self, arch: str = "gru", input_dim: int = 1, num_labels: int | None = None, hidden_dim: int = 64,
                 num_layers: int = 2, num_heads: int = 4, kernel_size: int = 5, bidirectional: bool = True,
                 dropout: float = 0.1, kernel_sizes: list[int] | None = None, **kwargs):
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
        if kernel_sizes and arch not in DEFAULT_KERNELS:
            raise ValueError(f"kernel_sizes is for arch resnet1d or inception (cnn: kernel_size), not {arch}")
        if kernel_sizes and (len(kernel_sizes) != 3 or min(kernel_sizes) < 1):
            raise ValueError(f"kernel_sizes must be three positive sizes, got {kernel_sizes!r}")
        self.kernel_sizes = list(kernel_sizes) if kernel_sizes else list(DEFAULT_KERNELS.get(arch, []))
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


class MaskedBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm over (B, C, T) whose batch statistics (and running averages) count the valid frames only;
    padded frames come out zero."""

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:  # keep: (B, 1, T) 0/1
        if self.training:
            n = keep.sum().clamp(min=1)
            mean = (x * keep).sum((0, 2)) / n
            var = (((x - mean[None, :, None]) * keep) ** 2).sum((0, 2)) / n
            with torch.no_grad():
                m = self.momentum
                self.running_mean.mul_(1 - m).add_(m * mean.detach())
                self.running_var.mul_(1 - m).add_(m * var.detach() * n / (n - 1).clamp(min=1))
                self.num_batches_tracked.add_(1)
        else:
            mean, var = self.running_mean, self.running_var
        y = (x - mean[None, :, None]) / torch.sqrt(var[None, :, None] + self.eps)
        return (y * self.weight[None, :, None] + self.bias[None, :, None]) * keep


class _ConvBN(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel: int):
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, kernel, padding="same", bias=False)
        self.bn = MaskedBatchNorm1d(c_out)

    def forward(self, x, keep):
        return self.bn(self.conv(x * keep), keep)


class _ResidualBlock(nn.Module):
    """Fawaz et al.'s ResNet block: three conv-BN(-ReLU) layers and a 1x1 conv-BN shortcut."""

    def __init__(self, c_in: int, c_out: int, kernels: list[int]):
        super().__init__()
        self.layers = nn.ModuleList(_ConvBN(c_in if i == 0 else c_out, c_out, k) for i, k in enumerate(kernels))
        self.shortcut = _ConvBN(c_in, c_out, 1)

    def forward(self, x, keep):
        h = x
        for i, layer in enumerate(self.layers):
            h = layer(h, keep)
            if i < len(self.layers) - 1:
                h = torch.relu(h)
        return torch.relu(h + self.shortcut(x, keep))


class _InceptionModule(nn.Module):
    """A 1x1 bottleneck, three convolutions of decreasing length and a max-pool + 1x1 branch, concatenated."""

    def __init__(self, c_in: int, filters: int, kernels: list[int]):
        super().__init__()
        self.bottleneck = nn.Conv1d(c_in, filters, 1, bias=False) if c_in > 1 else None
        width = filters if c_in > 1 else c_in
        self.convs = nn.ModuleList(nn.Conv1d(width, filters, k, padding="same", bias=False) for k in kernels)
        self.pool_conv = nn.Conv1d(c_in, filters, 1, bias=False)
        self.bn = MaskedBatchNorm1d(filters * (len(kernels) + 1))

    def forward(self, x, keep):
        z = self.bottleneck(x) * keep if self.bottleneck is not None else x
        pooled = nn.functional.max_pool1d(x.masked_fill(keep == 0, float("-inf")), 3, stride=1, padding=1)
        pooled = pooled.masked_fill(keep == 0, 0.0)  # a padded frame is never the max of a valid one's window
        out = torch.cat([conv(z) for conv in self.convs] + [self.pool_conv(pooled)], dim=1)
        return torch.relu(self.bn(out, keep))


class _InceptionNet(nn.Module):
    def __init__(self, c_in: int, filters: int, depth: int, kernels: list[int]):
        super().__init__()
        width = filters * (len(kernels) + 1)
        self.blocks = nn.ModuleList(_InceptionModule(c_in if i == 0 else width, filters, kernels) for i in range(depth))
        self.shortcuts = nn.ModuleList(_ConvBN(c_in if i == 0 else width, width, 1) for i in range(0, depth, 3)
                                       if i + 3 <= depth)
        self.out_dim = width

    def forward(self, x, keep):
        residual = x
        for i, module in enumerate(self.blocks):
            x = module(x, keep)
            if i % 3 == 2 and i // 3 < len(self.shortcuts):
                x = torch.relu(x + self.shortcuts[i // 3](residual, keep))
                residual = x
        return x


@MODELS.register("sequence")
class SequenceClassifier(PreTrainedModel):
    config_class = SequenceConfig
    main_input_name = "input_values"

    def __init__(self, config: SequenceConfig):
        super().__init__(config)
        h = config.hidden_dim
        if config.arch in ("resnet1d", "inception"):  # convolutions straight on the input channels
            if config.arch == "resnet1d":
                widths = [h, 2 * h, 2 * h] + [2 * h] * max(0, config.num_layers - 3)
                self.blocks = nn.ModuleList(_ResidualBlock(config.input_dim if i == 0 else widths[i - 1], widths[i],
                                                           config.kernel_sizes) for i in range(config.num_layers))
                out = widths[config.num_layers - 1]
            else:
                self.inception = _InceptionNet(config.input_dim, h, config.num_layers, config.kernel_sizes)
                out = self.inception.out_dim
            self.dropout = nn.Dropout(config.dropout)
            self.classifier = nn.Linear(out, config.num_labels)
            self.post_init()
            return
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
        arch = self.config.arch
        if arch in ("resnet1d", "inception"):
            x, k = (input_values * keep).transpose(1, 2), keep.transpose(1, 2)  # (B, F, T), (B, 1, T)
            if arch == "resnet1d":
                for block in self.blocks:
                    x = block(x, k)
            else:
                x = self.inception(x, k)
            return SequenceOutput(logits=self.classifier(self.dropout(masked_mean(x.transpose(1, 2), mask))))
        h = self.input_proj(input_values) * keep
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
