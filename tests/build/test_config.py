"""config.pbtxt generation, the ensemble wiring check, versioning and request validation (no server)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from google.protobuf import text_format
from mambaserve.build import model_config as mc
from mambaserve.build.__main__ import _instances
from mambaserve.build.repository import BuildOptions, _configs, warmup_files
from mambaserve.build.verify import WiringError, check_ensemble, check_wiring, load_configs
from mambaserve.build.versioning import latest_version, next_version, versions
from mambaserve.contract import spec
from mambaserve.serving.backends.common import bucket_frames, decode_prompts, pad_stack, validate_audio

pb = mc.pb

N_MELS, PREFIX_DIM, VOCAB = 80, 192, 256
WARM = {"frames": 64, "prefix_len": 8, "prefix_valid": 8, "ctc_len": 16, "ctc_valid": 16}


def make_configs(tmp_path, **options) -> dict[str, pb.ModelConfig]:
    for relative, data in warmup_files(WARM).items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(data)
    specs = spec.pipeline(N_MELS, PREFIX_DIM, VOCAB)
    return _configs(specs, BuildOptions(**options), "onnxruntime_onnx", "model.onnx", WARM)


def write_repository(tmp_path, configs) -> None:
    for name, config in configs.items():
        (tmp_path / name).mkdir(exist_ok=True)
        (tmp_path / name / "config.pbtxt").write_text(mc.to_text(config))


# -- generation -------------------------------------------------------------------------------
def test_every_config_round_trips_through_text_format(tmp_path):
    configs = make_configs(tmp_path)
    assert set(configs) == {spec.FEATURE_EXTRACTOR, spec.ENCODER, spec.DECODER, spec.ASR}
    for config in configs.values():
        text = mc.to_text(config)
        assert mc.from_text(text) == config
        assert mc.to_text(mc.from_text(text)) == text  # stable: an unchanged rebuild gives the same file


def test_tritonclients_schema_reads_the_configs_the_same_way(tmp_path):
    """The build's vendored model_config.proto and the installed tritonclient's agree on our configs."""
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    for config in make_configs(tmp_path).values():
        text = mc.to_text(config)
        assert (
            text_format.MessageToString(text_format.Parse(text, model_config_pb2.ModelConfig()), as_utf8=True)
            == text
        )


NO_TRITONCLIENT = """
import runpy, sys

class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "tritonclient":
            raise ImportError(f"{name} is blocked: the build must not need the serve extra")

sys.meta_path.insert(0, Refuse())
from mambaserve.build import repository, verify
from mambaserve.build.__main__ import main
from mambaserve.build.repository import BuildOptions, _configs, warmup_files
from mambaserve.contract import spec
from mambaserve.build import model_config as mc
from pathlib import Path

out = Path(sys.argv[1])
warm = {"frames": 64, "prefix_len": 8, "prefix_valid": 8, "ctc_len": 16, "ctc_valid": 16}
for relative, data in warmup_files(warm).items():
    (out / relative).parent.mkdir(parents=True, exist_ok=True)
    (out / relative).write_bytes(data)
for name, config in _configs(spec.pipeline(80, 192, 256), BuildOptions(), "onnxruntime_onnx", "model.onnx", warm).items():
    (out / name).mkdir(exist_ok=True)
    (out / name / "config.pbtxt").write_text(mc.to_text(config))
print("wired:", verify.check_wiring(out))
sys.argv = ["python -m mambaserve.build", "--help"]
try:
    runpy.run_module("mambaserve.build", run_name="__main__")
except SystemExit as e:
    assert e.code == 0, e.code
assert not [m for m in sys.modules if m.split(".")[0] == "tritonclient"]
"""


def test_the_build_does_not_import_tritonclient(tmp_path):
    """`python -m mambaserve.build` (configs, wiring check, CLI) works without the serve extra's tritonclient."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", NO_TRITONCLIENT, str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "wired: ['asr']" in proc.stdout


def test_a_field_the_schema_does_not_know_is_rejected():
    with pytest.raises(text_format.ParseError):
        mc.from_text('name: "x"\nmax_batch_sise: 4\n')


def test_generated_configs_follow_the_spec(tmp_path):
    c = make_configs(tmp_path)
    asr = c[spec.ASR]
    assert asr.platform == "ensemble" and asr.max_batch_size == spec.MAX_BATCH_SIZE
    assert [(t.name, pb.DataType.Name(t.data_type), list(t.dims), t.optional) for t in asr.input] == [
        ("AUDIO", "TYPE_FP32", [-1], False),
        ("PROMPT", "TYPE_STRING", [1], True),
    ]
    assert [(t.name, pb.DataType.Name(t.data_type), list(t.dims)) for t in asr.output] == [
        ("TRANSCRIPT", "TYPE_STRING", [1])
    ]
    assert [s.model_name for s in asr.ensemble_scheduling.step] == [
        spec.FEATURE_EXTRACTOR,
        spec.ENCODER,
        spec.DECODER,
    ]

    fe, enc, dec = c[spec.FEATURE_EXTRACTOR], c[spec.ENCODER], c[spec.DECODER]
    assert fe.backend == "python" and dec.backend == "python" and enc.platform == "onnxruntime_onnx"
    assert fe.input[0].allow_ragged_batch  # python models pad ragged batches themselves
    assert {t.name for t in dec.input if t.allow_ragged_batch} == {spec.PREFIX.name, spec.CTC_LOGPROBS.name}
    assert not any(t.allow_ragged_batch for t in enc.input)  # the encoder batches same-shape buckets
    assert list(enc.input[0].dims) == [-1, N_MELS] and list(dec.input[0].dims) == [-1, PREFIX_DIM]
    assert [t.name for t in dec.input if t.optional] == [spec.PROMPT.name]
    for config in (fe, enc, dec):
        assert config.HasField("dynamic_batching")
        assert config.max_batch_size == spec.MAX_BATCH_SIZE
        assert [g.kind for g in config.instance_group] == [pb.ModelInstanceGroup.KIND_CPU]
        assert len(config.model_warmup) == 1


def test_warmup_data_files_exist_and_hold_int64_lengths(tmp_path):
    c = make_configs(tmp_path)
    for name in (spec.ENCODER, spec.DECODER):
        for warm_input in c[name].model_warmup[0].inputs.values():
            if warm_input.input_data_file:
                data = np.fromfile(tmp_path / name / "warmup" / warm_input.input_data_file, dtype="<i8")
                assert data.shape == (1,) and data[0] > 0
            else:
                assert warm_input.zero_data


def test_gpu_and_instances_options(tmp_path):
    c = make_configs(tmp_path, gpu=True, instances={"decoder": 3}, ort_threads=2, torch_threads=1)
    kind = {
        name: c[name].instance_group[0].kind for name in (spec.FEATURE_EXTRACTOR, spec.ENCODER, spec.DECODER)
    }
    assert kind == {
        spec.FEATURE_EXTRACTOR: pb.ModelInstanceGroup.KIND_CPU,
        spec.ENCODER: pb.ModelInstanceGroup.KIND_GPU,
        spec.DECODER: pb.ModelInstanceGroup.KIND_GPU,
    }
    assert c[spec.DECODER].instance_group[0].count == 3
    assert c[spec.ENCODER].instance_group[0].count == 1
    assert c[spec.ENCODER].parameters["intra_op_thread_count"].string_value == "2"
    assert c[spec.DECODER].parameters["torch_threads"].string_value == "1"


def test_instances_option_parsing():
    assert _instances([]) == {}
    assert _instances(["2"]) == {spec.FEATURE_EXTRACTOR: 2, spec.ENCODER: 2, spec.DECODER: 2}
    assert _instances(["2", "decoder=4"])[spec.DECODER] == 4
    for bad in ("x", "0", "nomodel=2", "decoder=-1"):
        with pytest.raises(Exception, match="--instances"):
            _instances([bad])


def test_bad_deployment_values_are_refused():
    with pytest.raises(ValueError, match="instance kind"):
        mc.Deployment(kind="KIND_TPU")
    with pytest.raises(ValueError, match="instance count"):
        mc.Deployment(count=0)
    with pytest.raises(ValueError, match="unknown Triton data type"):
        mc.model_config(
            spec.ModelSpec("m", (spec.TensorSpec("X", "TYPE_FLOAT", (1,)),), ()), backend="python"
        )


# -- wiring -----------------------------------------------------------------------------------
def test_the_generated_repository_is_wired_correctly(tmp_path):
    write_repository(tmp_path, make_configs(tmp_path))
    assert check_wiring(tmp_path) == [spec.ASR]


def _broken(tmp_path, mutate) -> str:
    configs = make_configs(tmp_path)
    models = {k: copy.deepcopy(v) for k, v in configs.items()}
    mutate(models)
    with pytest.raises(WiringError) as info:
        check_ensemble(models[spec.ASR], models)
    return str(info.value)


def _step(models, i):
    return models[spec.ASR].ensemble_scheduling.step[i]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda m: setattr(_step(m, 1), "model_name", "encoder_v2"),
            "model 'encoder_v2' is not in the repository",
        ),
        (
            lambda m: _step(m, 1).input_map.__setitem__("FEATURES", "FEATS"),
            "reads 'FEATS', which nothing produces",
        ),
        (
            lambda m: _step(m, 1).input_map.__setitem__("FEATURE", "FEATURES"),
            "'FEATURE' is not an input of 'encoder'",
        ),
        (lambda m: _step(m, 0).output_map.__setitem__("LENGTHS", "X"), "'LENGTHS' is not an output"),
        (lambda m: m[spec.DECODER].input[0].__setattr__("data_type", pb.TYPE_FP16), "'PREFIX' is TYPE_FP16"),
        (lambda m: m[spec.ENCODER].input[0].dims.__setitem__(1, 40), "has shape [-1, -1, 40]"),
        (lambda m: _step(m, 2).input_map.pop("CTC_LENGTHS"), "required input 'CTC_LENGTHS' is not mapped"),
        (
            lambda m: m[spec.DECODER].input[4].__setattr__("optional", False),
            "fed by the optional ensemble input",
        ),
        (lambda m: _step(m, 2).output_map.clear(), "output 'TRANSCRIPT' is not produced"),
        (lambda m: _step(m, 1).output_map.__setitem__("PREFIX", "FEATURES"), "already produced"),
        (lambda m: setattr(m[spec.DECODER], "max_batch_size", 8), "max_batch_size 8 is below"),
    ],
)
def test_the_wiring_check_catches_a_broken_ensemble(tmp_path, mutate, expected):
    assert expected in _broken(tmp_path, mutate)


def test_the_wiring_check_lists_every_problem_at_once(tmp_path):
    def mutate(m):
        _step(m, 1).input_map["FEATURES"] = "FEATS"
        _step(m, 2).output_map.clear()

    message = _broken(tmp_path, mutate)
    assert "FEATS" in message and "TRANSCRIPT" in message


def test_a_config_in_the_wrong_folder_is_reported(tmp_path):
    configs = make_configs(tmp_path)
    write_repository(tmp_path, configs)
    (tmp_path / "renamed").mkdir()
    (tmp_path / "renamed" / "config.pbtxt").write_text(mc.to_text(configs[spec.ENCODER]))
    with pytest.raises(WiringError, match="differs from its folder name"):
        load_configs(tmp_path)


# -- versions ---------------------------------------------------------------------------------
def test_versions_are_the_integer_folders(tmp_path):
    assert versions(tmp_path / "missing") == [] and next_version(tmp_path / "missing") == 1
    for name in ("1", "3", "warmup", "0", "x2"):
        (tmp_path / name).mkdir()
    assert versions(tmp_path) == [1, 3]
    assert latest_version(tmp_path) == 3 and next_version(tmp_path) == 4


# -- request validation (the python models' helpers) --------------------------------------------
def test_validate_audio_names_the_input_and_the_limit():
    ok = np.zeros((1, 16000), np.float32)
    assert validate_audio(ok, min_samples=400) is ok
    cases = [
        (np.zeros((1, 0), np.float32), "is empty"),
        (np.zeros((1, 100), np.float32), "at least 400 samples"),
        (
            np.zeros((1, int(spec.MAX_AUDIO_SECONDS * 16000) + 1), np.float32),
            f"limit is {spec.MAX_AUDIO_SECONDS:g} s",
        ),
        (np.array([[0.0, np.nan] * 300], np.float32), "NaN or Inf"),
        (np.array([[0.0, np.inf] * 300], np.float32), "NaN or Inf"),
        (np.full((1, 1000), 3000.0, np.float32), "int16-scaled"),
        (np.zeros((1, 1000), np.float64), "must be FP32"),
        (np.zeros((1000,), np.float32), "shape [batch, samples]"),
    ]
    for audio, message in cases:
        with pytest.raises(ValueError, match="'AUDIO'") as info:
            validate_audio(audio, min_samples=400)
        assert message in str(info.value)


def test_decode_prompts():
    assert decode_prompts(None, 2) == [None, None]
    assert decode_prompts(np.array([[b"hi"], [b""]], dtype=object), 2) == ["hi", None]
    assert decode_prompts(np.array([["é".encode()]], dtype=object), 1) == ["é"]
    with pytest.raises(ValueError, match="not valid UTF-8"):
        decode_prompts(np.array([[b"\xff\xfe"]], dtype=object), 1)
    with pytest.raises(ValueError, match=f"limit is {spec.MAX_PROMPT_BYTES} bytes"):
        decode_prompts(np.array([[b"a" * (spec.MAX_PROMPT_BYTES + 1)]], dtype=object), 1)
    with pytest.raises(ValueError, match="has 1 rows but AUDIO has 2"):
        decode_prompts(np.array([[b"a"]], dtype=object), 2)


def test_bucketing_and_padding():
    assert [bucket_frames(n) for n in (0, 1, 64, 65, 200)] == [64, 64, 64, 128, 256]
    stacked = pad_stack([np.ones((1, 3, 2)), np.ones((2, 5, 2))])
    assert stacked.shape == (3, 5, 2) and stacked[0, 3:].sum() == 0 and stacked[1:].sum() == 20


def test_tensorrt_is_skipped_with_the_reason():
    from mambaserve.build.repository import tensorrt_skip_reason
    from mambaserve.build.tensorrt_engine import Profile, unavailable_reason

    assert "not requested" in tensorrt_skip_reason(BuildOptions())
    reason = unavailable_reason()  # None on a GPU host with TensorRT: then the engine is built
    assert tensorrt_skip_reason(BuildOptions(tensorrt=True)) == reason
    assert reason is None or "tensorrt" in reason or "GPU" in reason
    profile = Profile().resolved(frames_per_second=100.0)
    assert profile.max_frames % spec.FEATURE_BUCKET_FRAMES == 0
    assert profile.max_frames >= spec.MAX_AUDIO_SECONDS * 100 and profile.max_batch == spec.MAX_BATCH_SIZE
    with pytest.raises(ValueError, match="batch sizes"):
        Profile(opt_batch=64).resolved(100.0)
