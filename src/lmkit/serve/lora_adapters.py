"""The server's LoRA adapters: which one a request asks for, and which are in use.

`lmkit serve MODEL --lora sql=adapters/sql --lora chat=adapters/chat` (or `--enable-lora` to
start with none) wraps the model's target layers in `peft.multi_lora.MultiLoraLinear`, and
every request picks its adapter, as in vLLM and llama-server:

    model: "sql"  or  model: "BASE:sql"     (BASE: the served model name)
    lora: "sql"                             (an extra body field; the OpenAI clients send it
                                             with extra_body={"lora": "sql"})

Requests for different adapters share one batch: the engine passes each row's adapter id
to the layers (`Engine._adapter_rows`). Adapters are loaded and removed at runtime
(routes_adapters.py). A request *leases* its adapter from submit until its last event or its
cancellation; an adapter with live leases is not removed (409: retry once they finish), so
no request ever loses its adapter mid-way.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any, Callable

from lmkit.errors import ConfigError
from lmkit.peft.multi_lora import MultiLora
from lmkit.serve.api_errors import APIError


@dataclass
class _Lease:
    name: str
    handle: Any  # the engine's RequestHandle (its `cancelled` ends the lease too)
    finished: bool = False

    @property
    def live(self) -> bool:
        return not self.finished and not self.handle.cancelled


class AdapterRegistry:
    """The `lora` object of an `Engine`: named adapters of its model, with leases per request."""

    def __init__(self, model, base_name: str = "") -> None:
        self.multi = MultiLora(model)
        self.base_name = base_name
        self._leases: list[_Lease] = []
        self._lock = threading.RLock()

    @property
    def names(self) -> list[str]:
        return self.multi.names

    def __contains__(self, name: str) -> bool:
        return name in self.multi

    def path(self, name: str) -> str | None:
        return self.multi.paths.get(name)

    # ---- the engine's side ----------------------------------------------------------------
    def lease(self, name: str, handle, callback: Callable) -> tuple[int, Callable]:
        """(adapter id, callback that ends the lease on the request's last event); ConfigError if unknown."""
        with self._lock:
            aid = self.multi.id(name)
            lease = _Lease(name, handle)
            self._leases = [x for x in self._leases if x.live] + [lease]

        def on_event(ev) -> None:
            if ev.finish_reason is not None or ev.error is not None:
                lease.finished = True
            callback(ev)

        return aid, on_event

    def rows(self, ids, device=None):
        return self.multi.rows(ids, device)

    def in_use(self, name: str) -> int:
        """Requests (queued or running) holding adapter `name`."""
        with self._lock:
            self._leases = [x for x in self._leases if x.live]
            return sum(x.name == name for x in self._leases)

    # ---- loading and removing -------------------------------------------------------------
    def load(self, name: str, path: str | os.PathLike) -> int:
        """Load the adapter folder `path` as `name`. No lock of the engine's is held while the
        folder is read (submissions lease under self._lock while holding the engine's lock)."""
        if name == self.base_name:
            raise ConfigError(f"adapter name {name!r} is the served model's own name; pick another")
        return self.multi.load(name, path)

    def remove(self, name: str) -> None:
        """Unload adapter `name`; APIError 404 if unknown, 409 while requests use it."""
        with self._lock:
            if name not in self.multi:
                raise unknown_adapter(name, self, "name")
            n = self.in_use(name)
            if n:
                raise APIError(409, f"adapter {name!r} is in use by {n} request(s); retry when they finish",
                               param="name", code="adapter_in_use")
            self.multi.remove(name)


def unknown_adapter(name: str, registry: AdapterRegistry | None, param: str) -> APIError:
    loaded = sorted(registry.names) if registry is not None else []
    return APIError(404, f"no LoRA adapter named {name!r}; loaded: {loaded or 'none'}", "invalid_request_error",
                    param, "adapter_not_found")


def select_adapter(req, model_name: str, registry: AdapterRegistry | None) -> str | None:
    """The adapter a completion or chat request asks for (None: the base model).

    `model` may name the served model, an adapter, or "MODEL:ADAPTER"; the extra field `lora`
    names an adapter too. Unknown names are OpenAI's 404 model_not_found (adapter_not_found
    for `lora`); a `model` and a `lora` that disagree are a 400.
    """
    requested = req.model or ""
    extra = getattr(req, "model_extra", None) or {}
    field = extra.get("lora")
    if field is not None and (not isinstance(field, str) or not field):
        raise APIError(400, "lora must be the name of a loaded LoRA adapter (a string)", param="lora")
    chosen = None
    if requested and requested != model_name:
        name = requested[len(model_name) + 1:] if requested.startswith(model_name + ":") else requested
        if registry is None or name not in registry:
            adapters = f" or one of its LoRA adapters {sorted(registry.names)}" if registry and registry.names else ""
            raise APIError(404, f"the model {requested!r} does not exist; this server serves {model_name!r}{adapters}",
                           "invalid_request_error", "model", "model_not_found")
        chosen = name
    if field is not None:
        if registry is None:
            raise APIError(400, "this server serves no LoRA adapters (start it with --lora NAME=PATH or "
                                "--enable-lora)", param="lora")
        if field not in registry:
            raise unknown_adapter(field, registry, "lora")
        if chosen is not None and chosen != field:
            raise APIError(400, f"model names adapter {chosen!r} but lora names {field!r}; give one", param="lora")
        chosen = field
    return chosen


def adapter_cards(registry: AdapterRegistry | None, base_card: dict) -> list[dict]:
    """/v1/models entries of the loaded adapters (vLLM's shape: parent = the base model, root = the folder)."""
    if registry is None:
        return []
    return [{**base_card, "id": name, "parent": base_card["id"], "root": registry.path(name)}
            for name in registry.names]
