"""The server's listening socket, bound before anything is announced.

`lmkit serve` binds the port first: a busy port is reported as such (and before the model
loads), and "serving … on http://…" is printed only once the address is really ours.
"""

import errno
import socket

from lmkit.errors import LmkitError


class PortUnavailable(LmkitError):
    """The host/port cannot be listened on (in use, not permitted, or no such address)."""


def bind_listen_socket(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port), ready to hand to uvicorn; port 0 picks a free one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET  # as uvicorn chooses
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a restart need not wait
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if isinstance(exc, socket.gaierror):
            raise PortUnavailable(f"cannot listen on {host}:{port}: {host!r} is not a known address") from None
        if exc.errno == errno.EADDRINUSE:
            raise PortUnavailable(f"port {port} on {host} is already in use (another server is listening there); "
                                  "stop it or choose another port with --port") from None
        if exc.errno == errno.EACCES:
            raise PortUnavailable(f"no permission to listen on port {port} on {host} (ports below 1024 need "
                                  "privileges); choose another port with --port") from None
        raise PortUnavailable(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock
