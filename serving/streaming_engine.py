"""Streaming recognition and decoder sessions on slot pools: the torch side of the stateful models.

Everything a sequence carries between requests lives in preallocated rows of a pool, addressed by
slot (``mambaserve.serving.state`` maps correlation IDs to slots and resets/releases these rows):

- :class:`EncoderStreams` (audio chunk -> log-mel -> causal encoder -> CTC partial + decoder prefix)
  keeps per slot: the samples that do not complete a window (< win_length), feature frames that do
  not fill a stack (< subsampling), encoder frames that do not fill a bridge stride (< stride; all
  frames for a non-causal bridge), the encoder's Mamba state, and the CTC greedy path so far.
  Fed any chunking of an utterance it produces exactly the offline frames, prefix and CTC path.
- :class:`DecoderPool` (decoder states in a pool) advances rows over prefix vectors or tokens
  (right-padded batches continue exactly from each row's state) and generates in place. With the
  PyTorch step each token updates the pool rows through the kernels' ``state_batch_indices``
  (``MambaStack.step(slots=)``; what GPU instances run); with a compiled step (``step=``, the ONNX
  Runtime step CPU instances run) the generating rows are gathered once into a contiguous batch,
  stepped there, and each row's state is written back to its slot when the row finishes.

Batches mix sequences at different points with different chunk lengths: every call right-pads and
masks, so a row's result does not depend on what else is in the batch -- bit for bit: CPU matrix
products give a row the same bits whatever the other rows, except that fewer than MIN_ROWS rows take
another code path (gemv), so every product here gets at least MIN_ROWS rows (zero rows added, their
outputs dropped; decode steps add pad slots that the kernels skip). ONNX Runtime's step needs no
padding (``OnnxDecodeStep.min_rows`` is 1: its products use pre-packed weights, one kernel for any
batch; the tests check the bits).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from mambaserve.model.features import num_frames
from mambaserve.model.mamba import MambaState
from mambaserve.model.network import EncoderOutput
from mambaserve.model.search import beam_search, max_decode_lengths
from torch import Tensor

GREEDY, BEAM, SAMPLE = "greedy", "beam", "sample"
CTC_LM = "ctc_lm"
"""Not a generation method: the compiled lexicon + LM search over the CTC log-probs (model.lexicon_search);
the models that offer it answer its whole text at once and never step the decoder for it."""
MIN_ROWS = 4
"""Fewest rows any matrix product gets (see the module docstring)."""
PAD_SLOT = -1
METHODS = (GREEDY, BEAM, SAMPLE, CTC_LM)


def _pool(config, capacity: int, device, dtype=torch.float32) -> MambaState:
    """Uninitialised on purpose: rows are zeroed when a sequence starts, so a large pool costs address
    space only, and memory becomes resident as sequences touch their rows."""
    layers, d, k, n = config.n_layers, config.d_inner, config.d_conv - 1, config.d_state
    return MambaState(
        torch.empty(layers, capacity, d, k, device=device, dtype=dtype),
        torch.empty(layers, capacity, d, n, device=device, dtype=dtype),
    )


def _index(slots: Sequence[int], device) -> Tensor:
    return torch.as_tensor(list(slots), dtype=torch.long, device=device)


def _at_least(x: Tensor, rows: int = MIN_ROWS) -> Tensor:
    """x [n, ...] with zero rows appended up to `rows` (callers keep the first n outputs)."""
    if x.shape[0] >= rows:
        return x
    return torch.cat([x, x.new_zeros(rows - x.shape[0], *x.shape[1:])])


def _gather(state: MambaState, index: Tensor, rows: int) -> MambaState:
    """Rows `index` of a pool as a float32 batch of `rows` rows (extra rows are zero states)."""
    conv, ssm = state.conv[:, index].float(), state.ssm[:, index].float()
    extra = rows - index.shape[0]
    if extra > 0:
        conv = torch.cat([conv, conv.new_zeros(conv.shape[0], extra, *conv.shape[2:])], 1)
        ssm = torch.cat([ssm, ssm.new_zeros(ssm.shape[0], extra, *ssm.shape[2:])], 1)
    return MambaState(conv, ssm)


def _scatter(pool: MambaState, index: Tensor, state: MambaState) -> None:
    n = index.shape[0]
    pool.conv[:, index] = state.conv[:, :n].to(pool.conv.dtype)
    pool.ssm[:, index] = state.ssm[:, :n].to(pool.ssm.dtype)


def _extra_rows(batch: int, length: int) -> int:
    """Zero rows to add so that a [batch, length, ...] product has at least MIN_ROWS rows."""
    return max(0, -(-MIN_ROWS // max(1, length)) - batch)


def _right_pad(rows: Sequence[Tensor], width: int | None = None) -> tuple[Tensor, Tensor]:
    """[L_i, ...] rows -> [B', L, ...] zero right padding and a mask [B', L] (1 = real); B' >= B rows
    so that B' * L >= MIN_ROWS (the extra rows are all padding)."""
    longest = width if width is not None else max(r.shape[0] for r in rows)
    first = rows[0]
    batch = len(rows) + _extra_rows(len(rows), longest)
    out = first.new_zeros((batch, longest, *first.shape[1:]))
    mask = first.new_zeros((batch, longest), dtype=torch.float32)
    for i, r in enumerate(rows):
        out[i, : r.shape[0]] = r
        mask[i, : r.shape[0]] = 1
    return out, mask


# ---------------------------------------------------------------------------------------------
# Encoder side
# ---------------------------------------------------------------------------------------------
@dataclass
class EncoderChunk:
    """What one chunk of one sequence produced."""

    prefix: Tensor  # [P, d_dec] new decoder prefix vectors (P may be 0)
    ctc_logprobs: Tensor  # [T', vocab] CTC log-probs of the new encoder frames (T' may be 0)
    ids: list[int]  # the CTC greedy path of the whole utterance so far
    frames_total: int  # encoder frames of the whole utterance so far (what max decode length uses)


@dataclass
class _EncoderSlot:
    samples: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    feats: Tensor | None = None  # [< subsampling, n_mels]
    frames: Tensor | None = None  # [< stride, d_enc], or every frame for a non-causal bridge
    ids: list[int] = field(default_factory=list)
    last: int = -1  # last argmax of the CTC path (repeats collapse across chunk borders)
    frames_total: int = 0


class EncoderStreams:
    """Streaming front end + encoder + CTC + bridge of a SpeechMamba, ``capacity`` sequences."""

    def __init__(self, model, capacity: int, device: str | torch.device = "cpu"):
        self.model = model
        self.device = torch.device(device)
        c = model.config
        self.feature_config = c.features
        self.subsampling = c.encoder.subsampling
        self.blank = c.blank_id
        self.causal_bridge = c.bridge.kind == "stride"
        self.stride = c.bridge.stride if self.causal_bridge else 1
        self.capacity = capacity
        self.state = _pool(c.encoder.mamba, capacity, self.device)
        self.slots = [_EncoderSlot() for _ in range(capacity)]
        self.n_mels = c.features.n_mels
        self.d_enc = c.encoder.mamba.d_model

    def state_nbytes(self) -> int:
        """Fixed bytes of encoder state per sequence (the carried leftovers add < 1 window of audio)."""
        return self.state.nbytes() // self.capacity

    def reset(self, slot: int) -> None:
        self.state.conv[:, slot].zero_()
        self.state.ssm[:, slot].zero_()
        self.slots[slot] = _EncoderSlot()

    def release(self, slot: int) -> None:
        self.slots[slot] = _EncoderSlot()  # drop the Python-side memory; rows are zeroed at START

    @torch.no_grad()
    def process(
        self, slots: Sequence[int], chunks: Sequence[np.ndarray], final: Sequence[bool]
    ) -> list[EncoderChunk]:
        """One chunk (1-D float32 samples, possibly empty) per slot; slots must be distinct."""
        fc = self.feature_config
        s = self.subsampling
        extractor = self.model.features
        n = len(slots)

        # 1. samples -> log-mel frames, carrying what does not complete a window.
        audio, n_new = [], []
        for slot, chunk in zip(slots, chunks):
            st = self.slots[slot]
            samples = np.concatenate([st.samples, np.asarray(chunk, dtype=np.float32).reshape(-1)])
            frames = num_frames(len(samples), fc)
            n_new.append(frames)
            if frames:
                audio.append(samples[: (frames - 1) * fc.hop_length + fc.win_length])
                st.samples = samples[frames * fc.hop_length :].copy()
            else:
                audio.append(None)
                st.samples = samples
        new_feats: list[Tensor] = [torch.zeros(0, self.n_mels, device=self.device)] * n
        rows = [i for i in range(n) if n_new[i]]
        if rows:
            longest = max(len(audio[i]) for i in rows)
            batch = torch.zeros(len(rows) + _extra_rows(len(rows), num_frames(longest, fc)), longest)
            for j, i in enumerate(rows):
                batch[j, : len(audio[i])] = torch.from_numpy(audio[i])
            mel = (extractor.log_mel(batch.to(self.device)) - extractor.mean) / extractor.std
            for j, i in enumerate(rows):
                new_feats[i] = mel[j, : n_new[i]]

        # 2. feature frames -> stacks of `subsampling` (the remainder waits for the next chunk).
        stacks, n_out = [], []
        for i, slot in enumerate(slots):
            st = self.slots[slot]
            feats = new_feats[i] if st.feats is None else torch.cat([st.feats, new_feats[i]])
            k = feats.shape[0] // s
            stacks.append(feats[: k * s])
            st.feats = feats[k * s :]
            n_out.append(k)

        # 3. the encoder, masked so that each row continues from its own state.
        new_frames: list[Tensor] = [torch.zeros(0, self.d_enc, device=self.device)] * n
        rows = [i for i in range(n) if n_out[i]]
        if rows:
            index = _index([slots[i] for i in rows], self.device)
            longest = max(n_out[i] for i in rows)
            width = len(rows) + _extra_rows(len(rows), longest)
            feats = torch.zeros(width, longest * s, self.n_mels, device=self.device)
            mask = torch.zeros(width, longest, device=self.device)
            for j, i in enumerate(rows):
                feats[j, : n_out[i] * s] = stacks[i]
                mask[j, : n_out[i]] = 1
            state = _gather(self.state, index, width)
            frames, _, state = self.model.encoder(feats, mask.sum(1).long() * s, state, mask=mask)
            _scatter(self.state, index, state)
            for j, i in enumerate(rows):
                new_frames[i] = frames[j, : n_out[i]]

        # 4. CTC log-probs of the new frames (one batched head), greedy path across chunk borders.
        ctc = [torch.zeros(0, self.model.ctc_head.out_features, device=self.device)] * n
        if rows:
            flat = torch.cat([new_frames[i] for i in rows])
            logprobs = F.log_softmax(self.model.ctc_head(_at_least(flat)).float(), dim=-1)[: flat.shape[0]]
            best = logprobs.argmax(-1).tolist()
            offset = 0
            for i in rows:
                ctc[i] = logprobs[offset : offset + n_out[i]]
                st = self.slots[slots[i]]
                for token in best[offset : offset + n_out[i]]:
                    if token != st.last and token != self.blank:
                        st.ids.append(int(token))
                    st.last = token
                offset += n_out[i]

        # 5. the bridge: `stride` frames per prefix vector (a non-causal bridge runs at the end).
        prefixes = self._bridge(slots, new_frames, final)
        out = []
        for i, slot in enumerate(slots):
            st = self.slots[slot]
            st.frames_total += n_out[i]
            out.append(EncoderChunk(prefixes[i], ctc[i], list(st.ids), st.frames_total))
        return out

    def _bridge(self, slots: Sequence[int], new_frames: list[Tensor], final: Sequence[bool]) -> list[Tensor]:
        d_dec = self.model.config.decoder.mamba.d_model
        empty = torch.zeros(0, d_dec, device=self.device)
        out = [empty] * len(slots)
        if not self.causal_bridge:
            for i, slot in enumerate(slots):
                st = self.slots[slot]
                st.frames = new_frames[i] if st.frames is None else torch.cat([st.frames, new_frames[i]])
                if final[i] and st.frames.shape[0]:
                    n = st.frames.shape[0]
                    prefix, lengths = self.model.bridge(
                        st.frames[None], torch.tensor([n], device=self.device)
                    )
                    out[i] = prefix[0, : int(lengths[0])]
            return out
        # Concatenating whole strides of every row along time keeps the pairs intact: one call.
        pieces, counts = [], []
        for i, slot in enumerate(slots):
            st = self.slots[slot]
            frames = new_frames[i] if st.frames is None else torch.cat([st.frames, new_frames[i]])
            k = frames.shape[0] // self.stride
            pieces.append(frames[: k * self.stride])
            st.frames = frames[k * self.stride :]
            counts.append(k)
        if sum(counts):
            flat = _at_least(torch.cat(pieces), MIN_ROWS * self.stride)[None]
            prefix, _ = self.model.bridge(flat, torch.tensor([flat.shape[1]], device=self.device))
            offset = 0
            for i, k in enumerate(counts):
                out[i] = prefix[0, offset : offset + k]
                offset += k
        return out


# ---------------------------------------------------------------------------------------------
# Decoder side
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sampling:
    """How one request generates. ``method``: greedy | beam | sample."""

    method: str = GREEDY
    max_tokens: int | None = None  # None: the budget from the audio length
    min_tokens: int = 0  # end-of-sequence is suppressed before this many tokens
    temperature: float = 1.0
    top_k: int = 0  # 0: the whole vocabulary
    seed: int = 0
    beam_size: int = 4
    ctc_weight: float = 0.0
    length_penalty: float = 0.0


TokenCallback = Callable[[int, int], None]
"""on_token(row, token id): called as each token is chosen (before the next step runs)."""


class DecoderPool:
    """Decoder Mamba states of ``capacity`` rows; feed and generate address rows by slot.

    ``step``: None (the PyTorch step, straight into the pool rows: the GPU path), or a compiled
    decode step with the contract of ``decoder.step`` (``OnnxDecodeStep``) used for every generated
    token; prefix and prompt feeds stay in PyTorch (masked scans over several positions at once)."""

    def __init__(
        self,
        decoder,
        capacity: int,
        device: str | torch.device = "cpu",
        dtype=torch.float32,
        step: Callable[[Tensor, MambaState], Tensor] | None = None,
    ):
        self.decoder = decoder
        self.device = torch.device(device)
        self.capacity = capacity
        self.state = _pool(decoder.config.mamba, capacity, self.device, dtype)
        self.step = step

    def state_nbytes(self) -> int:
        return self.state.nbytes() // self.capacity

    def reset(self, slots: int | Sequence[int]) -> None:
        """Zero the rows of ``slots`` (one slot or several): a sequence starts there."""
        index = _index([slots] if isinstance(slots, int) else slots, self.device)
        self.state.conv[:, index] = 0
        self.state.ssm[:, index] = 0

    def release(self, slot: int) -> None:
        """Nothing to drop: the rows are preallocated and zeroed when the next sequence starts."""

    def copy_to(self, src: Sequence[int], dest: DecoderPool, dst: Sequence[int]) -> None:
        """dest rows `dst` <- this pool's rows `src` (a session's saved state -> a working row)."""
        s, d = _index(src, self.device), _index(dst, dest.device)
        dest.state.conv[:, d] = self.state.conv[:, s].to(dest.device, dest.state.conv.dtype)
        dest.state.ssm[:, d] = self.state.ssm[:, s].to(dest.device, dest.state.ssm.dtype)

    @torch.no_grad()
    def feed(self, slots: Sequence[int], inputs: Sequence[Tensor]) -> Tensor | None:
        """Advance rows over embedded inputs [L_i, d] (L_i >= 0); returns next-token logits [B, V]
        at each row's last input (None when no row had input; rows without input get zeros)."""
        rows = [i for i, x in enumerate(inputs) if x.shape[0]]
        if not rows:
            return None
        index = _index([slots[i] for i in rows], self.device)
        x, mask = _right_pad([inputs[i].to(self.device, torch.float32) for i in rows])
        hidden, state = self.decoder.mamba(x, _gather(self.state, index, x.shape[0]), mask=mask)
        _scatter(self.state, index, state)
        last = (mask.sum(1).long() - 1).clamp_min(0)
        ends = hidden[torch.arange(x.shape[0], device=self.device), last]
        logits_rows = self.decoder.head(_at_least(ends))[: len(rows)]
        logits = logits_rows.new_zeros(len(inputs), logits_rows.shape[-1])
        logits[torch.tensor(rows, device=self.device)] = logits_rows
        return logits

    def feed_tokens(self, slots: Sequence[int], ids: Sequence[Sequence[int]]) -> Tensor | None:
        embed = self.decoder.embed
        return self.feed(
            slots, [embed(torch.tensor(list(t), dtype=torch.long, device=self.device)) for t in ids]
        )

    @torch.no_grad()
    def generate(
        self,
        slots: Sequence[int],
        logits: Tensor,
        settings: Sequence[Sampling],
        max_lengths: Sequence[int],
        eos_id: int,
        on_token: TokenCallback | None = None,
        should_stop: Callable[[int], bool] | None = None,
    ) -> list[list[int]]:
        """Greedy / sampled decoding of rows in place (the rows' states advance), one batched step per
        token for every row still running. Same stopping rule as the offline greedy search: a row stops
        at end-of-sequence or after its budget, neither included."""
        n = len(slots)
        out: list[list[int]] = [[] for _ in range(n)]
        budgets = [
            min(m, s.max_tokens) if s.max_tokens is not None else m for m, s in zip(max_lengths, settings)
        ]
        generators = [self._generator(s) for s in settings]
        active = list(range(n))
        work: MambaState | None = None  # compiled step: the active rows' states, contiguous (+ pad rows)
        min_rows = getattr(self.step, "min_rows", MIN_ROWS)
        while active:
            tokens = self._choose(
                logits,
                [settings[r] for r in active],
                [generators[r] for r in active],
                [len(out[r]) for r in active],
                eos_id,
            )
            keep = []
            for j, r in enumerate(active):
                token = tokens[j]
                if (
                    token == eos_id
                    or len(out[r]) >= budgets[r]
                    or (should_stop is not None and should_stop(r))
                ):
                    continue
                out[r].append(token)
                if on_token is not None:
                    on_token(r, token)
                keep.append(j)
            if work is not None and len(keep) < len(active):  # finished rows: their states go home
                kept = set(keep)
                done = [j for j in range(len(active)) if j not in kept]
                _scatter(
                    self.state,
                    _index([slots[active[j]] for j in done], self.device),
                    work.select(_index(done, self.device)),
                )
                if keep:
                    work = _gather(work, _index(keep, self.device), max(len(keep), min_rows))
            if not keep:
                break
            active = [active[j] for j in keep]
            if self.step is None:
                pads = [PAD_SLOT] * max(0, MIN_ROWS - len(active))  # pad slots: the kernels skip them
                index = _index([slots[r] for r in active] + pads, self.device)
                token_t = torch.tensor(
                    [out[r][-1] for r in active] + [0] * len(pads), dtype=torch.long, device=self.device
                )
                x = self.decoder.embed(token_t)
                logits = self.decoder.head(self.decoder.mamba.step(x, self.state, index))[: len(active)]
                continue
            if work is None:
                work = _gather(
                    self.state, _index([slots[r] for r in active], self.device), max(len(active), min_rows)
                )
            pads = [0] * (work.batch_size - len(active))
            token_t = torch.tensor([out[r][-1] for r in active] + pads, dtype=torch.long, device=self.device)
            logits = self.step(token_t, work)[: len(active)]
        return out

    @staticmethod
    def _generator(s: Sampling) -> torch.Generator | None:
        if s.method != SAMPLE:
            return None
        g = torch.Generator()
        g.manual_seed(int(s.seed))
        return g

    @staticmethod
    def _choose(logits: Tensor, settings, generators, lengths, eos_id: int) -> list[int]:
        logits = logits.float().cpu()
        for j, (s, n) in enumerate(zip(settings, lengths)):
            if n < s.min_tokens:
                logits[j, eos_id] = float("-inf")
        tokens = logits.argmax(-1).tolist()
        for j, (s, g) in enumerate(zip(settings, generators)):
            if s.method != SAMPLE:
                continue
            row = logits[j] / max(s.temperature, 1e-5)
            if 0 < s.top_k < row.shape[0]:
                kth = torch.topk(row, s.top_k).values[-1]
                row = row.masked_fill(row < kth, float("-inf"))
            probs = torch.softmax(row.double(), -1)
            tokens[j] = int(torch.multinomial(probs, 1, generator=g))
        return tokens

    @torch.no_grad()
    def beam(
        self,
        slots: Sequence[int],
        logits: Tensor,
        settings: Sequence[Sampling],
        max_lengths: Sequence[int],
        eos_id: int,
        blank_id: int,
        ctc: Sequence[Tensor] | None = None,
    ) -> list[list[int]]:
        """Beam search from the rows' current states (rows are left unchanged): the offline
        `beam_search`, started from (logits, state) instead of a prefill."""

        results = []
        for i, slot in enumerate(slots):  # one item at a time: beam sizes and CTC weights may differ
            s = settings[i]
            index = _index([slot], self.device)
            state = MambaState(self.state.conv[:, index].float(), self.state.ssm[:, index].float())
            enc = None
            if s.ctc_weight > 0 and ctc is not None and ctc[i] is not None:
                c = ctc[i].to(self.device)
                enc = EncoderOutput(None, None, c[None], torch.tensor([c.shape[0]], device=self.device))
            budget = min(max_lengths[i], s.max_tokens) if s.max_tokens is not None else max_lengths[i]
            results.extend(
                beam_search(
                    self.decoder,
                    enc,
                    [[]],
                    [budget],
                    eos_id,
                    blank_id,
                    beam_size=s.beam_size,
                    ctc_weight=s.ctc_weight if enc is not None else 0.0,
                    length_penalty=s.length_penalty,
                    start=(logits[i : i + 1], state),
                    step=self.step,
                )
            )
        return results


def max_decode_length(frames_total: int, config) -> int:
    """The offline generation budget for an utterance of `frames_total` encoder frames."""

    f = config.features
    frame_seconds = f.hop_length * config.encoder.subsampling / f.sample_rate
    d = config.decoding
    return max_decode_lengths(
        torch.tensor([frames_total]), frame_seconds, d.max_tokens_per_second, d.min_tokens
    )[0]
