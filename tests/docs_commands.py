"""Run the fenced `lmkit ...` command lines of a Markdown document as a user would: in order,
in one working directory, through bash (so quotes, comments and `&&` mean what they mean in a
shell). `lmkit serve` lines run in the background until the document is done; `lmkit chat`
lines get a message and /exit on stdin. Shared by tests/test_docs_*.py."""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
CHAT_INPUT = "hi\n/exit\n"


def command_lines(doc: Path, block_containing: str | None = None) -> list[str]:
    """The `lmkit ...` lines of the fenced blocks of `doc` (backslash continuations joined),
    only of the block holding `block_containing` when given."""
    lines = []
    for m in FENCE.finditer(doc.read_text(encoding="utf-8")):
        block = m.group(1)
        if block_containing and block_containing not in block:
            continue
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line.startswith("lmkit "):
                lines.append(line)
    return lines


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Outcome:
    line: str
    returncode: int
    output: str


@dataclass
class Session:
    """One document's run: a working directory, an environment and the servers it started.
    Servers listen on a free port instead of 8000 (tests run side by side); the port is
    substituted in every line."""

    cwd: Path
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    servers: list[subprocess.Popen] = field(default_factory=list)

    def environment(self) -> dict[str, str]:
        env = {**os.environ, **self.env}
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        return env

    def localise(self, line: str) -> str:
        line = re.sub(r"(127\.0\.0\.1|localhost):8000\b", rf"\1:{self.port}", line)
        if re.match(r"lmkit serve\b", line):
            line = re.sub(r"\s+#.*$", "", line)  # the comment, then the trailing "&": run in the background here
            line = re.sub(r"--port\s+\d+", "", line).rstrip().rstrip("&").rstrip()
            line += f" --port {self.port}"
        return line

    def run(self, line: str, timeout: float = 900) -> Outcome:
        line = self.localise(line)
        # `lmkit` in the line is this checkout's lmkit, run by this Python
        script = f'lmkit() {{ {shlex.quote(sys.executable)} -m lmkit "$@"; }}\n{line}\n'
        if re.match(r"lmkit serve\b", line):
            return self._serve(line)
        stdin = CHAT_INPUT if re.match(r"lmkit chat\b", line) else ""
        try:
            proc = subprocess.run(["bash", "-c", script], cwd=self.cwd, env=self.environment(), input=stdin,
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            return Outcome(line, -1, f"timed out after {timeout} s\n{exc.stdout or ''}{exc.stderr or ''}")
        return Outcome(line, proc.returncode, proc.stdout + proc.stderr)

    def _serve(self, line: str, wait: float = 300) -> Outcome:
        log = self.cwd / f"serve-{len(self.servers)}.log"
        with open(log, "w") as fh:
            command = f"exec {shlex.quote(sys.executable)} -m {line}"  # exec: the Popen is the server
            proc = subprocess.Popen(["bash", "-c", command],
                                    cwd=self.cwd, env=self.environment(), stdout=fh, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.servers.append(proc)
        key = re.search(r"--api-key\s+(\S+)", line)
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/v1/models")
        if key:
            request.add_header("Authorization", f"Bearer {key.group(1)}")
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return Outcome(line, proc.returncode or 1, log.read_text())
            try:
                with urllib.request.urlopen(request, timeout=5) as r:
                    if r.status == 200:
                        return Outcome(line, 0, log.read_text())
            except OSError:
                time.sleep(0.5)
        return Outcome(line, 1, f"the server did not answer within {wait} s\n{log.read_text()}")

    def close(self) -> None:
        """Stop the servers (SIGTERM, as Ctrl-C would) and wait for them."""
        for proc in self.servers:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
