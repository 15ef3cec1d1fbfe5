"""The HTTP server around the app: uvicorn, with a deadline for each request's headers.

uvicorn closes an idle keep-alive connection after `timeout_keep_alive`, but that timer stops at the
first byte, and a fresh connection has none: a client that sends its headers a byte at a time, or
nothing at all, holds its connection for ever (ten such clients were never closed). Here every request's
headers must arrive within `header_timeout_s` of the connection opening or the previous response ending
(so the rest of a body the app did not read must too), or the connection is closed; h11's limit on an
incomplete event bounds what a client may buffer meanwhile. This subclasses uvicorn's h11 protocol, the
`http` class uvicorn's config takes: tests/serve/test_limits.py checks it against each uvicorn release.
"""

from __future__ import annotations

import asyncio

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from visionzoo.serve.settings import ServeSettings

__all__ = ["HeaderDeadlineProtocol", "server_config"]

MAX_HEADER_BYTES = 16 * 1024  # h11's limit on headers not yet complete (a longer request line or headers: 400)


class HeaderDeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request headers are not complete in time."""

    header_timeout_s: float = 10.0  # set by `server_config` on a subclass, one per server
    header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_headers()

    def handle_events(self) -> None:
        super().handle_events()
        if self.header_deadline is not None and self._request_in_progress():
            self.header_deadline.cancel()  # a request's line and headers are in: the app has it now
            self.header_deadline = None

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and not self._request_in_progress():
            self._await_headers()  # the next request on this keep-alive connection (or the rest of an unread body)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.header_deadline is not None:
            self.header_deadline.cancel()
            self.header_deadline = None
        super().connection_lost(exc)

    def _request_in_progress(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _await_headers(self) -> None:
        if self.header_deadline is not None:
            self.header_deadline.cancel()
        self.header_deadline = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _headers_too_slow(self) -> None:
        self.header_deadline = None
        if not self.transport.is_closing() and not self._request_in_progress():
            self.transport.close()


def server_config(app, settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000,
                  **options) -> uvicorn.Config:
    """uvicorn's config for `app`: h11 with the header deadline and size limit, and the keep-alive of `settings`."""
    protocol = type("HeaderDeadlineProtocol", (HeaderDeadlineProtocol,), {"header_timeout_s": settings.header_timeout_s})
    return uvicorn.Config(app, host=host, port=port, http=protocol, timeout_keep_alive=settings.keep_alive_s,
                          h11_max_incomplete_event_size=MAX_HEADER_BYTES, **options)
