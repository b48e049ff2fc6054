"""The outermost middleware: a request id for every request, latency metrics, and the last catch.

Every response carries ``x-request-id`` (the client's own when it sent a plain one). An
exception no handler caught becomes a 500 in OpenAI's shape naming that id, logged with its
traceback; a 5xx answered without a report (see `failure_log.report_failure`) is still logged.
Pure ASGI, so streaming responses pass through untouched.
"""

import json
import time

from lmkit.serve.api_errors import error_body, with_request_id
from lmkit.serve.failure_log import CAUSE_INTERNAL, REQUEST_ID_HEADER, log_failure, new_request_id

_HEADER = REQUEST_ID_HEADER.encode("latin-1")


class RequestTracker:
    """ASGI middleware: request ids, /v1 request metrics and failure logging for `app`."""

    def __init__(self, app, metrics=None) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        given = dict(scope.get("headers") or []).get(_HEADER)
        rid = new_request_id(given.decode("latin-1") if given else None)
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        start = time.perf_counter()
        response = {"status": 500, "started": False}

        async def send_tracked(message) -> None:
            if message["type"] == "http.response.start":
                response.update(status=message["status"], started=True)
                headers = list(message.get("headers") or [])
                if not any(k.lower() == _HEADER for k, _ in headers):
                    message = {**message, "headers": headers + [(_HEADER, rid.encode("latin-1"))]}
            await send(message)

        try:
            await self.app(scope, receive, send_tracked)
        except Exception as exc:
            self._report(state, rid, path, f"{type(exc).__name__}: {exc}", exc)
            if response["started"]:
                raise  # mid-stream: nothing can be answered any more; the server drops the connection
            await self._reply_500(send_tracked, rid, exc)
        finally:
            if response["started"] and response["status"] >= 500:
                self._report(state, rid, path, f"answered {response['status']}", None)
            if self.metrics is not None and path.startswith("/v1"):
                self.metrics.observe_request(path, response["status"], time.perf_counter() - start)

    def _report(self, state: dict, rid: str, path: str, message: str, exc: BaseException | None) -> None:
        if state.get("failure_reported"):
            return
        state["failure_reported"] = True
        log_failure(self.metrics, rid, path, CAUSE_INTERNAL, message, exc)

    @staticmethod
    async def _reply_500(send, rid: str, exc: Exception) -> None:
        message = with_request_id(f"internal server error: {type(exc).__name__}: {exc}", rid)
        data = json.dumps(error_body(message, "server_error")).encode()
        await send({"type": "http.response.start", "status": 500,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
        await send({"type": "http.response.body", "body": data})
