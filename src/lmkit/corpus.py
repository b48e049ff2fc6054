"""Text corpora built deterministically from what every lmkit install has, so tests, benchmarks
and the quickstart need nothing beside the repository.

* `english_text()`: Python's language reference topics (pydoc_data) + the longer docstrings of
  the standard library (~1.7 MB); the quickstart trains on it.
* `code_text()`: the standard library's source files, sorted by path (~13 MB).
* `chinese_text()`: the Chinese LLM notes shipped as package data in ``corpus_data/notes``
  (~0.3 MB); `notes_dir()` is that directory, for loaders that want the files.
* `mixed_text()`: the three interleaved by paragraph, cut at 8,000,000 characters.

Same Python version -> byte-identical text, so figures taken on different machines are taken
on the same text. `write_corpora(directory)` caches them as en.txt, code.txt, zh.txt, mixed.txt.
"""

from __future__ import annotations

import ast
import os
import sysconfig
from pathlib import Path

from lmkit.atomic import atomic_write_bytes
from lmkit.errors import LmkitError

CORPUS_FILES = ("en.txt", "code.txt", "zh.txt", "mixed.txt")
MIXED_LIMIT = 8_000_000
_SKIP_DIRS = {"site-packages", "test", "tests", "idlelib", "lib2to3"}


def notes_dir() -> Path:
    """The directory of the Chinese LLM notes (``*.txt``) shipped inside the package."""
    return Path(__file__).resolve().parent / "corpus_data" / "notes"


def _stdlib_files() -> list[Path]:
    """The standard library's ``.py`` files, sorted, without tests, IDLE, lib2to3 and site-packages."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return [p for p in sorted(root.rglob("*.py")) if not _SKIP_DIRS & set(p.parts)]


def english_text() -> str:
    """English text every Python install has: the language reference topics shipped in
    pydoc_data, then the longer docstrings of the standard library's modules."""
    from pydoc_data.topics import topics

    parts = [topics[k] for k in sorted(topics)]
    for path in _stdlib_files():
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 200:
                    parts.append(doc)
    return "\n\n".join(p.strip() for p in parts) + "\n"


def code_text() -> str:
    """Python source: the standard library's files, sorted by path, joined by newlines."""
    out = []
    for path in _stdlib_files():
        try:
            out.append(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, OSError):
            continue
    return "\n".join(out)


def chinese_text() -> str:
    """Chinese prose: the LLM notes shipped with lmkit, in file-name order."""
    files = sorted(notes_dir().glob("*.txt"))
    if not files:
        raise LmkitError(f"no notes in {notes_dir()}: lmkit was installed without its package data "
                         "(corpus_data/notes/*.txt); reinstall it from a complete source tree")
    return "\n".join(p.read_text(encoding="utf-8") for p in files)


def mixed_text(en: str | None = None, code: str | None = None, zh: str | None = None,
               limit: int = MIXED_LIMIT) -> str:
    """English, code and Chinese interleaved paragraph by paragraph (round-robin), cut at `limit`
    characters. Pass texts already built to skip rebuilding them."""
    texts = (en if en is not None else english_text(), code if code is not None else code_text(),
             zh if zh is not None else chinese_text())
    streams = [t.split("\n\n") for t in texts]
    out, size, i = [], 0, 0
    while size < limit and any(streams):
        stream = streams[i % 3]
        if stream:
            para = stream.pop(0)
            out.append(para)
            size += len(para.encode("utf-8")) + 2
        i += 1
    return "\n\n".join(out)[:limit]


def write_corpora(directory: str | os.PathLike) -> Path:
    """Write en.txt, code.txt, zh.txt and mixed.txt into `directory` (created if needed) and
    return it. Files already there are kept (a cache); each new one appears atomically, whole."""
    out = Path(directory)
    missing = {name for name in CORPUS_FILES if not (out / name).exists()}
    sources: dict[str, str] = {}
    for name, build in (("en.txt", english_text), ("code.txt", code_text), ("zh.txt", chinese_text)):
        if name in missing:
            sources[name] = build()
            atomic_write_bytes(out / name, sources[name].encode("utf-8"))
        elif "mixed.txt" in missing:  # mixed is built from the other three
            sources[name] = (out / name).read_text(encoding="utf-8")
    if "mixed.txt" in missing:
        mixed = mixed_text(sources["en.txt"], sources["code.txt"], sources["zh.txt"])
        atomic_write_bytes(out / "mixed.txt", mixed.encode("utf-8"))
    return out
