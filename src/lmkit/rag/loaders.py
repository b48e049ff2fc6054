"""Document loaders: txt, md, html, pdf, jsonl -> `Document`s that remember their source.

* ``.txt``/``.md`` (and other text suffixes): the whole file, decoded as UTF-8 (a BOM is
  dropped); offsets in later chunks are character offsets into this text.
* ``.html``/``.htm``: the visible text (script/style/head dropped) via beautifulsoup4 when it
  is installed, else the stdlib ``html.parser``; block elements become line breaks.
* ``.pdf``: one Document per page (``page`` is 1-based) via pypdf.
* ``.jsonl``: one Document per record; the text is the record's ``text`` (or ``content``/
  ``page_content``) field, the other fields go into metadata, ``line`` is 1-based.

`load_directory` walks a folder (or takes one file). A file that cannot be read — binary
content under a text suffix, invalid UTF-8, a broken PDF, a bad JSON line, an unknown
suffix — is skipped and listed in the returned `LoadReport` with the reason; nothing stops.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Callable, Iterable

from lmkit.rag.document import Document

TEXT_SUFFIXES = {".txt", ".md", ".markdown", ".rst", ".text"}
HTML_SUFFIXES = {".html", ".htm"}


class LoadError(Exception):
    """A file that cannot be loaded; the loader skips it and reports why."""


@dataclass
class LoadReport:
    loaded: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    def summary(self) -> str:
        lines = [f"loaded {len(self.loaded)} file(s), skipped {len(self.skipped)}"]
        lines += [f"  skipped {p}: {why}" for p, why in self.skipped]
        return "\n".join(lines)


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    if b"\x00" in raw[:8192]:
        raise LoadError("binary file (NUL bytes), not text")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LoadError(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return text.removeprefix("\ufeff")


def load_text(path: str | os.PathLike) -> list[Document]:
    path = Path(path)
    return [Document(_read_text(path), {"source": str(path)})]


_BLOCK_TAGS = {"p", "div", "br", "li", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "table",
               "section", "article", "pre", "blockquote", "header", "footer", "title"}
_SKIP_TAGS = {"script", "style", "head", "noscript", "template"}


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in _SKIP_TAGS:
            self._skip += 1
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in _SKIP_TAGS:
            self._skip = max(0, self._skip - 1)
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self._skip:
            self.parts.append(data)


def _tidy(text: str) -> str:
    lines = [" ".join(line.split()) for line in text.splitlines()]
    out, blank = [], False
    for line in lines:
        if line:
            out.append(line)
            blank = False
        elif not blank and out:
            out.append("")
            blank = True
    return "\n".join(out).strip()


def html_to_text(html: str) -> str:
    """Visible text of an HTML page, one block element per line."""
    try:
        from bs4 import BeautifulSoup
    except ImportError:
        parser = _TextExtractor()
        parser.feed(html)
        parser.close()
        return _tidy("".join(parser.parts))
    soup = BeautifulSoup(html, "html.parser")
    for tag in soup(list(_SKIP_TAGS)):
        tag.decompose()
    for tag in soup.find_all(list(_BLOCK_TAGS)):
        tag.insert_before("\n")
        tag.insert_after("\n")
    return _tidy(soup.get_text())


def load_html(path: str | os.PathLike) -> list[Document]:
    path = Path(path)
    return [Document(html_to_text(_read_text(path)), {"source": str(path)})]


def load_pdf(path: str | os.PathLike) -> list[Document]:
    from lmkit.errors import require

    pypdf = require("pypdf", "rag")
    path = Path(path)
    try:
        reader = pypdf.PdfReader(str(path))
        pages = [(i + 1, page.extract_text() or "") for i, page in enumerate(reader.pages)]
    except Exception as exc:  # pypdf raises many types for broken files
        raise LoadError(f"unreadable PDF ({type(exc).__name__}: {exc})") from None
    return [Document(text, {"source": str(path), "page": n}) for n, text in pages if text.strip()]


def load_jsonl(path: str | os.PathLike, text_keys: Iterable[str] = ("text", "content", "page_content")) -> list[Document]:
    path = Path(path)
    docs = []
    for n, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LoadError(f"line {n}: invalid JSON ({exc.msg})") from None
        if not isinstance(rec, dict):
            raise LoadError(f"line {n}: expected a JSON object, got {type(rec).__name__}")
        key = next((k for k in text_keys if isinstance(rec.get(k), str)), None)
        if key is None:
            raise LoadError(f"line {n}: no text field (looked for {list(text_keys)})")
        meta = {k: v for k, v in rec.items() if k != key}
        meta.update(source=str(path), line=n)
        docs.append(Document(rec[key], meta))
    return docs


def loader_for(path: Path) -> Callable[[Path], list[Document]] | None:
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        return load_text
    if suffix in HTML_SUFFIXES:
        return load_html
    if suffix == ".pdf":
        return load_pdf
    if suffix == ".jsonl":
        return load_jsonl
    return None


def load_file(path: str | os.PathLike) -> list[Document]:
    """Load one file by its suffix; raises LoadError when it cannot."""
    path = Path(path)
    loader = loader_for(path)
    if loader is None:
        raise LoadError(f"unsupported file type {path.suffix or '(no suffix)'!r}")
    try:
        return loader(path)
    except OSError as exc:
        raise LoadError(f"cannot read ({exc.strerror or exc})") from None


def load_directory(path: str | os.PathLike, recursive: bool = True) -> tuple[list[Document], LoadReport]:
    """Every loadable file under `path` (sorted), and a report of what was skipped and why."""
    root = Path(path)
    report = LoadReport()
    if root.is_file():
        files = [root]
    elif root.is_dir():
        files = sorted(p for p in (root.rglob("*") if recursive else root.iterdir()) if p.is_file())
    else:
        raise FileNotFoundError(f"{root}: no such file or directory")
    docs: list[Document] = []
    for f in files:
        if f.name.startswith("."):
            continue
        try:
            got = load_file(f)
        except LoadError as exc:
            report.skipped.append((str(f), str(exc)))
            continue
        docs.extend(got)
        report.loaded.append(str(f))
    return docs, report
