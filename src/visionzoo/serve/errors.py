"""The one exception a request handler raises to answer with an error: JSON with a status and a reason."""

from __future__ import annotations

__all__ = ["ApiError"]


class ApiError(Exception):
    """An answer `{"error": message, "status": status}` with `status`, and `headers` such as Retry-After."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers
