"""What runs inside tritonserver and operates it (`mambaserve.serving`): the python-backend models
(`backends/`), the one owner of per-stream and per-session state (`state`), the streaming engine, the
metrics, the launcher (`server`), the stub watchdog. Imports the model, the kernels and the contract."""
