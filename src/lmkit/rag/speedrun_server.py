"""The real `lmkit serve` in a subprocess on a free port, for the speedrun's smoke test: the
same command a user types, reached through the official `openai` client.

`--port 0` lets the server pick a free port; it prints the one it took on stderr ("... on
http://HOST:PORT"), which is read here, then /health is polled until the model is loaded.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from lmkit.rag.speedrun_measure import SpeedrunError, process_peak_rss

_ANNOUNCE = re.compile(r" on http://([^:\s]+):(\d+)")


class ServedModel:
    """`with ServedModel(model_dir) as s:` -> s.base_url is http://127.0.0.1:PORT/v1."""

    def __init__(self, model_dir: str | Path, model_name: str = "speedrun", timeout: float = 180.0) -> None:
        self.model_dir, self.model_name, self.timeout = str(model_dir), model_name, timeout
        self.proc: subprocess.Popen | None = None
        self.log: list[str] = []
        self.base_url = ""
        self.startup_s = 0.0
        self._port = threading.Event()

    def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line.rstrip())
            m = _ANNOUNCE.search(line)
            if m and not self.base_url:
                self.base_url = f"http://{m.group(1)}:{m.group(2)}/v1"
                self._port.set()

    def __enter__(self) -> "ServedModel":
        import httpx

        t0 = time.perf_counter()
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lmkit", "serve", self.model_dir, "--port", "0", "--model-name", self.model_name,
             "--max-batch-size", "2", "--threads", "1", "--log-level", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        threading.Thread(target=self._read_stderr, daemon=True).start()
        deadline = time.monotonic() + self.timeout
        while True:
            if self.proc.poll() is not None:
                time.sleep(0.2)
                raise SpeedrunError("lmkit serve exited before it was ready: " + " | ".join(self.log[-5:]))
            if time.monotonic() > deadline:
                self.stop()
                raise SpeedrunError(f"lmkit serve was not ready within {self.timeout:.0f} s")
            if self._port.is_set():
                try:
                    if httpx.get(self.base_url[:-3] + "/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
            time.sleep(0.1)
        self.startup_s = time.perf_counter() - t0
        return self

    def peak_rss(self) -> int | None:
        return process_peak_rss(self.proc.pid) if self.proc is not None else None

    def stop(self) -> int | None:
        """SIGTERM (graceful shutdown), then kill after 30 s; returns the exit status."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc is not None else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        return self.proc.returncode

    def __exit__(self, *exc) -> None:
        self.stop()

    def chat(self, messages: list[dict], max_tokens: int = 48) -> tuple[str, str]:
        """One chat completion through the official openai client: (reply, finish_reason)."""
        import openai

        client = openai.OpenAI(base_url=self.base_url, api_key="unused", max_retries=0, timeout=120)
        r = client.chat.completions.create(model=self.model_name, messages=messages, temperature=0,
                                           max_tokens=max_tokens)
        return r.choices[0].message.content or "", r.choices[0].finish_reason or ""
