"""`feature_extractor` model: AUDIO (ragged batch) -> FEATURES padded to a bucket + FEATURE_LENGTHS.

All valid requests of an execute() call go through LogMel as one padded batch; each response is then
cut/padded to its own bucket length (a multiple of spec.FEATURE_BUCKET_FRAMES), so that requests of
similar length have identical FEATURES shapes and the encoder's batcher can group them. Frames beyond
a row's true length are zero (LogMel zeroes them), so padding never changes what the encoder sees.
"""

from __future__ import annotations

import numpy as np
import torch
import triton_python_backend_utils as pb_utils
from mambaserve.contract import spec
from mambaserve.model.features import load_feature_extractor
from mambaserve.serving.backends.common import (
    bucket_frames,
    checkpoint_dir,
    configure_torch_threads,
    error_response,
    torch_device,
    triton_error,
    validate_audio,
)
from mambaserve.serving.metrics import (
    AUDIO_REJECTION_REASONS,
    INTERNAL,
    Metrics,
    audio_rejection_reason,
)


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        configure_torch_threads(args)
        self.device = torch_device(args)
        self.extractor = load_feature_extractor(checkpoint_dir(args)).to(self.device).eval()
        self.min_samples = self.extractor.config.win_length
        self.hop = self.extractor.config.hop_length
        self.name = args["model_name"]
        self.metrics = Metrics()
        self.metrics.declare(self.name, audio=True, reasons=(*AUDIO_REJECTION_REASONS, INTERNAL))

    def execute(self, requests):
        responses: list = [None] * len(requests)
        valid: list[tuple[int, np.ndarray]] = []
        for i, request in enumerate(requests):
            audio = None
            try:
                audio = pb_utils.get_input_tensor_by_name(request, spec.AUDIO.name)
                if audio is None:
                    raise ValueError(f"input '{spec.AUDIO.name}' is missing")
                audio = audio.as_numpy()
                valid.append((i, validate_audio(audio, min_samples=self.min_samples)))
            except ValueError as e:
                responses[i] = error_response(e, pb_utils=pb_utils)
                self.metrics.rejected(self.name, audio_rejection_reason(audio, min_samples=self.min_samples))
        if not valid:
            return responses

        rows = [row for _, audio in valid for row in audio]
        lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
        batch = torch.zeros(len(rows), int(lengths.max()), dtype=torch.float32)
        for j, row in enumerate(rows):
            batch[j, : len(row)] = torch.from_numpy(row)
        try:
            with torch.inference_mode():
                feats, feat_lengths = self.extractor(batch.to(self.device), lengths.to(self.device))
            feats = feats.float().cpu().numpy()
            feat_lengths = feat_lengths.cpu().numpy().astype(np.int64)
        except Exception as e:  # a failure here concerns the whole batch: report it on every request
            error = triton_error(f"feature extraction failed: {type(e).__name__}: {e}", pb_utils=pb_utils)
            for i, _ in valid:
                responses[i] = pb_utils.InferenceResponse(error=error)
            self.metrics.rejected(self.name, INTERNAL, len(valid))
            return responses
        self.metrics.audio_seconds(self.name, sum(a.size for _, a in valid) / spec.SAMPLE_RATE)

        offset = 0
        for i, audio in valid:
            n = audio.shape[0]
            lens = feat_lengths[offset : offset + n]
            width = bucket_frames(int(lens.max()))
            out = np.zeros((n, width, feats.shape[2]), dtype=np.float32)
            take = min(width, feats.shape[1])
            out[:, :take] = feats[offset : offset + n, :take]
            responses[i] = pb_utils.InferenceResponse(
                output_tensors=[
                    pb_utils.Tensor(spec.FEATURES.name, out),
                    pb_utils.Tensor(spec.FEATURE_LENGTHS.name, lens.reshape(n, 1)),
                ]
            )
            offset += n
        return responses
