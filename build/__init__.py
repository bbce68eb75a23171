"""Build scripts (`mambaserve.build`): checkpoint -> ONNX export with parity gates, config.pbtxt files
generated from the contract, the model repository, its verification (`python -m mambaserve.build`)."""
