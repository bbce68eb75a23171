"""A second build adds version 2 next to version 1; a server in explicit model-control mode picks it
up on a load request over HTTP, keeps serving it when a broken version 3 fails to load, and unloads."""

from __future__ import annotations

import shutil
import time

import helpers
import numpy as np
import pytest
import tritonclient.http as httpclient
from mambaserve.build.repository import BuildOptions, build_repository
from mambaserve.build.verify import load_configs
from mambaserve.build.versioning import read_build_info, versions
from mambaserve.contract import spec
from mambaserve.serving.server import ModelLoadError, TritonServer

pytestmark = pytest.mark.server

MODELS = (spec.FEATURE_EXTRACTOR, spec.ENCODER, spec.DECODER, spec.ASR)


def encode(url: str, n_mels: int) -> dict[str, np.ndarray]:
    client = httpclient.InferenceServerClient(url)
    frames = 2 * spec.FEATURE_BUCKET_FRAMES
    feats = np.random.default_rng(0).standard_normal((1, frames, n_mels)).astype(np.float32)
    a = httpclient.InferInput(spec.FEATURES.name, list(feats.shape), "FP32")
    a.set_data_from_numpy(feats)
    b = httpclient.InferInput(spec.FEATURE_LENGTHS.name, [1, 1], "INT64")
    b.set_data_from_numpy(np.array([[frames]], np.int64))
    result = client.infer(spec.ENCODER, [a, b])
    return {name: result.as_numpy(name) for name in (spec.PREFIX.name, spec.CTC_LOGPROBS.name)}


def ready_versions(server: TritonServer, model: str) -> list[str]:
    return sorted(
        m["version"] for m in server.repository_index() if m["name"] == model and m.get("state") == "READY"
    )


def test_new_version_is_loaded_with_explicit_model_control(model_repository, checkpoint_dir, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(model_repository, repo)
    n_mels = load_configs(repo)[spec.ENCODER].input[0].dims[-1]
    with helpers.server(
        repo, model_control_mode="explicit", load_models=[spec.ENCODER], log_path=tmp_path / "server.log"
    ) as server:
        assert ready_versions(server, spec.ENCODER) == ["1"]
        assert ready_versions(server, spec.DECODER) == []  # explicit mode: only what was asked for
        before = encode(server.http_url, n_mels)

        # A second build from the same checkpoint. The export itself is covered by the session build;
        # here the exporter reuses version 1's graph (still parity-checked) to keep the test short.
        v1_graph = repo / spec.ENCODER / "1" / "model.onnx"
        result = build_repository(
            checkpoint_dir,
            repo,
            BuildOptions(verify_load=False),
            exporter=lambda module, path, n_mels: shutil.copyfile(v1_graph, path),
            log=lambda _: None,
        )
        assert result.versions == dict.fromkeys(result.versions, 2) and set(MODELS) <= set(result.versions)
        for model in MODELS:
            assert versions(repo / model) == [1, 2]  # the old version stays on disk
            assert read_build_info(repo / model)["checkpoint_sha256"] == result.checkpoint_sha256
        assert ready_versions(server, spec.ENCODER) == ["1"]  # nothing changes until asked

        server.load_model(spec.ENCODER)
        assert ready_versions(server, spec.ENCODER) == ["2"]
        after = encode(server.http_url, n_mels)
        for name in before:  # same checkpoint, so the same numbers
            np.testing.assert_allclose(after[name], before[name], rtol=1e-5, atol=1e-6)

        broken = repo / spec.ENCODER / "3"
        broken.mkdir()
        (broken / "model.onnx").write_bytes(b"not an onnx file")
        with pytest.raises(ModelLoadError) as info:
            server.load_model(spec.ENCODER)
        assert spec.ENCODER in info.value.failures
        assert "version 3" in str(info.value) and "model.onnx" in str(info.value)
        assert ready_versions(server, spec.ENCODER) == ["2"]  # the last good version keeps serving
        encode(server.http_url, n_mels)

        server.unload_model(spec.ENCODER)
        client = httpclient.InferenceServerClient(server.http_url)
        for _ in range(100):
            if not client.is_model_ready(spec.ENCODER):
                break
            time.sleep(0.1)
        assert not client.is_model_ready(spec.ENCODER)
