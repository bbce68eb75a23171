"""Export: the checkpoint's encoder and decode step as ONNX graphs, each behind a parity gate.

- `modules`: export-friendly wrappers of the network (`EncoderForExport`, `DecoderStepForExport`);
- `onnx`: the one ONNX export recipe (dynamo, opset 18) and the error measure of every parity check;
- `encoder`: the encoder graph (dynamic batch and frames) and its parity check at other lengths;
- `decoder_step`: the decode-step graph (dynamic batch) and its step and rollout parity checks.
"""
