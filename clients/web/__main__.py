"""``python -m mambaserve.clients.web``: serve the page and the gateway next to a running tritonserver."""

from __future__ import annotations

import argparse
import logging
import sys

from mambaserve.clients.request import DEFAULT_URLS
from mambaserve.clients.web.gateway import GatewayConfig, create_app
from mambaserve.contract import spec


def main(argv: list[str] | None = None) -> int:
    d = GatewayConfig()
    p = argparse.ArgumentParser(prog="python -m mambaserve.clients.web", description=__doc__.strip("`"))
    p.add_argument("--grpc-url", default=DEFAULT_URLS["grpc"], help="tritonserver's gRPC host:port")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--max-streams", type=int, default=d.max_streams, help="streams open at once")
    p.add_argument("--max-rate", type=float, default=d.max_rate, help="sustained audio rate cap, x real time")
    p.add_argument("--max-stream-seconds", type=float, default=d.max_stream_seconds)
    p.add_argument("--idle-seconds", type=float, default=d.idle_seconds)
    p.add_argument("--max-upload-seconds", type=float, default=d.max_upload_seconds)
    p.add_argument("--max-upload-mb", type=float, default=d.max_upload_bytes / 2**20)
    p.add_argument("--max-uploads", type=int, default=d.max_uploads, help="uploads transcribed at once")
    p.add_argument(
        "--debug-audio", action="store_true", help="keep each stream's audio at /debug/audio/ID.wav"
    )
    a = p.parse_args(argv)
    if a.max_stream_seconds > spec.MAX_STREAM_SECONDS or a.max_upload_seconds > spec.MAX_AUDIO_SECONDS:
        p.error(
            f"the server's own limits are {spec.MAX_STREAM_SECONDS:g} s (stream), {spec.MAX_AUDIO_SECONDS:g} s (file)"
        )
    config = GatewayConfig(
        grpc_url=a.grpc_url,
        max_streams=a.max_streams,
        max_rate=a.max_rate,
        max_stream_seconds=a.max_stream_seconds,
        idle_seconds=a.idle_seconds,
        max_upload_seconds=a.max_upload_seconds,
        max_upload_bytes=int(a.max_upload_mb * 2**20),
        max_uploads=a.max_uploads,
        debug_audio=a.debug_audio,
    )
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    print(
        f"mambaserve web gateway: http://{a.host}:{a.port}/  (tritonserver gRPC at {a.grpc_url})", flush=True
    )
    uvicorn.run(create_app(config), host=a.host, port=a.port, log_level="info", ws_max_size=1 << 20)
    return 0


if __name__ == "__main__":
    sys.exit(main())
