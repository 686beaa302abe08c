"""A response made of parts: an infer reply's JSON header and its raw tensor bytes.

Each ASGI body message is one write to the socket, which costs more than copying a small
tensor, so small replies are joined and sent in one message; large ones go out part by
part without the extra copy."""

from __future__ import annotations

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

#: Replies up to this size are joined into one body message (a copy of 64 KiB costs about
#: what one more socket write does).
JOIN_BELOW = 64 << 10


class PartsResponse(Response):
    """``Content-Length`` is the sum of the parts; small replies go out in one message."""

    def __init__(self, parts: list[bytes | memoryview], headers: dict[str, str],
                 status_code: int = 200):
        # Not Response.__init__: its header handling cost more than the rest of this reply.
        size = sum(len(p) for p in parts)
        if len(parts) > 1 and size <= JOIN_BELOW:
            parts = [b"".join(parts)]
        self.parts = parts
        self.status_code = status_code
        self.background = None
        self.body = b""
        self.raw_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        self.raw_headers.append((b"content-length", str(size).encode()))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code,
                    "headers": self.raw_headers})
        last = len(self.parts) - 1
        for i, part in enumerate(self.parts):
            await send({"type": "http.response.body", "body": part, "more_body": i < last})


class OrjsonResponse(Response):
    """JSON via orjson (NumPy arrays serialised natively); FastAPI's ORJSONResponse is
    deprecated, this keeps the library choice explicit."""

    media_type = "application/json"

    def render(self, content: object) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
