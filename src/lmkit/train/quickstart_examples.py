"""Example inputs that the quickstart leaves beside its model, so that every line of the
README's "life of a model" runs as printed, without a download:

* `chat.jsonl` - OpenAI-messages SFT data ("Explain TERM." -> its definition), taken from the
  term/definition pairs of the corpus (`lmkit finetune`, `lmkit sft`);
* `held_out.txt` - English text the model never trained on: lmkit's own docstrings
  (`lmkit eval ppl`);
* `docs/` - a few Markdown files of those definitions, one `##` section each (`lmkit rag index`).
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

from lmkit.atomic import atomic_write_text

DOC_FILES = 4  # Markdown files in docs/; small, so that indexing them takes seconds
HELD_OUT_CHARS = 20_000  # enough for a stable perplexity, quick to score


def definitions(text: str) -> list[tuple[str, str]]:
    """(term, definition) pairs of the Python reference: a short unindented line followed by an
    indented paragraph that reads as a sentence."""
    paragraphs = text.split("\n\n")
    pairs, seen = [], set()
    for term, body in zip(paragraphs, paragraphs[1:]):
        term_line = term.strip()
        if ("\n" in term_line or not 2 <= len(term_line) <= 60 or term.startswith(" ")
                or term_line.endswith((":", "to", ",")) or not body.startswith("   ")):
            continue
        definition = " ".join(body.split())
        if 40 <= len(definition) <= 400 and definition[0].isupper() and definition.endswith(".") \
                and term_line not in seen:
            seen.add(term_line)
            pairs.append((term_line, definition))
    return pairs


def lmkit_docstrings() -> str:
    """About HELD_OUT_CHARS of the docstrings of lmkit's own modules, classes and functions:
    English prose that is not in the quickstart's corpus."""
    package = Path(__file__).resolve().parents[1]
    chunks = []
    for path in sorted(package.rglob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in [tree, *ast.walk(tree)]:
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= 80:
                    chunks.append(re.sub(r"[ \t]+\n", "\n", doc.strip()))
    text, size = [], 0
    for chunk in dict.fromkeys(chunks):
        if size >= HELD_OUT_CHARS:
            break
        text.append(chunk)
        size += len(chunk) + 2
    return "\n\n".join(text) + "\n"


def write_example_data(out_dir: str | Path, text: str) -> dict[str, Path]:
    """Write chat.jsonl, held_out.txt and docs/ under `out_dir` from the corpus `text`;
    returns their paths by name."""
    out_dir = Path(out_dir)
    pairs = definitions(text)
    chat = out_dir / "chat.jsonl"
    atomic_write_text(chat, "".join(
        json.dumps({"messages": [{"role": "user", "content": f"Explain {term}."},
                                 {"role": "assistant", "content": definition}]}, ensure_ascii=False) + "\n"
        for term, definition in pairs))
    held_out = out_dir / "held_out.txt"
    atomic_write_text(held_out, lmkit_docstrings())
    docs = out_dir / "docs"
    docs.mkdir(exist_ok=True)
    per_file = max(1, -(-len(pairs) // DOC_FILES))
    for i in range(DOC_FILES):
        part = pairs[i * per_file:(i + 1) * per_file]
        body = "".join(f"## {term}\n\n{definition}\n\n" for term, definition in part)
        atomic_write_text(docs / f"python_terms_{i + 1}.md", f"# Python terms, part {i + 1}\n\n{body}")
    return {"chat": chat, "held_out": held_out, "docs": docs}
