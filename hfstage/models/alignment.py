"""Where each canonical phoneme is in a clip: a CTC forced alignment (Viterbi over the CTC lattice of the
canonical phonemes), per-phoneme segment pooling, and goodness-of-pronunciation (GOP) evidence.

``ctc_forced_align`` finds, for each clip, the best path through the CTC states (blank, p1, blank, p2, ...,
blank) under the frame posteriors, so every frame belongs to one canonical phoneme (a blank frame to the
phoneme before it; leading blanks to the first). A clip too short for its phonemes has no path; its frames are
then split evenly over the phonemes (``even_segments``), the fallback the ``hierarchical`` head always uses.
The alignment is not differentiated: it is a decision read from the CTC head's current posteriors.
"""

from __future__ import annotations

import torch

NEG_INF = float("-inf")


def even_segments(lengths: torch.Tensor, n_phonemes: torch.Tensor, frames: int, width: int) -> torch.Tensor:
    """Frame -> phoneme index with each clip's valid frames split evenly over its phonemes; padding frames -> ``width``."""
    pos = torch.arange(frames, device=lengths.device)[None, :].float()
    n = n_phonemes.clamp(min=1)
    segment = (pos * n[:, None] / lengths.clamp(min=1)[:, None]).floor().long()
    segment = torch.minimum(segment, (n - 1)[:, None])
    return torch.where(pos < lengths[:, None], segment, torch.full_like(segment, width))


@torch.no_grad()
def ctc_forced_align(log_probs: torch.Tensor, lengths: torch.Tensor, targets: torch.Tensor,
                     target_lengths: torch.Tensor, blank: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(frame -> canonical phoneme index (B, T), with ``P`` for padding frames; whether a path exists (B,)).

    ``log_probs`` (B, T, V) frame log-posteriors, ``lengths`` (B,) valid frames, ``targets`` (B, P) canonical
    phoneme ids, ``target_lengths`` (B,) how many of them are real.
    """
    b, t, _ = log_probs.shape
    p = targets.shape[1]
    s = 2 * p + 1
    device = log_probs.device
    states = torch.arange(s, device=device)
    ext = torch.full((b, s), blank, dtype=torch.long, device=device)
    ext[:, 1::2] = targets
    emissions = log_probs.float().gather(2, ext[:, None, :].expand(b, t, s))  # (B, T, S)
    valid_state = states[None, :] < (2 * target_lengths + 1)[:, None]
    emissions = emissions.masked_fill(~valid_state[:, None, :], NEG_INF)
    # a skip s-2 -> s is allowed into a phoneme state that differs from the phoneme two states back
    skip = torch.zeros((b, s), dtype=torch.bool, device=device)
    skip[:, 2:] = (ext[:, 2:] != blank) & (ext[:, 2:] != ext[:, :-2])

    alpha = torch.full((b, s), NEG_INF, device=device)
    alpha[:, 0] = emissions[:, 0, 0]
    alpha[:, 1] = torch.where(target_lengths > 0, emissions[:, 0, 1], torch.full_like(alpha[:, 1], NEG_INF))
    back = torch.zeros((b, t, s), dtype=torch.long, device=device)  # 0: stay, 1: from s-1, 2: from s-2
    for frame in range(1, t):
        stay = alpha
        step = torch.cat([torch.full((b, 1), NEG_INF, device=device), alpha[:, :-1]], dim=1)
        jump = torch.cat([torch.full((b, 2), NEG_INF, device=device), alpha[:, :-2]], dim=1)
        jump = jump.masked_fill(~skip, NEG_INF)
        best, choice = torch.stack([stay, step, jump], dim=-1).max(dim=-1)
        active = (frame < lengths)[:, None]
        alpha = torch.where(active, best + emissions[:, frame], alpha)
        back[:, frame] = torch.where(active, choice, torch.zeros_like(choice))
    last_blank = 2 * target_lengths
    end_blank = alpha.gather(1, last_blank[:, None]).squeeze(1)
    end_phone = alpha.gather(1, (last_blank - 1).clamp(min=0)[:, None]).squeeze(1)
    state = torch.where(end_phone > end_blank, last_blank - 1, last_blank)
    ok = torch.isfinite(torch.maximum(end_blank, end_phone)) & (target_lengths > 0) & (lengths > 0)

    path = torch.zeros((b, t), dtype=torch.long, device=device)
    for frame in range(t - 1, -1, -1):
        path[:, frame] = state
        state = state - back[:, frame].gather(1, state[:, None]).squeeze(1)
    phoneme = torch.where(path % 2 == 1, (path - 1) // 2, (path // 2 - 1).clamp(min=0))
    phoneme = torch.minimum(phoneme, (target_lengths - 1).clamp(min=0)[:, None])
    padding = torch.arange(t, device=device)[None, :] >= lengths[:, None]
    return phoneme.masked_fill(padding, p), ok


def aligned_segments(log_probs: torch.Tensor, lengths: torch.Tensor, targets: torch.Tensor,
                     target_lengths: torch.Tensor, blank: int = 0) -> torch.Tensor:
    """Frame -> phoneme index from the forced alignment, the even split for clips without a path."""
    p = targets.shape[1]
    aligned, ok = ctc_forced_align(log_probs, lengths, targets, target_lengths, blank)
    even = even_segments(lengths, target_lengths, log_probs.shape[1], p)
    return torch.where(ok[:, None], aligned, even)


GARBAGE_MARGIN = 1.0  # nats below each frame's best phoneme: what an unknown phoneme's column scores


def unknown_as_garbage(log_probs: torch.Tensor, unk: int | None, blank: int = 0) -> torch.Tensor:
    """CTC log-posteriors (..., classes) with the unknown phoneme's column (never trained: no training phoneme is
    unknown) replaced by each frame's best phoneme's (not blank) less GARBAGE_MARGIN: a garbage phoneme, so a
    canonical phoneme the model never heard takes the frames that sound like none of its neighbours (alignment) and
    a sequence that keeps it is scored by what was said there (the prompt-aware decoder, the diagnosis)."""
    if unk is None:
        return log_probs
    others = log_probs.clone()
    others[..., [blank, unk]] = NEG_INF
    out = log_probs.clone()
    out[..., unk] = others.max(-1).values - GARBAGE_MARGIN
    return out


def segment_mean(values: torch.Tensor, segments: torch.Tensor, width: int) -> torch.Tensor:
    """Mean of ``values`` (B, T, D) over each phoneme's frames (``segments`` (B, T), ``width`` = padding bin)."""
    one_hot = torch.nn.functional.one_hot(segments, width + 1)[..., :width].to(values.dtype)  # (B, T, P)
    return (one_hot.transpose(1, 2) @ values) / one_hot.sum(1).clamp(min=1).unsqueeze(-1)


def gop_features(log_probs: torch.Tensor, segments: torch.Tensor, targets: torch.Tensor, blank: int = 0
                 ) -> torch.Tensor:
    """Per canonical phoneme (B, P, 3): the mean log-posterior of that phoneme over its own frames, the mean of the
    best competing phoneme's (not blank, not itself), and their difference (goodness of pronunciation)."""
    b, t, v = log_probs.shape
    p = targets.shape[1]
    lp = log_probs.detach().float()
    own = targets.gather(1, segments.clamp(max=p - 1))  # (B, T): each frame's canonical phoneme id
    target_lp = lp.gather(2, own[..., None]).squeeze(-1)
    others = lp.scatter(2, own[..., None], NEG_INF)
    others[..., blank] = NEG_INF
    competitor = others.max(dim=-1).values.clamp(min=-1e4)
    stacked = torch.stack([target_lp, competitor], dim=-1)  # (B, T, 2)
    means = segment_mean(stacked, segments, p)  # (B, P, 2)
    return torch.cat([means, means[..., :1] - means[..., 1:]], dim=-1)
