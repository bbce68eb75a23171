"""Checkpoint -> Triton model repository, the tritonserver launcher and the demo (`python -m mambaserve.build`)."""
