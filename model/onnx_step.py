"""The decoder's decode step run by ONNX Runtime on the CPU, with the contract of ``decoder.step``.

Eager PyTorch spends a decode step on per-op overhead: ~40 small ops per layer on tensors of a few
kilobytes (1-3 ms per token on a loaded 2-core machine). The same step exported as one ONNX graph
(``DecoderStepForExport``, written by the build as ``decoder_step.onnx``) runs in ONNX Runtime with
fused ops and no Python between them.

``OnnxDecodeStep(path)(tokens, state)`` returns the next-token logits and updates ``state`` in
place, exactly like ``TranscriptDecoder.step(tokens, state)``, so the searches take it through their
``step=`` argument. ``advance`` is the functional form (state in, state out into caller-owned
buffers); the copy back that ``__call__`` adds costs 2 us at batch 1 and 19 us at batch 16 here.

Rows do not interact: ONNX Runtime's MatMul/Gemm kernels use weights pre-packed at load time, so a
row gets the same kernel and the same bits whatever the batch size (1 thread; checked by the tests),
and callers need not pad batches (``min_rows = 1``).

Not thread-safe (one IO binding and scratch buffers per object): one per Triton model instance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from mambaserve.contract import spec
from mambaserve.model.mamba import MambaState
from torch import Tensor


class StateBuffers:
    """Contiguous ``[layers, B, ...]`` states viewed from flat storage that only grows, so a loop whose
    batch shrinks (finished rows leave) reuses memory: large per-step allocations cost page faults."""

    def __init__(self, layers: int, d_inner: int, conv_width: int, d_state: int) -> None:
        self.shape = (layers, d_inner, conv_width, d_state)
        self._conv = torch.empty(0)
        self._ssm = torch.empty(0)

    def view(self, batch: int) -> MambaState:
        layers, d_inner, width, d_state = self.shape
        conv_n, ssm_n = layers * batch * d_inner * width, layers * batch * d_inner * d_state
        if self._conv.numel() < conv_n:
            self._conv = torch.empty(conv_n)
        if self._ssm.numel() < ssm_n:
            self._ssm = torch.empty(ssm_n)
        return MambaState(
            self._conv[:conv_n].view(layers, batch, d_inner, width),
            self._ssm[:ssm_n].view(layers, batch, d_inner, d_state),
        )


class OnnxDecodeStep:
    """``decoder.step`` from an exported decode-step graph (CPU tensors only)."""

    min_rows = 1
    """Fewest rows a batch needs for its rows' results not to depend on the batch (see module doc)."""

    def __init__(self, path: str | Path, threads: int = 1) -> None:
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"decode step graph {path} does not exist (the build writes {spec.DECODER_STEP_FILE})"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(0, int(threads))
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.path = path
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._check_signature()
        conv, ssm = self.session.get_inputs()[1].shape, self.session.get_inputs()[2].shape
        self.layers, self.d_inner, self.conv_width, self.d_state = conv[0], conv[2], conv[3], ssm[3]
        self.vocab_size = self.session.get_outputs()[0].shape[1]
        self._binding = self.session.io_binding()
        self._bound: dict[str, tuple[int, tuple[int, ...]]] = {}
        self._scratch = self.buffers()

    def _check_signature(self) -> None:
        inputs = [(i.name, i.type) for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        want_in = [
            (spec.TOKENS.name, "tensor(int64)"),
            (spec.CONV_STATE.name, "tensor(float)"),
            (spec.SSM_STATE.name, "tensor(float)"),
        ]
        want_out = [t.name for t in spec.DECODER_STEP_OUTPUTS]
        if inputs != want_in or outputs != want_out:
            raise ValueError(
                f"{self.path} is not a decode step graph: inputs {inputs}, outputs {outputs}; expected inputs "
                f"{want_in} and outputs {want_out}"
            )

    def buffers(self) -> StateBuffers:
        """Reusable state storage shaped for this graph (``out`` buffers for ``advance``)."""
        return StateBuffers(self.layers, self.d_inner, self.conv_width, self.d_state)

    def zeros(self, batch: int) -> MambaState:
        """A zero state for ``batch`` rows, laid out as this graph expects."""
        return MambaState(
            torch.zeros(self.layers, batch, self.d_inner, self.conv_width),
            torch.zeros(self.layers, batch, self.d_inner, self.d_state),
        )

    def _check(self, tokens: Tensor, state: MambaState) -> int:
        batch = tokens.shape[0] if tokens.dim() == 1 else -1
        if batch < 1:
            raise ValueError(f"tokens must have shape [batch >= 1], got {list(tokens.shape)}")
        if tokens.device.type != "cpu":
            raise ValueError(f"OnnxDecodeStep runs on the CPU; tokens are on {tokens.device}")
        for name, t, width in (("conv", state.conv, self.conv_width), ("ssm", state.ssm, self.d_state)):
            shape = (self.layers, batch, self.d_inner, width)
            if tuple(t.shape) != shape:
                raise ValueError(
                    f"state.{name} must have shape {list(shape)} [layers, batch, d_inner, ...], got {list(t.shape)}"
                )
            if t.device.type != "cpu":
                raise ValueError(f"OnnxDecodeStep runs on the CPU; state.{name} is on {t.device}")
        return batch

    def _bind(self, name: str, t: Tensor, output: bool = False) -> None:
        """Bind by pointer; a binding that has not changed since the last step is kept (greedy loops
        step the same state tensors every token: 2 of 6 bindings change per step)."""
        key = (t.data_ptr(), tuple(t.shape))
        if self._bound.get(name) == key:
            return
        dtype = np.int64 if t.dtype == torch.int64 else np.float32
        bind = self._binding.bind_output if output else self._binding.bind_input
        bind(name, "cpu", 0, dtype, list(key[1]), key[0])
        self._bound[name] = key

    def _run(self, tokens: Tensor, state: MambaState, out: MambaState, batch: int) -> Tensor:
        tokens = tokens.to(torch.int64).contiguous()
        conv = state.conv.to(torch.float32).contiguous()
        ssm = state.ssm.to(torch.float32).contiguous()
        if out.conv.data_ptr() == conv.data_ptr() or out.ssm.data_ptr() == ssm.data_ptr():
            raise ValueError(
                "advance: out must not share memory with state (the graph reads one while writing the other)"
            )
        logits = torch.empty(batch, self.vocab_size)
        self._bind(spec.TOKENS.name, tokens)
        self._bind(spec.CONV_STATE.name, conv)
        self._bind(spec.SSM_STATE.name, ssm)
        self._bind(spec.LOGITS.name, logits, output=True)
        self._bind(spec.CONV_STATE_OUT.name, out.conv, output=True)
        self._bind(spec.SSM_STATE_OUT.name, out.ssm, output=True)
        self.session.run_with_iobinding(self._binding)
        return logits

    @torch.no_grad()
    def advance(self, tokens: Tensor, state: MambaState, out: MambaState) -> Tensor:
        """logits [B, V]; the state after the tokens is written into ``out`` (same shapes, float32,
        contiguous, not sharing memory with ``state``); ``state`` is left unchanged."""
        batch = self._check(tokens, state)
        self._check(tokens, out)
        if any(t.dtype != torch.float32 or not t.is_contiguous() for t in (out.conv, out.ssm)):
            raise ValueError("advance: out must hold contiguous float32 tensors")
        return self._run(tokens, state, out, batch)

    def __call__(self, tokens: Tensor, state: MambaState) -> Tensor:
        """tokens [B] -> logits [B, V]; ``state`` is updated in place (as ``decoder.step`` does)."""
        batch = self._check(tokens, state)
        scratch = self._scratch.view(batch)
        with torch.no_grad():
            logits = self._run(tokens, state, scratch, batch)
        state.conv.copy_(scratch.conv)
        state.ssm.copy_(scratch.ssm)
        return logits
