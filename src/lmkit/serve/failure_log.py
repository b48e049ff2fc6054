"""Server failures: each 5xx is logged with its request id and traceback, and counted by cause.

The logger `lmkit.serve.failures` is set to ERROR on its own, so `--log-level critical`
(which quiets uvicorn's loggers) never hides a failure; with no logging configured, Python's
last-resort handler writes it to stderr. /metrics counts the failures as
``lmkit_request_failures_total{path, cause}``.

Causes:
    generation_failed   the engine failed while generating (a bug, out of memory, ...)
    overloaded          the waiting queue was full (503)
    shutting_down       the engine was stopping and took no new work (503)
    internal_error      anything else the HTTP layer did not expect
"""

import logging
import re
import uuid

LOG = logging.getLogger("lmkit.serve.failures")
if LOG.level == logging.NOTSET:
    LOG.setLevel(logging.ERROR)

CAUSE_GENERATION = "generation_failed"
CAUSE_OVERLOADED = "overloaded"
CAUSE_SHUTTING_DOWN = "shutting_down"
CAUSE_INTERNAL = "internal_error"

REQUEST_ID_HEADER = "x-request-id"
_CLIENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def new_request_id(given: str | None = None) -> str:
    """The id of a request: the client's own `x-request-id` when it is a plain token, else a new one."""
    if given and _CLIENT_ID.fullmatch(given):
        return given
    return "req_" + uuid.uuid4().hex


def log_failure(metrics, request_id: str | None, path: str, cause: str, message: str,
                exc: BaseException | None = None) -> None:
    """Log one failed request (with `exc`'s traceback) and count it in `metrics`."""
    if metrics is not None:
        metrics.observe_failure(path, cause)
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    LOG.error("request %s to %s failed (%s): %s", request_id or "-", path, cause, message, exc_info=exc_info)


def report_failure(request, cause: str, message: str, exc: BaseException | None = None) -> None:
    """`log_failure` for a Starlette request; marks it so the middleware does not log it twice."""
    state = request.state
    if getattr(state, "failure_reported", False):
        return
    state.failure_reported = True
    metrics = getattr(request.app.state, "metrics", None)
    log_failure(metrics, getattr(state, "request_id", None), request.url.path, cause, message, exc)
