"""The guard in front of the API: Bearer keys on /v1 routes and a limit on request bodies.

A pure ASGI middleware (not Starlette's BaseHTTPMiddleware), so streaming responses pass
through untouched. A missing or wrong key gets 401, a body over the limit 413 (by its
Content-Length, or while it is read when it is sent in chunks), all in OpenAI's error shape.
"""

import hmac
import json

from lmkit.serve.api_errors import error_body


def accepted_keys(api_keys: list[str] | str | None) -> list[str]:
    """The Bearer keys to accept (none: no authentication)."""
    return [api_keys] if isinstance(api_keys, str) else [k for k in (api_keys or []) if k]


class Guard:
    """ASGI middleware: `api_keys` guard /v1; bodies over `max_body_bytes` are refused."""

    def __init__(self, app, api_keys: list[str] | str | None = None, max_body_bytes: int = 1 << 20) -> None:
        self.app = app
        self.keys = accepted_keys(api_keys)
        self.max_body_bytes = max_body_bytes

    def refusal(self, path: str, headers: dict[bytes, bytes]) -> tuple[int, dict] | None:
        """(status, OpenAI error body) when the request may not pass, else None."""
        if path.startswith("/v1") and self.keys:
            auth = headers.get(b"authorization", b"").decode("latin-1")
            if not auth:
                return 401, error_body(
                    "missing API key: send 'Authorization: Bearer <key>' (the key given to lmkit serve "
                    "--api-key or LMKIT_API_KEY)", "authentication_error", None, "invalid_api_key")
            scheme, _, given = auth.partition(" ")
            if scheme.lower() != "bearer" or not any(hmac.compare_digest(given.strip(), k) for k in self.keys):
                return 401, error_body("incorrect API key provided", "authentication_error", None, "invalid_api_key")
        length = headers.get(b"content-length")
        if length is not None:
            try:
                size = int(length)
            except ValueError:
                return 400, error_body("invalid Content-Length header", "invalid_request_error")
            if size > self.max_body_bytes:
                return 413, error_body(f"request body of {size} bytes is over the limit of {self.max_body_bytes} "
                                       "bytes", "invalid_request_error", None, "request_too_large")
        return None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        refused = self.refusal(scope.get("path", ""), dict(scope.get("headers") or []))
        if refused is not None:
            status, body = refused
            data = json.dumps(body).encode()
            await send({"type": "http.response.start", "status": status,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(data)).encode())]})
            await send({"type": "http.response.body", "body": data})
            return
        await self.app(scope, self._limited(receive), send)

    def _limited(self, receive):
        """`receive` that refuses (413) a chunked body once it grows over the limit."""
        from starlette.exceptions import HTTPException

        seen = 0
        limit = self.max_body_bytes

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise HTTPException(413, f"request body is over the limit of {limit} bytes")
            return message

        return limited_receive
