"""`lmkit serve` in a subprocess for end-to-end tests: a free port, start, wait for /health, stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx


def free_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def start_serve(model_dir, port: int, *args: str, stdout=subprocess.PIPE, env: dict | None = None) -> subprocess.Popen:
    """`python -m lmkit serve MODEL_DIR --port PORT --log-level warning ARGS...`, one torch thread."""
    return subprocess.Popen([sys.executable, "-m", "lmkit", "serve", str(model_dir), "--port", str(port), *args,
                             "--log-level", "warning"], stdout=stdout, stderr=subprocess.PIPE, text=True,
                            env=env if env is not None else dict(os.environ, OMP_NUM_THREADS="1"))


def wait_until_healthy(proc: subprocess.Popen, url: str, timeout: float = 240, poll: float = 0.3) -> None:
    """Poll /health; fail with the server's stderr if it exits, or after `timeout` seconds."""
    deadline = time.time() + timeout
    while True:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.time() < deadline, "server did not come up"
        time.sleep(poll)


def stop(proc: subprocess.Popen, raise_on_timeout: bool = True) -> None:
    """SIGTERM (graceful shutdown), then kill after 60 s."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        if raise_on_timeout:
            raise
