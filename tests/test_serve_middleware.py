"""The server's middleware (`Guard`, `RequestTracker`) called as plain ASGI apps, without a server."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from lmkit.serve.guard import Guard
from lmkit.serve.metrics import Metrics
from lmkit.serve.request_tracking import RequestTracker

pytest.importorskip("starlette")


def call(app, path="/v1/models", headers=(), body=b""):
    """Run one HTTP request through `app`; returns (status, headers dict, body bytes, scope)."""
    scope = {"type": "http", "method": "POST", "path": path, "headers": list(headers)}
    sent = []
    chunks = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        return chunks.pop(0) if chunks else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    data = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start.get("headers") or []), data, scope


async def ok_app(scope, receive, send):
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


def test_guard_checks_bearer_keys_on_v1_only():
    guard = Guard(ok_app, api_keys=["k1", "k2"])
    status, _, body, _ = call(guard)
    assert status == 401 and "missing API key" in json.loads(body)["error"]["message"]
    assert call(guard, headers=[(b"authorization", b"Bearer nope")])[0] == 401
    assert call(guard, headers=[(b"authorization", b"Basic k1")])[0] == 401
    assert call(guard, headers=[(b"authorization", b"Bearer k2")])[0] == 200
    assert call(guard, path="/health")[0] == 200
    assert call(Guard(ok_app, api_keys=None))[0] == 200
    assert call(Guard(ok_app, api_keys="single"), headers=[(b"authorization", b"bearer single")])[0] == 200


def test_guard_refuses_large_bodies_by_header():
    guard = Guard(ok_app, max_body_bytes=10)
    assert call(guard, headers=[(b"content-length", b"5")], body=b"12345")[0] == 200
    status, _, body, _ = call(guard, headers=[(b"content-length", b"11")], body=b"x" * 11)
    assert status == 413 and json.loads(body)["error"]["code"] == "request_too_large"
    assert call(guard, headers=[(b"content-length", b"ten")])[0] == 400


def test_guard_refuses_a_chunked_body_once_it_grows_over_the_limit():
    from starlette.exceptions import HTTPException

    guard = Guard(ok_app, max_body_bytes=10)
    with pytest.raises(HTTPException) as exc:  # the app's error handlers turn it into a 413
        call(guard, body=b"x" * 11)
    assert exc.value.status_code == 413


def test_tracker_gives_every_response_a_request_id_and_counts_v1_requests():
    metrics = Metrics()
    tracker = RequestTracker(ok_app, metrics=metrics)
    status, headers, _, scope = call(tracker)
    rid = headers[b"x-request-id"].decode()
    assert status == 200 and rid.startswith("req_") and scope["state"]["request_id"] == rid
    assert call(tracker, headers=[(b"x-request-id", b"client-42")])[1][b"x-request-id"] == b"client-42"
    forged = call(tracker, headers=[(b"x-request-id", b"bad id\nwith newline")])[1][b"x-request-id"]
    assert forged.startswith(b"req_")  # not a plain token: replaced
    call(tracker, path="/health")
    assert metrics.requests == {("/v1/models", "200"): 3}


def test_tracker_answers_an_uncaught_exception_with_a_logged_500(caplog):
    async def broken(scope, receive, send):
        raise RuntimeError("boom")

    metrics = Metrics()
    with caplog.at_level(logging.ERROR, logger="lmkit.serve.failures"):
        status, headers, body, _ = call(RequestTracker(broken, metrics=metrics), path="/v1/completions")
    rid = headers[b"x-request-id"].decode()
    error = json.loads(body)["error"]
    assert status == 500 and error["type"] == "server_error"
    assert "RuntimeError: boom" in error["message"] and rid in error["message"]
    (record,) = [r for r in caplog.records if r.name == "lmkit.serve.failures"]
    assert rid in record.getMessage() and record.exc_info and record.exc_info[0] is RuntimeError
    assert metrics.failures == {("/v1/completions", "internal_error"): 1}
    assert metrics.requests == {("/v1/completions", "500"): 1}


def test_tracker_logs_a_5xx_that_nobody_reported(caplog):
    async def answers_502(scope, receive, send):
        await send({"type": "http.response.start", "status": 502, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    metrics = Metrics()
    with caplog.at_level(logging.ERROR, logger="lmkit.serve.failures"):
        call(RequestTracker(answers_502, metrics=metrics), path="/v1/models")
    assert any("answered 502" in r.getMessage() for r in caplog.records)
    assert metrics.failures == {("/v1/models", "internal_error"): 1}


def test_failures_show_whatever_the_root_log_level():
    root = logging.getLogger()
    old = root.level
    root.setLevel(logging.CRITICAL)
    try:
        assert logging.getLogger("lmkit.serve.failures").isEnabledFor(logging.ERROR)
    finally:
        root.setLevel(old)
