"""No doc points at a file that is not there: every markdown link, every repository path
(`src/...`, `tests/...`, `docs/...`, `bench/...`, `lmkit/...`, `align/ppo.py`, ...) and every
backticked `name.py` in README.md and docs/*.md names something that exists, and a
`tests/test_x.py::test_name` names a test that exists. Docs drifted once (docs/parts/*.md never
existed); this keeps them honest."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PACKAGE = ROOT / "src" / "lmkit"
SUBPACKAGES = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists())

# Paths the docs name on purpose although the repository does not hold them, with the reason.
NOT_IN_THE_REPO = {
    "bench/corpus": "written on first use by lmkit.corpus.write_corpora (docs/benchmarks.md says so)",
}
# Bare file names that belong to other projects or to the past, with the reason.
OTHER_FILES = {
    "convert_hf_to_gguf.py": "llama.cpp's converter, compared against in docs/quantization.md",
    "make_corpus.py": "the script the corpus came from before lmkit.corpus; named as history",
}

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
REPO_PATH = re.compile(r"(?<![\w/.~-])((?:src|tests|docs|bench|lmkit)/[\w.*/{},\[\]-]*[\w*}])")
PACKAGE_PATH = re.compile(r"(?<![\w/.~-])((?:%s)/[\w*/]+\.py)\b" % "|".join(SUBPACKAGES))
BARE_PY = re.compile(r"`([\w*]+\.py)`")
TEST_REF = re.compile(r"(tests/test_[\w*]+\.py)?::(\w+\*?)")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower().replace("`", "")
    text = "".join(ch for ch in text if ch in " -_" or unicodedata.category(ch)[0] in "LN")
    return text.replace(" ", "-")


def _anchors(doc: Path) -> set[str]:
    text = _without_fences(doc.read_text(encoding="utf-8"))
    return {_slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", text, re.M)}


def _without_fences(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def _expand_braces(path: str) -> list[str]:
    m = re.search(r"\{([^{}]*)\}", path)
    if not m:
        return [path]
    return [p for alt in m.group(1).split(",") for p in _expand_braces(path[:m.start()] + alt + path[m.end():])]


def _exists(path: str, base: Path) -> bool:
    path = path.rstrip("/")
    if any(ch in path for ch in "*?["):
        return any(base.glob(path))
    return (base / path).exists()


def _repo_path_problems(doc: Path, text: str) -> list[str]:
    problems = []
    for m in REPO_PATH.finditer(text):
        ref = m.group(1).split("::")[0]
        if re.match(r"lmkit/[A-Z]", ref):  # prose such as "lmkit/PEFT", not a path
            continue
        if any(ref.startswith(skip) for skip in NOT_IN_THE_REPO):
            continue
        base = ROOT / "src" if ref.startswith("lmkit/") else ROOT
        for path in _expand_braces(ref):
            if not _exists(path, base):
                problems.append(f"{doc.name}: {path} does not exist")
    for m in PACKAGE_PATH.finditer(text):
        if not _exists(m.group(1), PACKAGE):
            problems.append(f"{doc.name}: {m.group(1)} does not exist under src/lmkit")
    return problems


def _test_name_problems(doc: Path, text: str) -> list[str]:
    """`tests/test_x.py::test_y` and the shorthand `::test_z` after it on the same line."""
    problems = []
    for line in text.splitlines():
        current = None
        for m in TEST_REF.finditer(line):
            if m.group(1):
                current = m.group(1)
            if current is None or "*" in current or not (ROOT / current).exists():
                continue
            name = m.group(2).replace("*", r"\w*")
            if not re.search(rf"^\s*(?:async\s+)?def {name}\b", (ROOT / current).read_text(), re.M):
                problems.append(f"{doc.name}: {current}::{m.group(2)} is not a test in {current}")
    return problems


def _link_problems(doc: Path, text: str) -> list[str]:
    problems = []
    for m in LINK.finditer(_without_fences(text)):
        target = m.group(1)
        if re.match(r"^[a-z][a-z+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if not file.exists():
            problems.append(f"{doc.name}: link to {target}: {path} does not exist")
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            problems.append(f"{doc.name}: link to {target}: {file.name} has no heading #{anchor}")
    return problems


def _bare_file_problems(doc: Path, text: str) -> list[str]:
    problems = []
    names = {p.name for d in ("src", "tests", "bench") for p in (ROOT / d).rglob("*.py")}
    for m in BARE_PY.finditer(text):
        name = m.group(1)
        if name in OTHER_FILES or "*" in name:
            continue
        if name not in names:
            problems.append(f"{doc.name}: `{name}` is no file in src/, tests/ or bench/")
    return problems


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_doc_links_and_paths_exist(doc: Path):
    text = doc.read_text(encoding="utf-8")
    problems = (_link_problems(doc, text) + _repo_path_problems(doc, text) + _test_name_problems(doc, text)
                + _bare_file_problems(doc, text))
    assert not problems, "\n".join(problems)


def test_the_checker_sees_a_broken_link_and_path(tmp_path):
    doc = tmp_path / "x.md"
    text = ("see [parts](parts/quant.md), [bench](%s#no-such-heading), `docs/parts/a.md`, "
            "`align/nope.py`, `tests/test_bpe.py::test_does_not_exist`, `nothing_here.py`"
            % (ROOT / "docs" / "benchmarks.md"))
    doc.write_text(text)
    problems = (_link_problems(doc, text) + _repo_path_problems(doc, text) + _test_name_problems(doc, text)
                + _bare_file_problems(doc, text))
    assert len(problems) == 6, problems
