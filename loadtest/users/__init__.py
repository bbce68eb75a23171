"""locust users, one module per kind of traffic (the extension point for new workloads).

- `offline`: the offline `asr` ensemble over HTTP (`http_asr`) and gRPC (`grpc_asr`).
- (streaming and session users are added by the streaming work: a module here with `TritonUser`
  subclasses, each with its own `key`, imported by loadtest/locustfile.py.)

Every user subclasses `base.TritonUser`: it draws clips from the manifest loaded once per process,
reports each call through locust's `events.request` with the clip's audio seconds in `context`,
and is weighted on the command line by its `key` (`--mix http_asr=3,grpc_asr=1`).
"""
