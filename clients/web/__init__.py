"""A page that listens: the browser streams its microphone over a WebSocket to a small gateway,
which drives `asr_streaming` over gRPC and sends partial and final transcripts back; a file upload
goes to the offline `asr` model. Run it with ``python -m mambaserve.clients.web`` (``make web``).

Starlette and uvicorn come with the ``web`` extra; nothing here is imported by the other clients.
"""
