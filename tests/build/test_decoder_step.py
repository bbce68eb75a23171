"""The compiled decode step: export, the parity checks that gate the build (and that they catch broken
graphs), the ONNX Runtime stepper's contract (= ``decoder.step``), bitwise batch invariance, and what
the build ships."""

from __future__ import annotations

import json

import onnx
import pytest
import torch
from mambaserve.build.errors import ParityError
from mambaserve.build.export.decoder_step import (
    RTOL,
    check_rollout_parity,
    check_step_parity,
    export_decoder_step,
)
from mambaserve.build.export.modules import DecoderStepForExport
from mambaserve.contract import spec
from mambaserve.model.config import DecoderConfig, MambaConfig
from mambaserve.model.decoder import TranscriptDecoder
from mambaserve.model.mamba import MambaState
from mambaserve.model.onnx_step import OnnxDecodeStep
from mambaserve.model.search import beam_search, greedy_search

VOCAB = 50


def tiny_decoder(seed: int = 0, d_conv: int = 4) -> TranscriptDecoder:
    """Odd sizes; random (not zero) conv biases and D, and larger embeddings so that the logits have
    clear winners (a fresh decoder's are nearly flat)."""
    torch.manual_seed(seed)
    dec = TranscriptDecoder(
        DecoderConfig(mamba=MambaConfig(d_model=24, n_layers=3, d_state=5, d_conv=d_conv)), VOCAB
    )
    with torch.no_grad():
        for name, p in dec.named_parameters():
            if name.endswith(("conv_bias", ".D")):
                p.normal_()
        dec.embed.weight.normal_(0, 0.5)
    return dec.eval()


@pytest.fixture(scope="module")
def decoder() -> TranscriptDecoder:
    return tiny_decoder()


@pytest.fixture(scope="module")
def step_path(decoder, tmp_path_factory):
    return export_decoder_step(
        DecoderStepForExport(decoder), tmp_path_factory.mktemp("step") / spec.DECODER_STEP_FILE
    )


@pytest.fixture(scope="module")
def step(step_path) -> OnnxDecodeStep:
    return OnnxDecodeStep(step_path)


def random_state(decoder, batch: int, seed: int) -> MambaState:
    g = torch.Generator().manual_seed(seed)
    z = MambaState.zeros(decoder.config.mamba, batch)
    return MambaState(torch.randn(z.conv.shape, generator=g), torch.randn(z.ssm.shape, generator=g))


def test_the_exported_step_matches_pytorch_at_other_batches_and_in_a_rollout(decoder, step_path):
    graph = onnx.load(str(step_path))
    assert [i.name for i in graph.graph.input] == [t.name for t in spec.DECODER_STEP_INPUTS]
    assert [o.name for o in graph.graph.output] == [t.name for t in spec.DECODER_STEP_OUTPUTS]
    assert not {"ScatterND", "ScatterElements"} & {
        n.op_type for n in graph.graph.node
    }  # functional, no slice writes
    results = check_step_parity(step_path, decoder)
    assert [r.batch for r in results] == [1, 2, 5, 16, 64]
    assert all(r.worst <= RTOL for r in results), results
    rollout = check_rollout_parity(step_path, decoder)
    assert rollout.same_tokens and rollout.worst_logits <= 1e-4


class _ReturnsInputState(DecoderStepForExport):
    def forward(self, tokens, conv_state, ssm_state):
        logits, _, ssm = super().forward(tokens, conv_state, ssm_state)
        return logits, conv_state + 0, ssm


class _NoSkipTerm(DecoderStepForExport):
    """The step without the D * x skip connection: a plausible porting mistake."""

    def __init__(self, decoder):
        super().__init__(decoder)
        with torch.no_grad():
            for block in self.decoder.mamba.layers:
                block.D.zero_()


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        (_ReturnsInputState, "CONV_STATE_OUT is the input state unchanged"),
        (_NoSkipTerm, "relative error above 1e-05 in LOGITS"),
    ],
)
def test_step_parity_catches_a_broken_graph(decoder, tmp_path, broken, message):
    path = export_decoder_step(broken(decoder), tmp_path / "broken.onnx")
    with pytest.raises(ParityError, match=message):
        check_step_parity(path, decoder)


def test_rollout_parity_catches_a_graph_that_is_slightly_off(decoder, tmp_path):
    """Weights 3e-4 off (relative): logits along the rollout differ by more than its limit."""
    nudged = tiny_decoder()
    with torch.no_grad():
        for p in nudged.mamba.parameters():
            p.mul_(1 + 3e-4)
    path = export_decoder_step(DecoderStepForExport(nudged), tmp_path / "nudged.onnx")
    with pytest.raises(ParityError, match=r"rollout parity failed: logits at step \d+ differ by"):
        check_rollout_parity(path, decoder)


def test_onnx_step_has_the_contract_of_decoder_step(decoder, step):
    tokens = torch.tensor([3, 17, 42, 0])
    ref_state, state = random_state(decoder, 4, 1), random_state(decoder, 4, 1)
    conv_before = state.conv
    with torch.no_grad():
        ref = decoder.step(tokens, ref_state)
    logits = step(tokens, state)
    assert logits.shape == (4, VOCAB) and logits.dtype == torch.float32
    assert state.conv is conv_before  # updated in place, the same tensors
    for a, b in ((logits, ref), (state.conv, ref_state.conv), (state.ssm, ref_state.ssm)):
        assert float((a - b).abs().max() / b.abs().max()) <= 1e-5


def test_searches_take_the_onnx_step_unchanged(decoder, step):
    g = torch.Generator().manual_seed(5)
    prefix, lengths = torch.randn(3, 7, 24, generator=g), torch.tensor([7, 4, 6])
    prompts = [[5, 6], [], [9, 10, 11]]
    with torch.no_grad():
        start = decoder.prefill(prefix, lengths, prompts)

        def search(fn, **kw):
            return fn(decoder, None, prompts, [12, 9, 15], 3, start=(start[0], start[1].clone()), **kw)

        assert search(greedy_search, step=step) == search(greedy_search)
        beam = {"blank_id": 0, "beam_size": 3}
        assert search(beam_search, step=step, **beam) == search(beam_search, **beam)
    assert any(len(t) >= 3 for t in search(greedy_search, step=step))


def test_a_rows_bits_do_not_depend_on_its_batch(decoder, step):
    """One thread, any batch size (1 included, no padding): every row gets exactly the bits it gets alone."""
    n = 37
    tokens = torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(2))
    full = random_state(decoder, n, 3)
    alone = []
    for i in range(n):
        s = full.select(torch.tensor([i]))
        alone.append((step(tokens[i : i + 1], s)[0], s))
    for batch in (2, 3, 4, 5, 16, n):
        s = full.select(torch.arange(batch))
        logits = step(tokens[:batch], s)
        for i in range(batch):
            assert torch.equal(logits[i], alone[i][0]), (batch, i)
            assert torch.equal(s.conv[:, i], alone[i][1].conv[:, 0]) and torch.equal(
                s.ssm[:, i], alone[i][1].ssm[:, 0]
            )


def test_advance_writes_into_given_buffers_and_leaves_the_input(decoder, step):
    state = random_state(decoder, 3, 4)
    before = state.clone()
    buffers = step.buffers()
    out = buffers.view(3)
    logits = step.advance(torch.tensor([1, 2, 3]), state, out)
    assert torch.equal(state.conv, before.conv) and torch.equal(state.ssm, before.ssm)
    again = before.clone()
    assert torch.equal(step(torch.tensor([1, 2, 3]), again), logits)
    assert torch.equal(again.ssm, out.ssm) and torch.equal(again.conv, out.conv)
    small = buffers.view(2)  # a shrinking batch reuses the same storage
    assert small.ssm.data_ptr() == out.ssm.data_ptr() and small.ssm.is_contiguous()
    with pytest.raises(ValueError, match="must not share memory"):
        step.advance(torch.tensor([1, 2, 3]), out, out)


def test_onnx_step_refuses_bad_input(decoder, step, tmp_path):
    with pytest.raises(ValueError, match=r"state.ssm must have shape \[3, 2, 48, 5\]"):
        step(torch.tensor([1, 2]), MambaState(torch.zeros(3, 2, 48, 3), torch.zeros(3, 2, 48, 6)))
    with pytest.raises(ValueError, match=r"tokens must have shape \[batch >= 1\]"):
        step(torch.zeros(0, dtype=torch.long), step.zeros(0))
    with pytest.raises(FileNotFoundError, match=r"missing\.onnx does not exist"):
        OnnxDecodeStep(tmp_path / "missing.onnx")
    other = tmp_path / "other.onnx"
    x = onnx.helper.make_tensor_value_info("X", onnx.TensorProto.FLOAT, [1])
    y = onnx.helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, [1])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["X"], ["Y"])], "g", [x], [y])
    model = onnx.helper.make_model(graph, ir_version=9, opset_imports=[onnx.helper.make_opsetid("", 18)])
    onnx.save(model, str(other))
    with pytest.raises(ValueError, match="is not a decode step graph"):
        OnnxDecodeStep(other)


def test_a_decoder_with_another_conv_width_exports_too(tmp_path):
    dec = tiny_decoder(seed=1, d_conv=3)
    path = export_decoder_step(DecoderStepForExport(dec), tmp_path / "step.onnx")
    assert all(r.worst <= RTOL for r in check_step_parity(path, dec, batches=(1, 4)))


def _args(repo, model: str, **params) -> dict:
    config = {"parameters": {k: {"string_value": v} for k, v in params.items()}}
    return {"model_repository": str(repo / model), "model_version": "1", "model_config": json.dumps(config)}


def test_the_build_ships_the_step_beside_every_decoding_model(model_repository, build_output):
    from mambaserve.build.model_config import from_text
    from mambaserve.serving.backends.common import decode_step_path

    assert "exporting the decoder's decode step" in build_output and "greedy rollout" in build_output
    for model in (spec.DECODER, spec.STREAMING_DECODER, spec.DECODER_SESSION):
        path = model_repository / model / "1" / spec.DECODER_STEP_FILE
        assert path.is_file(), path
        config = from_text((model_repository / model / "config.pbtxt").read_text())
        assert config.parameters["decode_step"].string_value == "onnx"
        assert decode_step_path(_args(model_repository, model), "cpu") == path
        assert decode_step_path(_args(model_repository, model, decode_step="torch"), "cpu") is None
        assert decode_step_path(_args(model_repository, model), "cuda:0") is None  # GPU: the Triton kernels
    assert not (model_repository / spec.STREAMING_ENCODER / "1" / spec.DECODER_STEP_FILE).exists()
    with pytest.raises(ValueError, match="decode_step must be one of"):
        decode_step_path(_args(model_repository, spec.DECODER, decode_step="tensorrt"), "cpu")
