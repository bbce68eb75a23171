"""locust users, one module per kind of traffic (the extension point for new workloads).

- `offline`: the offline `asr` ensemble, one definition for HTTP (`http_asr`) and gRPC (`grpc_asr`);
- `streaming`: live `asr_streaming` streams (`grpc_streaming`) and `decoder_session` sessions
  (`grpc_session`) over gRPC streaming.

Every user subclasses `base.TritonUser`: it draws clips from the manifest loaded once per process,
drives a product client from `mambaserve.clients`, reports each request through `TritonUser.fire`
(locust's `events.request`, with the audio seconds in `context`), and is weighted on the command line
by its `key` (`--mix http_asr=3,grpc_asr=1`). New kinds are listed in `USERS` in loadtest/locustfile.py.
"""
