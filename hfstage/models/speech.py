"""Pronunciation assessment: a wav2vec2 encoder with a CTC phoneme head and a mispronunciation head.

``model: {type: speech, head: simple|transformer|cross|hierarchical, encoder: {...Wav2Vec2Config...}}``.
Outputs ``logits`` (CTC over the phoneme vocabulary, per audio frame) and ``error_logits`` (one per
canonical phoneme: is it mispronounced?). The error heads see the canonical phonemes' embeddings and:

- ``simple``: the clip's mean audio vector (a linear layer over both);
- ``transformer``: the same, then a few transformer layers across the canonical phonemes;
- ``cross``: cross-attention from each canonical phoneme to the audio frames;
- ``hierarchical``: frame -> phoneme-level pooling (the clip's frames split evenly over its phonemes);
- ``aligned``: each phoneme's own frames, found by a CTC forced alignment of the canonical phonemes under the
  CTC head's posteriors (``models/alignment.py``; the even split only for a clip with no path), pooled, plus
  goodness-of-pronunciation evidence (the phoneme's mean log-posterior there against its best competitor's).

With ``ctc_context: canonical`` the recogniser also sees the canonical phonemes (text-dependent recognition, as
in the pronunciation-assessment systems that feed the prompt to the recogniser): each audio frame attends to the
clip's canonical phoneme embeddings (with their positions) before a second CTC layer, whose output is ``logits``
(what is decoded), so the recogniser knows what the speaker was asked to say and has to learn from the audio
where it was said otherwise. The audio-only CTC layer stays (``acoustic_logits``, trained by the same loss): the
``aligned`` head's alignment and goodness-of-pronunciation evidence come from it, as evidence that leans on the
prompt would hide the very errors it is there to find.

The encoder is a wav2vec2 built from ``encoder`` (a small random one by default: no weights are downloaded) or,
with ``encoder_path``, loaded by ``Wav2Vec2Model.from_pretrained`` when the run starts; or, with
``encoder: {type: mel_conformer, ...}``, log-mel features into a conformer (``models/mel_encoder.py``), the
from-scratch front-end.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    PretrainedConfig,
    PreTrainedModel,
    Wav2Vec2Config,
    Wav2Vec2Model,
)
from transformers.utils import ModelOutput

from hfstage.errors import ConfigError
from hfstage.models.alignment import aligned_segments, gop_features, segment_mean, unknown_as_garbage
from hfstage.models.base import MODELS
from hfstage.models.mel_encoder import MEL_DEFAULTS, MelConformerEncoder, mel_floor_nats
from hfstage.models.sequence import sinusoidal_positions

HEADS = ("simple", "transformer", "cross", "hierarchical", "aligned")
CTC_CONTEXTS = ("none", "canonical")
TINY_ENCODER = {
    "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128,
    "conv_dim": [32, 32, 32, 32, 32], "conv_kernel": [10, 3, 3, 3, 2], "conv_stride": [5, 2, 2, 2, 2],
    "num_conv_pos_embeddings": 32, "num_conv_pos_embedding_groups": 4, "mask_time_prob": 0.0,
    "feat_extract_norm": "layer", "do_stable_layer_norm": True,
}


class SpeechAssessmentConfig(PretrainedConfig):
    model_type = "hfstage_speech"

    def __init__(self, vocab_size: int = 40, head: str = "simple", encoder: dict | None = None,
                 encoder_path: str | None = None, head_dim: int = 64, head_layers: int = 2, head_heads: int = 2,
                 dropout: float = 0.1, ctc_context: str = "none", pad_token_id: int = 0, unk_token_id: int | None = 1,
                 **kwargs):
        super().__init__(pad_token_id=pad_token_id, **kwargs)
        if ctc_context not in CTC_CONTEXTS:
            raise ValueError(f"ctc_context must be one of {', '.join(CTC_CONTEXTS)}, got {ctc_context!r}")
        if head not in HEADS:
            raise ValueError(f"head must be one of {', '.join(HEADS)}, got {head!r}")
        if head_dim % head_heads:
            raise ValueError(f"head_dim {head_dim} must be divisible by head_heads {head_heads}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.vocab_size = int(vocab_size)
        self.head = head
        encoder = dict(encoder or {})
        if encoder.get("type", "wav2vec2") not in ("wav2vec2", "mel_conformer"):
            raise ValueError(f"encoder.type must be wav2vec2 (default) or mel_conformer, got {encoder['type']!r}")
        if encoder.get("type") == "mel_conformer":
            unknown = sorted(set(encoder) - {"type", *MEL_DEFAULTS})
            if unknown:
                raise ValueError(f"encoder.{unknown[0]}: not an argument of the mel_conformer encoder (it takes "
                                 f"{', '.join(MEL_DEFAULTS)})")
            if encoder_path is not None:
                raise ValueError("encoder_path loads a pretrained wav2vec2 encoder; leave it unset with "
                                 "encoder.type: mel_conformer")
            self.encoder = {**MEL_DEFAULTS, **encoder}
            mel_floor_nats(self.encoder["mel_floor_db"])
        else:
            self.encoder = {**TINY_ENCODER, **encoder}
        self.encoder_path = encoder_path
        self.ctc_context = ctc_context
        # a canonical phoneme outside the vocabulary (never heard in training) is aligned as any phoneme and never
        # flagged: the model has no evidence about it
        self.unk_token_id = unk_token_id
        self.head_dim, self.head_layers, self.head_heads, self.dropout = head_dim, head_layers, head_heads, dropout

    @property
    def pretrained(self) -> bool:
        """build_model loads the encoder from ``encoder_path`` (load_pretrained_backbone) when one is set."""
        return self.encoder_path is not None


UNASSESSED_LOGIT = -30.0  # the error logit of a canonical phoneme outside the vocabulary: p ~ 1e-13, never flagged


@dataclass
class SpeechOutput(ModelOutput):
    logits: torch.Tensor | None = None
    error_logits: torch.Tensor | None = None
    output_lengths: torch.Tensor | None = None
    acoustic_logits: torch.Tensor | None = None  # ctc_context canonical: the audio-only CTC layer's


@MODELS.register("speech")
class SpeechAssessmentModel(PreTrainedModel):
    config_class = SpeechAssessmentConfig
    main_input_name = "input_values"
    encoder_prefix = "encoder."  # encoder_lr applies to these parameters

    def __init__(self, config: SpeechAssessmentConfig):
        super().__init__(config)
        if config.encoder.get("type") == "mel_conformer":
            self.encoder = MelConformerEncoder(**{k: v for k, v in config.encoder.items() if k != "type"})
        else:
            self.encoder = Wav2Vec2Model(Wav2Vec2Config(**{k: v for k, v in config.encoder.items() if k != "type"}))
        h, d = self.encoder.config.hidden_size, config.head_dim
        self.dropout = nn.Dropout(config.dropout)
        self.ctc_head = nn.Linear(h, config.vocab_size)
        if config.ctc_context == "canonical":  # frames attend to the canonical phonemes before the CTC layer
            self.ctc_phonemes = nn.Embedding(config.vocab_size, h, padding_idx=config.pad_token_id)
            heads = next(n for n in (4, 2, 1) if h % n == 0)
            self.ctc_cross = nn.MultiheadAttention(h, heads, dropout=config.dropout, batch_first=True)
            self.ctc_norm = nn.LayerNorm(h)
            self.prompted_ctc_head = nn.Linear(h, config.vocab_size)
        self.phoneme_embed = nn.Embedding(config.vocab_size, d, padding_idx=config.pad_token_id)
        self.audio_proj = nn.Linear(h, d)
        if config.head == "transformer":
            layer = nn.TransformerEncoderLayer(d, config.head_heads, 2 * d, config.dropout, batch_first=True)
            self.phoneme_encoder = nn.TransformerEncoder(layer, config.head_layers, enable_nested_tensor=False)
        elif config.head == "cross":
            self.cross = nn.MultiheadAttention(d, config.head_heads, dropout=config.dropout, batch_first=True)
            self.cross_norm = nn.LayerNorm(d)
        elif config.head == "aligned":
            self.gop_proj = nn.Linear(3, d)  # GOP evidence (own, competitor, difference) into the segment's context
        self.error_head = nn.Sequential(nn.Linear(2 * d, d), nn.GELU(), nn.Dropout(config.dropout), nn.Linear(d, 1))
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, nn.Linear) and not any(module is m for m in self.encoder.modules()):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def load_pretrained_backbone(self) -> None:
        """The encoder from ``encoder_path`` (a folder or a Hub repository)."""
        try:
            source = Wav2Vec2Model.from_pretrained(self.config.encoder_path)
        except Exception as exc:  # file, network and format errors alike
            raise ConfigError(f"model.encoder_path: could not load a wav2vec2 encoder from {self.config.encoder_path!r} "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
        self.encoder.load_state_dict(source.state_dict())

    def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None,
                canonical_ids: torch.Tensor | None = None, canonical_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, error_labels: torch.Tensor | None = None,
                spec_augment: torch.Tensor | None = None, **kwargs) -> SpeechOutput:
        mel = isinstance(self.encoder, MelConformerEncoder)
        extra = {"spec_augment": spec_augment} if mel else {}  # SpecAugment strengths (training batches only)
        hidden = self.encoder(input_values, attention_mask=attention_mask, **extra).last_hidden_state  # (B, T, H)
        b, t, _ = hidden.shape
        if attention_mask is not None:
            samples = attention_mask.sum(-1)
            lengths = (self.encoder.output_lengths(samples) if mel
                       else self.encoder._get_feat_extract_output_lengths(samples)).clamp(max=t)
        else:
            lengths = torch.full((b,), t, dtype=torch.long, device=hidden.device)
        frames = torch.arange(t, device=hidden.device)[None, :] < lengths[:, None]
        if canonical_ids is not None and canonical_mask is None:
            canonical_mask = canonical_ids.ne(0)
        acoustic = self.ctc_head(self.dropout(hidden))
        logits, audio_only = acoustic, None
        if self.config.ctc_context == "canonical":
            if canonical_ids is None:
                raise ValueError("this model recognises with the canonical phonemes in view (ctc_context: canonical); "
                                 "pass canonical_ids")
            # on the encoder's output as the audio-only layer trains it: the prompt cannot make the encoder lazy
            prompted = self._with_canonical(hidden.detach(), canonical_ids, canonical_mask)
            logits = self.prompted_ctc_head(self.dropout(prompted))
            audio_only = acoustic
        error_logits = None
        if canonical_ids is not None:
            error_logits = self._errors(hidden, frames, lengths, canonical_ids, canonical_mask, acoustic)
        return SpeechOutput(logits=logits, error_logits=error_logits, output_lengths=lengths,
                            acoustic_logits=audio_only)

    def _with_canonical(self, hidden, canonical_ids, canonical_mask) -> torch.Tensor:
        """Each frame plus what it reads from the canonical phonemes (embeddings + sinusoidal positions)."""
        table = sinusoidal_positions(canonical_ids.shape[1], hidden.shape[-1], hidden.device)
        phonemes = self.ctc_phonemes(canonical_ids) + table.to(hidden.dtype)
        keep = canonical_mask.bool().clone()
        keep[:, 0] |= ~keep.any(1)  # a clip with no canonical phonemes attends to its padding, not to nothing
        read, _ = self.ctc_cross(hidden, phonemes, phonemes, key_padding_mask=~keep, need_weights=False)
        return self.ctc_norm(hidden + self.dropout(read))

    def _errors(self, hidden, frames, lengths, canonical_ids, canonical_mask, logits) -> torch.Tensor:
        audio = self.audio_proj(hidden)  # (B, T, D)
        phon = self.phoneme_embed(canonical_ids)  # (B, P, D)
        keep = frames.unsqueeze(-1).to(audio.dtype)
        pooled = (audio * keep).sum(1) / keep.sum(1).clamp(min=1)  # (B, D)
        head = self.config.head
        if head == "cross":
            attended, _ = self.cross(phon, audio, audio, key_padding_mask=~frames)
            context = self.cross_norm(attended + phon)
        elif head == "hierarchical":
            context = self._segments(audio, lengths, canonical_mask)
        elif head == "aligned":
            log_probs = logits.detach().float().log_softmax(-1)
            segments = aligned_segments(self._unknown_as_any(log_probs), lengths, canonical_ids,
                                        canonical_mask.sum(1).long(), blank=self.config.pad_token_id)
            gop = gop_features(log_probs, segments, canonical_ids, blank=self.config.pad_token_id)
            context = segment_mean(audio, segments, canonical_ids.shape[1]) + self.gop_proj(gop.to(audio.dtype))
        else:
            context = pooled.unsqueeze(1).expand_as(phon)
            if head == "transformer":
                phon = self.phoneme_encoder(phon + context, src_key_padding_mask=~canonical_mask.bool())
        errors = self.error_head(torch.cat([phon, context], dim=-1)).squeeze(-1)
        if self.config.unk_token_id is None:
            return errors
        return errors.masked_fill(canonical_ids.eq(self.config.unk_token_id), UNASSESSED_LOGIT)

    def _unknown_as_any(self, log_probs: torch.Tensor) -> torch.Tensor:
        return unknown_as_garbage(log_probs, self.config.unk_token_id, self.config.pad_token_id)

    @staticmethod
    def _segments(audio: torch.Tensor, lengths: torch.Tensor, canonical_mask: torch.Tensor) -> torch.Tensor:
        """Mean of the frames of each phoneme's share of the clip: P equal segments of the valid frames."""
        b, t, d = audio.shape
        p = canonical_mask.shape[1]
        n_phon = canonical_mask.sum(1).clamp(min=1)  # (B,)
        pos = torch.arange(t, device=audio.device)[None, :].float()
        segment = (pos * n_phon[:, None] / lengths.clamp(min=1)[:, None]).floor().long()  # frame -> phoneme index
        valid = pos < lengths[:, None]
        segment = torch.where(valid, segment.clamp(max=p - 1), torch.full_like(segment, p))  # padding -> bin p
        one_hot = nn.functional.one_hot(segment, p + 1)[..., :p].to(audio.dtype)  # (B, T, P)
        sums = one_hot.transpose(1, 2) @ audio  # (B, P, D)
        return sums / one_hot.sum(1).clamp(min=1).unsqueeze(-1)


AutoConfig.register(SpeechAssessmentConfig.model_type, SpeechAssessmentConfig)
AutoModel.register(SpeechAssessmentConfig, SpeechAssessmentModel)
