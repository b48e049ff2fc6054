"""lmkit.serve — serving a model: an OpenAI-compatible HTTP server with continuous batching,
a web chat page, tool calling, and a `ChatModel` interface for RAG and agent code.

    lmkit serve MODEL_DIR --api-key KEY          # http://127.0.0.1:8000/ and /v1
    lmkit chat MODEL_DIR                         # terminal chat

    from lmkit.serve import LocalChatModel, OpenAIChatModel
    from lmkit.serve.engine import Engine         # the batching engine (torch)
    from lmkit.serve.app import create_app        # the FastAPI app (needs lmkit[serve])

This package is imported by every `lmkit` command (for its CLI), so only light modules are
imported here; the rest load on first use. See docs/serving.md.
"""

from lmkit.serve.chat_model import ChatModel, ChatModelError, ChatResult, LocalChatModel, OpenAIChatModel
from lmkit.serve.tool_calls import parse_tool_calls, render_tools_prompt

__all__ = ["ChatModel", "ChatModelError", "ChatResult", "LocalChatModel", "OpenAIChatModel", "parse_tool_calls",
           "render_tools_prompt", "Engine", "create_app"]


def __getattr__(name: str):
    if name == "Engine":
        from lmkit.serve.engine import Engine

        return Engine
    if name == "create_app":
        from lmkit.serve.app import create_app

        return create_app
    raise AttributeError(f"module 'lmkit.serve' has no attribute {name!r}")
