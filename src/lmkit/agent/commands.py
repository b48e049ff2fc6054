"""`lmkit agent`: ask a tool-using agent a question, locally or through an OpenAI-compatible server."""

from __future__ import annotations

import importlib
import json
import os
import sys

import click


def _user_tool(spec: str):
    """'package.module:function' -> the function (a typed, documented Python function)."""
    module, _, name = spec.partition(":")
    if not module or not name:
        raise click.BadParameter(f"{spec!r}: write module:function, e.g. mytools:weather", param_hint="--tool")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise click.BadParameter(f"cannot load {spec!r}: {exc}", param_hint="--tool") from None


@click.command("agent")
@click.argument("question", required=False)
@click.option("--model-dir", type=click.Path(exists=True, file_okay=False),
              help="Run a local Hugging Face checkpoint (with tokenizer.json).")
@click.option("--base-url", help="An OpenAI-compatible endpoint instead, e.g. http://127.0.0.1:8000/v1.")
@click.option("--model", "model_name", default=None,
              help="Model name sent to --base-url (default: the one model the server lists at /v1/models).")
@click.option("--api-key", envvar="LMKIT_API_KEY", default=None, help="API key for --base-url (or $LMKIT_API_KEY).")
@click.option("--template", default=None,
              help="Chat template of a local model: its own (default), one of its named ones, chatml or llama3.")
@click.option("--mode", type=click.Choice(["function", "react"]), default="function", show_default=True,
              help="Native function calling, or the text ReAct loop for models without it.")
@click.option("--index", "index_dir", type=click.Path(exists=True, file_okay=False),
              help="A RAG index (lmkit rag index) to give the agent as a search tool.")
@click.option("--tool", "tool_specs", multiple=True, help="Extra tool module:function (repeatable).")
@click.option("--max-steps", type=click.IntRange(1), default=8, show_default=True)
@click.option("--max-tokens", type=click.IntRange(1), default=None,
              help="Longest reply per step (default: what the model's context leaves after the prompt, at most "
                   "512 for --model-dir; the server's choice for --base-url).")
@click.option("--verbose", "-v", is_flag=True, help="Print each tool call and its result.")
@click.option("--json", "as_json", is_flag=True, help="Print {answer, steps, stop_reason} as JSON.")
def agent_cmd(question, model_dir, base_url, model_name, api_key, template, mode, index_dir, tool_specs,
              max_steps, max_tokens, verbose, as_json) -> None:
    """Answer QUESTION with a tool-using agent (calculator, document search, your tools).

    Without QUESTION, chat interactively (the agent remembers the conversation; /exit quits).
    """
    from lmkit.agent.calculator import calculator_tool
    from lmkit.agent.function_calling import FunctionCallingAgent
    from lmkit.agent.react import ReActAgent
    from lmkit.agent.tools import Tool
    from lmkit.rag.chat_client import open_chat_model

    if bool(model_dir) == bool(base_url):
        raise click.UsageError("give exactly one of --model-dir and --base-url")
    user_tools = [_user_tool(s) for s in tool_specs]  # a bad --tool is a usage error, before any network call
    tools: list = [calculator_tool()]
    if index_dir:
        from lmkit.agent.retrieval_tool import retrieval_tool
        from lmkit.rag.index import RagIndex

        tools.append(retrieval_tool(RagIndex.open(index_dir)))
    tools += [Tool.from_function(fn) for fn in user_tools]
    chat_model = open_chat_model(base_url, model_name, api_key, local=model_dir, template=template)
    cls = FunctionCallingAgent if mode == "function" else ReActAgent
    agent = cls(chat_model, tools, max_steps=max_steps, max_tokens=max_tokens)  # None: sized to the context

    def ask(q: str) -> None:
        result = agent.run(q)
        if as_json:
            click.echo(json.dumps({"answer": result.answer, "stop_reason": result.stop_reason,
                                   "steps": [{"tool": s.tool, "arguments": s.arguments, "observation": s.observation}
                                             for s in result.steps]}, ensure_ascii=False))
            return
        if verbose:
            for s in result.steps:
                args = s.arguments if isinstance(s.arguments, str) else json.dumps(s.arguments, ensure_ascii=False)
                click.echo(click.style(f"→ {s.tool}({args})", fg="cyan"), err=True)
                click.echo(click.style(f"  {s.observation}", fg="bright_black"), err=True)
        click.echo(result.answer)
        if result.stop_reason != "answer":
            click.echo(f"(stopped: {result.stop_reason})", err=True)

    if question:
        ask(question)
        return
    interactive = sys.stdin.isatty() and not os.environ.get("LMKIT_NO_TTY")
    while True:
        try:
            q = input("you> ") if interactive else sys.stdin.readline()
        except EOFError:
            break
        if not interactive and q == "":
            break
        q = q.strip()
        if q in ("/exit", "/quit"):
            break
        if q:
            ask(q)


COMMANDS = [agent_cmd]
