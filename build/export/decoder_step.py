"""The decoder's decode step -> ONNX (dynamic batch), and the parity checks that gate the build.

CPU instances of the decoding python models run every generated token through this graph
(``mambaserve.model.onnx_step.OnnxDecodeStep``), so it must compute what the PyTorch step computes:

1. one step at several batch sizes other than the trace batch, from random (non-zero) states:
   logits and both output states within ``RTOL`` of ``TranscriptDecoder.step`` -- which also proves
   that the graph returns the *updated* states, not its inputs (checked and named separately);
2. a greedy rollout of ``ROLLOUT_STEPS`` tokens from random prefixes (random audio-prefix vectors and
   prompt tokens through ``prefill``), once with the PyTorch step and once with the graph, through
   the real ``greedy_search``: the same tokens and logits within ``ROLLOUT_RTOL`` along the way. A
   row may part only where PyTorch's top two logits are within the error bound (a tie that float
   noise may break either way; counted and reported), and is compared up to there.

Any failure raises ParityError and the build stops.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from mambaserve.build.errors import ParityError
from mambaserve.build.export.graph import dynamo_export, relative_error
from mambaserve.contract import spec
from mambaserve.model.mamba import MambaState
from mambaserve.model.onnx_step import OnnxDecodeStep
from mambaserve.model.search import greedy_search
from torch import Tensor, nn

TRACE_BATCH = 3
PARITY_BATCHES = (1, 2, 5, 16, 64)
"""Batch sizes at which one step must match PyTorch (all differ from the trace batch)."""
RTOL = 1e-5
ROLLOUT_BATCH = 4
ROLLOUT_STEPS = 24
ROLLOUT_RTOL = 1e-4
"""Logits along a 24-token rollout may drift a little further than one step (errors accumulate in
the state); the tokens must still be the same."""


def _state(decoder: nn.Module, batch: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    c = decoder.config.mamba
    conv = torch.randn(c.n_layers, batch, c.d_inner, c.d_conv - 1, generator=generator)
    ssm = torch.randn(c.n_layers, batch, c.d_inner, c.d_state, generator=generator)
    return conv, ssm


def export_decoder_step(module: nn.Module, path: str | Path) -> Path:
    """Dynamo export (opset 18) of a DecoderStepForExport with a dynamic batch; one .onnx file."""
    path = Path(path)
    decoder = module.decoder
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, decoder.embed.num_embeddings, (TRACE_BATCH,), generator=g)
    conv, ssm = _state(decoder, TRACE_BATCH, g)
    batch = torch.export.Dim("batch")
    return dynamo_export(
        module,
        (tokens, conv, ssm),
        path,
        input_names=[t.name for t in spec.DECODER_STEP_INPUTS],
        output_names=[t.name for t in spec.DECODER_STEP_OUTPUTS],
        dynamic_shapes={"tokens": {0: batch}, "conv_state": {1: batch}, "ssm_state": {1: batch}},
        what="the decoder step",
    )


@dataclass(frozen=True)
class StepParity:
    batch: int
    errors: dict[str, float]  # output name -> relative error

    @property
    def worst(self) -> float:
        return max(self.errors.values())


@dataclass(frozen=True)
class RolloutParity:
    batch: int
    steps: int
    worst_logits: float
    same_tokens: bool
    ties: int  # rows whose rollouts parted at a tie of the PyTorch logits (not an error)


def check_step_parity(
    path: str | Path,
    decoder: nn.Module,
    *,
    batches: Sequence[int] = PARITY_BATCHES,
    rtol: float = RTOL,
    progress: Callable[[StepParity], None] | None = None,
) -> list[StepParity]:
    """One step of the graph vs ``decoder.step`` at ``batches`` (raise ParityError on a mismatch)."""

    if TRACE_BATCH in batches or len(set(batches)) < 2:
        raise ValueError(f"parity needs at least two batch sizes other than the trace batch {TRACE_BATCH}")
    step = OnnxDecodeStep(path)
    decoder = decoder.eval()
    names = [t.name for t in spec.DECODER_STEP_OUTPUTS]
    results = []
    for batch in batches:
        g = torch.Generator().manual_seed(1000 + batch)
        tokens = torch.randint(0, decoder.embed.num_embeddings, (batch,), generator=g)
        conv, ssm = _state(decoder, batch, g)
        expected_state = MambaState(conv.clone(), ssm.clone())
        with torch.inference_mode():
            expected_logits = decoder.step(tokens, expected_state)
        out = step.zeros(batch)
        try:
            logits = step.advance(tokens, MambaState(conv, ssm), out)
        except Exception as e:  # a graph that cannot run at another batch froze its trace batch
            raise ParityError(
                f"decoder step parity failed: the graph cannot run at batch={batch} (traced at {TRACE_BATCH}): "
                f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
            ) from e
        actual = [logits.numpy(), out.conv.numpy(), out.ssm.numpy()]
        expected = [expected_logits.numpy(), expected_state.conv.numpy(), expected_state.ssm.numpy()]
        for name, a, inp, b in zip(names[1:], actual[1:], (conv.numpy(), ssm.numpy()), expected[1:]):
            if np.array_equal(a, inp) and not np.array_equal(b, inp):
                raise ParityError(
                    f"decoder step parity failed at batch={batch}: {name} is the input state unchanged; "
                    "the exported graph does not return the updated state"
                )
        errors = {name: relative_error(a, b) for name, a, b in zip(names, actual, expected)}
        result = StepParity(batch, errors)
        results.append(result)
        if progress:
            progress(result)
        bad = {k: v for k, v in errors.items() if not v <= rtol}
        if bad:
            detail = ", ".join(f"{k}: {v:.3g}" for k, v in bad.items())
            raise ParityError(
                f"decoder step parity failed at batch={batch}: relative error above {rtol:g} in {detail}"
            )
    return results


def check_rollout_parity(
    path: str | Path,
    decoder: nn.Module,
    *,
    batch: int = ROLLOUT_BATCH,
    steps: int = ROLLOUT_STEPS,
    rtol: float = ROLLOUT_RTOL,
    seed: int = 0,
) -> RolloutParity:
    """Greedy rollouts from random prefixes with the PyTorch step and with the graph (raise ParityError)."""

    step = OnnxDecodeStep(path)
    decoder = decoder.eval()
    d, vocab = decoder.config.mamba.d_model, decoder.embed.num_embeddings
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 12, (batch,), generator=g)
    prefix = torch.randn(batch, int(lengths.max()), d, generator=g)
    prompts = [
        torch.randint(4, vocab, (int(n),), generator=g).tolist()
        for n in torch.randint(0, 5, (batch,), generator=g)
    ]
    with torch.inference_mode():
        start_logits, start = decoder.prefill(prefix, lengths, prompts)
    logged: dict[str, list[Tensor]] = {"torch": [], "onnx": []}

    def logging(name: str, fn):
        def run(tokens: Tensor, state: MambaState) -> Tensor:
            logits = fn(tokens, state)
            logged[name].append(logits.clone())
            return logits

        return run

    budget = [steps] * batch
    with torch.inference_mode():  # eos_id -1: never stop early, every row runs `steps` tokens
        ref = greedy_search(
            decoder,
            None,
            prompts,
            budget,
            -1,
            start=(start_logits, start.clone()),
            step=logging("torch", decoder.step),
        )
        got = greedy_search(
            decoder,
            None,
            prompts,
            budget,
            -1,
            start=(start_logits, start.clone()),
            step=logging("onnx", step),
        )
    # Row r's logits after step k come from the same tokens while k < the row's first divergence.
    parted = [next((k for k, (x, y) in enumerate(zip(r, o)) if x != y), None) for r, o in zip(ref, got)]
    worst = 0.0
    for k, (a, b) in enumerate(zip(logged["onnx"], logged["torch"])):
        rows = [r for r, p in enumerate(parted) if p is None or k < p]
        if rows:
            worst = max(worst, relative_error(a[rows].numpy(), b[rows].numpy()))
        if not worst <= rtol:
            raise ParityError(
                f"decoder step rollout parity failed: logits at step {k + 1} differ by {worst:.3g} (limit {rtol:g})"
            )
    ties = 0
    for row, k in enumerate(parted):
        if k is None:
            continue
        logits = start_logits[row] if k == 0 else logged["torch"][k - 1][row]
        top = torch.topk(logits, 2).values
        margin, scale = float(top[0] - top[1]), float(logits.abs().max())
        if margin > 10 * rtol * scale:
            raise ParityError(
                f"decoder step rollout parity failed: row {row} chose token {got[row][k]} at step {k + 1} where "
                f"PyTorch chose {ref[row][k]} (PyTorch's top-two margin {margin:.3g} is not a tie)"
            )
        ties += 1
    return RolloutParity(batch, steps, worst, ties == 0, ties)
