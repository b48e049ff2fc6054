"""`lmkit chat` and `lmkit serve`, run as a user runs them (subprocesses)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest

from live_server import free_port, start_serve, stop, wait_until_healthy
from test_serve_util import GREETING_REPLY, cached_chat_dir

httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return cached_chat_dir(tmp_path_factory)


def _env(**extra):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.update(extra)
    return env


def test_chat_command_streams_and_keeps_history(model_dir):
    lines = "Say hello.\n/reset\nSay hello.\n\n/exit\nnever read\n"
    proc = subprocess.run([sys.executable, "-m", "lmkit", "chat", str(model_dir), "--temperature", "0"],
                          input=lines, capture_output=True, text=True, timeout=300, env=_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count(GREETING_REPLY) == 2
    assert "conversation cleared" in proc.stderr


def test_chat_command_bad_dir(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "lmkit", "chat", str(tmp_path)], input="", capture_output=True,
                          text=True, timeout=300, env=_env())
    assert proc.returncode != 0 and "Error" in proc.stderr and "Traceback" not in proc.stderr


def test_serve_command_with_env_key_and_sigterm(model_dir):
    port = free_port()
    proc = start_serve(model_dir, port, "--model-name", "cli-model", "--max-batch-size", "2",
                       env=_env(LMKIT_API_KEY="env-key"))
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_healthy(proc, url)
        client = openai.OpenAI(base_url=url + "/v1", api_key="env-key", max_retries=0)
        r = client.chat.completions.create(model="cli-model", messages=[{"role": "user", "content": "Say hello."}],
                                           temperature=0, max_tokens=30)
        assert r.choices[0].message.content == GREETING_REPLY
        assert httpx.get(url + "/v1/models").status_code == 401  # the key from LMKIT_API_KEY is enforced
    finally:
        stop(proc)
    # uvicorn shuts down gracefully, then re-raises the SIGTERM it caught (exit by that signal)
    assert proc.returncode in (0, -signal.SIGTERM)
    assert "serving 'cli-model'" in proc.stderr.read()


def test_serve_on_a_busy_port_says_so_before_announcing_anything(model_dir):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        proc = subprocess.run([sys.executable, "-m", "lmkit", "serve", str(model_dir), "--port", str(port)],
                              capture_output=True, text=True, timeout=300, env=_env())
    finally:
        busy.close()
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert f"port {port} on 127.0.0.1 is already in use" in proc.stderr
    assert "serving" not in proc.stderr and "http://" not in proc.stderr
