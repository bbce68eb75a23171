"""Greedy and beam search over the Mamba decoder, batched, with optional joint CTC scoring.

Only the fixed-size decoder state travels from step to step (rows are reordered with
``MambaState.select``), so the work per generated token does not depend on what came before.

``step``: what advances the state by one token -- ``decoder.step`` (eager PyTorch; the Triton kernels
on CUDA) by default, or any callable with its contract, e.g. the ONNX Runtime step that CPU
serving uses (``mambaserve.model.onnx_step.OnnxDecodeStep``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from mambaserve.model.ctc import CTCPrefixScorer
from mambaserve.model.decoder import TranscriptDecoder
from mambaserve.model.mamba import MambaState
from mambaserve.model.network import EncoderOutput
from torch import Tensor

DecodeStep = Callable[[Tensor, MambaState], Tensor]
"""step(tokens [B], state) -> next-token logits [B, V], ``state`` updated in place."""


def greedy_search(
    decoder: TranscriptDecoder,
    enc: EncoderOutput | None,
    prompts: Sequence[Sequence[int]],
    max_lengths: Sequence[int],
    eos_id: int,
    start: tuple[Tensor, MambaState] | None = None,
    step: DecodeStep | None = None,
) -> list[list[int]]:
    """Argmax decoding; finished rows leave the batch so the rest step faster.

    ``start``: (next-token logits, state) after ``[prefix][prompt][BOS]`` computed elsewhere (a
    streaming server feeds the prefix as audio arrives); then ``enc`` is not used for the prefill.
    """
    advance = step or decoder.step
    logits, state = start if start is not None else decoder.prefill(enc.prefix, enc.prefix_lengths, prompts)
    out: list[list[int]] = [[] for _ in prompts]
    active = torch.arange(len(prompts))
    while True:
        tokens = logits.argmax(-1)
        keep = []
        for row, item in enumerate(active.tolist()):
            token = int(tokens[row])
            if token == eos_id or len(out[item]) >= max_lengths[item]:
                continue
            out[item].append(token)
            keep.append(row)
        if not keep:
            return out
        if len(keep) < len(active):
            index = torch.tensor(keep)
            active, tokens, state = active[index], tokens[index], state.select(index.to(tokens.device))
        logits = advance(tokens, state)


def beam_search(
    decoder: TranscriptDecoder,
    enc: EncoderOutput,
    prompts: Sequence[Sequence[int]],
    max_lengths: Sequence[int],
    eos_id: int,
    blank_id: int,
    beam_size: int = 4,
    ctc_weight: float = 0.0,
    length_penalty: float = 0.0,
    start: tuple[Tensor, MambaState] | None = None,
    step: DecodeStep | None = None,
) -> list[list[int]]:
    """Beam search; with ``ctc_weight`` > 0 each extension is also scored by CTC prefix probability.

    ``start`` as in :func:`greedy_search` (``enc`` then only needs the CTC fields, and only when
    ``ctc_weight`` > 0).
    """
    advance = step or decoder.step
    batch, k = len(prompts), beam_size
    logits, state = start if start is not None else decoder.prefill(enc.prefix, enc.prefix_lengths, prompts)
    device = logits.device
    rows = torch.arange(batch, device=device).repeat_interleave(k)
    state = state.select(rows)
    logp = torch.log_softmax(logits.float(), -1)[rows]
    scores = torch.full((batch, k), float("-inf"), device=device)
    scores[:, 0] = 0.0
    history: list[list[int]] = [[] for _ in range(batch * k)]
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(batch)]
    scorer = ctc_state = None
    if ctc_weight > 0:
        scorer = CTCPrefixScorer(enc.ctc_logprobs[rows], enc.ctc_lengths[rows], blank_id, eos_id)
        ctc_state = scorer.initial_state()
    n_cand = min(logp.shape[-1], 2 * k)
    done = [False] * batch
    for step in range(max(max_lengths) + 1):
        cand_logp, cand = logp.topk(n_cand, dim=-1)  # [B*k, C]
        cand_score = cand_logp.double()
        if scorer is not None:
            psi, r_n, r_b = scorer.score(ctc_state, cand)
            cand_score = (1 - ctc_weight) * cand_score + ctc_weight * (psi - ctc_state.psi[:, None])
        total = (scores.reshape(-1, 1).double() + cand_score).reshape(batch, k * n_cand)
        best_scores, best = total.topk(min(2 * k, total.shape[1]), dim=-1)
        next_rows, next_cands, next_scores = [], [], []
        for b in range(batch):
            alive = 0
            for score, flat in zip(best_scores[b].tolist(), best[b].tolist()):
                if done[b] or alive == k:
                    break
                beam, c = divmod(flat, n_cand)
                row = b * k + beam
                token = int(cand[row, c])
                if score == float("-inf"):
                    continue
                if token == eos_id or step >= max_lengths[b]:
                    length = max(1, len(history[row]))
                    finished[b].append((score / length**length_penalty, history[row]))
                    continue
                next_rows.append(row)
                next_cands.append(c)
                next_scores.append(score)
                alive += 1
            if len(finished[b]) >= k or alive == 0:
                done[b] = True
            # Pad dead beams so every item keeps k rows.
            while alive < k:
                next_rows.append(b * k)
                next_cands.append(0)
                next_scores.append(float("-inf"))
                alive += 1
        if all(done):
            break
        row_index = torch.tensor(next_rows, device=device)
        cand_index = torch.tensor(next_cands, device=device)
        tokens = cand[row_index, cand_index]
        history = [[*history[r], int(t)] for r, t in zip(next_rows, tokens.tolist())]
        scores = torch.tensor(next_scores, device=device).reshape(batch, k)
        for b in range(batch):
            if done[b]:
                scores[b] = float("-inf")
        if scorer is not None:
            ctc_state = CTCPrefixScorer.advance(ctc_state, row_index, cand_index, cand, psi, r_n, r_b)
        state = state.select(row_index)
        logp = torch.log_softmax(advance(tokens, state).float(), -1)
    results = []
    for b in range(batch):
        if finished[b]:
            results.append(max(finished[b], key=lambda x: x[0])[1])
        else:
            results.append(history[b * k])
    return results


def max_decode_lengths(
    ctc_lengths: Tensor, frame_seconds: float, tokens_per_second: float, min_tokens: int
) -> list[int]:
    """A generation budget proportional to the audio, so a confused decoder cannot loop forever."""
    seconds = ctc_lengths.double() * frame_seconds
    return [int(x) + min_tokens for x in torch.ceil(seconds * tokens_per_second).tolist()]
