"""What every route needs to know about the served model, kept on `app.state.server`."""

import time
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request

from lmkit.serve.metrics import Metrics


@dataclass
class ServerState:
    """The engine, the public model name and the request limits, shared by the routes.

    embedder: the `ModelEmbedder` behind /v1/embeddings (made from the engine's model on
    first use when None). engine None: an embeddings-only server (a CLIP model).
    """

    engine: Any
    model_name: str
    template: Any  # a resolved ChatTemplate or the checkpoint's JinjaChatTemplate
    default_max_tokens: int = 256
    max_n: int = 16
    embedder: Any = None
    moderation: Any = None  # a ModerationGate (moderation_gate.py), or None: no moderation
    vision_model: Any = None  # a VisionLanguageModel whose decoder the engine runs: chat with images (image_chat.py)
    metrics: Metrics = field(default_factory=Metrics)
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def model(self):
        return self.engine.model

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    @property
    def context(self) -> int:
        if self.engine is None:  # an embeddings-only server: the embedder's input length
            return self.embedder.max_len
        return self.model.config.max_seq_len


def server_state(request: Request) -> ServerState:
    """FastAPI dependency: the `ServerState` of the app serving `request`."""
    return request.app.state.server
