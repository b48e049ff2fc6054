"""Errors in OpenAI's shape: the exception routes raise, the body, and the app's handlers.

Every 4xx/5xx body is ``{"error": {"message", "type", "param", "code"}}``, FastAPI's own
validation errors included (as 400, like OpenAI). A 5xx message ends with the request id
(also sent as the ``x-request-id`` header), so a user's bug report can be matched to the
server log line that holds the traceback.
"""

import json

from lmkit.serve.failure_log import CAUSE_INTERNAL, REQUEST_ID_HEADER, report_failure

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error",
               422: "invalid_request_error", 429: "rate_limit_error", 503: "server_error"}


class APIError(Exception):
    """An error answered in OpenAI's shape.

    cause: for a 5xx, the failure cause counted in /metrics (see `failure_log`).
    """

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, cause: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.cause = cause


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's error object."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_type(status: int) -> str:
    """OpenAI's error `type` for an HTTP status."""
    return ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")


def with_request_id(message: str, request_id: str | None) -> str:
    """A 5xx message naming the request id (the key to the server log)."""
    return f"{message} (request id {request_id})" if request_id else message


def error_response(status: int, message: str, type_: str | None = None, param: str | None = None,
                   code: str | None = None, request_id: str | None = None):
    """A JSONResponse in OpenAI's shape; a 5xx message names `request_id`."""
    from fastapi.responses import JSONResponse

    if status >= 500:
        message = with_request_id(message, request_id)
    headers = {REQUEST_ID_HEADER: request_id} if request_id else None
    return JSONResponse(error_body(message, type_ or error_type(status), param, code), status_code=status,
                        headers=headers)


def validation_message(errors: list[dict]) -> tuple[str, str | None, str]:
    """(message, param, code) for pydantic's validation errors: the first five, by field path."""
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        detail = (first.get("ctx") or {}).get("error", "")
        return f"the request body is not valid JSON ({detail} at position {first['loc'][-1]})", None, "invalid_json"
    parts, param = [], None
    for e in errors[:5]:
        loc = [str(x) for x in e.get("loc", ()) if x != "body"]
        where = ".".join(loc) or "body"
        param = param or where
        parts.append(f"{where}: {e.get('msg')}")
    return "invalid request: " + "; ".join(parts), param, "invalid_value"


def _request_id(request) -> str | None:
    return getattr(request.state, "request_id", None)


async def on_api_error(request, exc: APIError):
    if exc.status >= 500:
        report_failure(request, exc.cause or CAUSE_INTERNAL, exc.message, exc)
    return error_response(exc.status, exc.message, exc.type, exc.param, exc.code, _request_id(request))


async def on_validation_error(request, exc):
    message, param, code = validation_message(exc.errors())
    return error_response(400, message, param=param, code=code)


async def on_http_error(request, exc):
    msg = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
    if exc.status_code == 404:
        msg = f"no route {request.method} {request.url.path} ({msg})"
    if exc.status_code >= 500:
        report_failure(request, CAUSE_INTERNAL, msg, exc)
    return error_response(exc.status_code, msg, request_id=_request_id(request))


async def on_crash(request, exc: Exception):
    """Last resort (Starlette's ServerErrorMiddleware); `RequestTracker` normally answers first."""
    report_failure(request, CAUSE_INTERNAL, f"{type(exc).__name__}: {exc}", exc)
    return error_response(500, f"internal server error: {type(exc).__name__}: {exc}", "server_error",
                          request_id=_request_id(request))


def add_error_handlers(app) -> None:
    """Answer every error `app` raises in OpenAI's shape."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(Exception, on_crash)
