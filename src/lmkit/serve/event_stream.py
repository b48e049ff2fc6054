"""Server-Sent Event responses, and the event that ends a stream the engine failed."""

from lmkit.serve.api_errors import error_body, with_request_id
from lmkit.serve.failure_log import CAUSE_GENERATION, report_failure
from lmkit.serve.openai_format import sse

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def event_stream_response(events):
    """A `text/event-stream` response that proxies do not buffer."""
    from fastapi.responses import StreamingResponse

    return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)


def failure_event(request, message: str, exc: BaseException | None = None) -> bytes:
    """The error event for a choice the engine failed mid-stream (logged with `exc`'s traceback
    and counted, with the request id)."""
    report_failure(request, CAUSE_GENERATION, message, exc)
    return sse(error_body(with_request_id(message, getattr(request.state, "request_id", None)), "server_error"))
