"""The inference routes as raw ASGI, in front of FastAPI's router.

FastAPI's middleware stack, route matching and dependency solving cost more per request than
decoding, batching, the kernel and encoding together (bench-results/notes.md has the
profile). Inference is the one hot path, so this wrapper, outside FastAPI, dispatches POSTs
to ``/v2/models/{name}[/versions/{v}]/infer`` with one regular expression to the same
``routes_v2`` code, and answers errors in the same JSON shape. FastAPI still serves
everything else and still documents the inference routes in ``/openapi.json``.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from ..core.errors import ApiError
from . import routes_v2
from .errors import api_error_response, internal_error_response

log = logging.getLogger("normserve")

_INFER = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")


class InferFastPath:
    """The ASGI app uvicorn runs: inference requests here, everything else to FastAPI."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    def __getattr__(self, name: str) -> Any:
        return getattr(self.app, name)  # app.state, app.openapi(), ... as on the FastAPI app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = (_INFER.fullmatch(scope["path"])
                 if scope["type"] == "http" and scope["method"] == "POST" else None)
        if match is None:
            await self.app(scope, receive, send)
            return
        scope["app"] = self.app
        request = Request(scope, receive)
        name, version = match.groups()
        try:
            response = await routes_v2.infer_request(request, name, version)
        except ApiError as exc:
            response = api_error_response(exc)
        except Exception as exc:  # a bug, not the client: logged, and answered as JSON
            log.exception("internal error on POST %s", scope["path"])
            response = internal_error_response(exc)
        await response(scope, receive, send)
