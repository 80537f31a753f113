"""ARM's ``x-ms-request-id`` / ``x-ms-correlation-request-id`` on every response.

Clients and support tooling quote them; the correlation id echoes the client's
``x-ms-correlation-request-id`` (or ``x-ms-client-request-id``) when it sent one.
"""

from __future__ import annotations

import itertools
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class RequestIds:
    """Adds the two ARM request id headers to each HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # A random prefix per process and a counter: unique like a uuid4, without a
        # call into the OS's random source for every request.
        self._prefix = str(uuid.uuid4())[:24]
        self._counter = itertools.count()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = f"{self._prefix}{next(self._counter):012x}".encode()
        scope["osupgrade.request_id"] = request_id.decode()  # for log lines about it
        correlation = request_id
        for name, value in scope["headers"]:
            if name in (b"x-ms-correlation-request-id", b"x-ms-client-request-id"):
                correlation = value[:64]
                break

        async def send_with_ids(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"x-ms-request-id", request_id))
                headers.append((b"x-ms-correlation-request-id", correlation))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_ids)
