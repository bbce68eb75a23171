"""CTC greedy decoding and CTC prefix scoring for joint CTC/decoder beam search.

Prefix scoring follows the hybrid CTC/attention recursions (Watanabe et al., 2017). For a prefix g
and a candidate label c, the forward variables of h = g + c,

    r_n(h)[t] = (r_n(h)[t-1] + phi[t-1]) * x_t(c),   r_b(h)[t] = (r_b(h)[t-1] + r_n(h)[t-1]) * x_t(blank),

are first-order linear recurrences, so in log space each is a ``logcumsumexp`` over time: one
vectorised op for all hypotheses, candidates and frames instead of a Python loop per frame.
Scores are kept in float64: cumulative log-probabilities reach the thousands.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

NEG_INF = float("-inf")
_MASKED = -1e10
"""Log-probability of an impossible emission: finite, so cumulative sums never meet -inf - -inf."""


def ctc_greedy(logprobs: Tensor, lengths: Tensor, blank: int = 0) -> list[list[int]]:
    """Best path, repeats collapsed, blanks removed: [B, T, V] -> token ids per item."""
    best = logprobs.argmax(-1).cpu()
    out = []
    for i in range(best.shape[0]):
        path = best[i, : int(lengths[i])]
        keep = torch.ones_like(path, dtype=torch.bool)
        keep[1:] = path[1:] != path[:-1]
        out.append([int(t) for t in path[keep & (path != blank)]])
    return out


def _log_linear_recurrence(log_a: Tensor, log_b: Tensor) -> Tensor:
    """y[t] = (y[t-1] + b[t]) * a[t] with y[-1] = 0, in log space, along the last dim."""
    cum_a = torch.cumsum(log_a, dim=-1)
    return cum_a + torch.logcumsumexp(log_b - cum_a + log_a, dim=-1)


@dataclass
class CTCPrefixState:
    """Forward variables of each live hypothesis: r_n, r_b [H, T] and its prefix score psi [H]."""

    r_n: Tensor
    r_b: Tensor
    psi: Tensor
    last: Tensor  # last label of each hypothesis (-1 for the empty prefix)

    def select(self, index: Tensor) -> CTCPrefixState:
        return CTCPrefixState(self.r_n[index], self.r_b[index], self.psi[index], self.last[index])


class CTCPrefixScorer:
    """Prefix scores of candidate extensions for a batch of hypotheses over fixed CTC posteriors."""

    def __init__(self, logprobs: Tensor, lengths: Tensor, blank: int, eos: int) -> None:
        """logprobs [H, T, V] (one row per hypothesis, already expanded for beams), lengths [H]."""
        x = logprobs.double().clone()
        steps = torch.arange(x.shape[1], device=x.device)
        beyond = steps[None, :] >= lengths[:, None]
        # Past the end no label can be emitted and blank costs nothing, so r_b carries the total.
        x[beyond] = _MASKED
        x[..., blank] = x[..., blank].masked_fill(beyond, 0.0)
        self.x = x.transpose(1, 2).contiguous()  # [H, V, T]
        self.blank = blank
        self.eos = eos

    def initial_state(self) -> CTCPrefixState:
        h, _, t = self.x.shape
        r_b = torch.cumsum(self.x[:, self.blank], dim=-1)
        r_n = torch.full((h, t), NEG_INF, dtype=torch.float64, device=self.x.device)
        return CTCPrefixState(
            r_n,
            r_b,
            torch.zeros(h, dtype=torch.float64, device=self.x.device),
            torch.full((h,), -1, dtype=torch.long, device=self.x.device),
        )

    def score(self, state: CTCPrefixState, candidates: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Prefix scores psi(g + c) [H, K] and forward variables [H, K, T] for candidates [H, K].

        For c == eos the score is the probability of the whole utterance being exactly g.
        """
        h, k = candidates.shape
        x_c = torch.gather(self.x, 1, candidates.clamp_min(0)[:, :, None].expand(h, k, self.x.shape[2]))
        # phi[t] = r_b(g)[t] + [c != last(g)] r_n(g)[t]; the empty prefix contributes "start" at t = 0.
        same = candidates == state.last[:, None]
        phi = torch.where(
            same[:, :, None],
            state.r_b[:, None, :],
            torch.logaddexp(state.r_b, state.r_n)[:, None, :],
        )
        start = (state.last < 0)[:, None, None].expand(h, k, 1).double()
        start = torch.where(start > 0, 0.0, NEG_INF)
        phi_prev = torch.cat([start, phi[..., :-1]], dim=-1)  # phi[t-1], with the t=0 start term
        r_n = _log_linear_recurrence(x_c, phi_prev)
        x_blank = self.x[:, self.blank][:, None, :].expand(h, k, -1)
        r_b = _log_linear_recurrence(
            x_blank, torch.cat([torch.full_like(r_n[..., :1], NEG_INF), r_n[..., :-1]], -1)
        )
        psi = torch.logsumexp(phi_prev + x_c, dim=-1)
        is_eos = candidates == self.eos
        if is_eos.any():
            final = torch.logaddexp(state.r_n[:, -1], state.r_b[:, -1])[:, None].expand(h, k)
            psi = torch.where(is_eos, final, psi)
        return psi, r_n, r_b

    @staticmethod
    def advance(
        state: CTCPrefixState,
        hyp_index: Tensor,
        cand_index: Tensor,
        candidates: Tensor,
        psi: Tensor,
        r_n: Tensor,
        r_b: Tensor,
    ) -> CTCPrefixState:
        """State of the chosen extensions (hypothesis ``hyp_index`` extended by its ``cand_index``-th candidate)."""
        return CTCPrefixState(
            r_n[hyp_index, cand_index],
            r_b[hyp_index, cand_index],
            psi[hyp_index, cand_index],
            candidates[hyp_index, cand_index],
        )
