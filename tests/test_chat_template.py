"""Chat templates against the published Jinja templates rendered by transformers."""

from __future__ import annotations

import pytest

from lmkit.errors import TokenizerError
from lmkit.tokenizers import BPETokenizer
from lmkit.tokenizers.chat_template import CHATML, LLAMA3, ChatTemplate, get_template

# The chat_template strings published with Qwen2-7B-Instruct and Meta-Llama-3-8B-Instruct.
QWEN2_JINJA = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3_JINJA = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": "4"}, {"role": "user", "content": "  and 3+3? \n"}],
    [{"role": "user", "content": "你好，世界 🌍"}, {"role": "assistant", "content": " 你好！\n有什么可以帮你？ "}],
]


def hf_tokenizer(template: str, bos: str | None = None):
    tokenizers = pytest.importorskip("tokenizers")
    from transformers import PreTrainedTokenizerFast

    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({"<unk>": 0}, unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=tok, chat_template=template, bos_token=bos, unk_token="<unk>")


@pytest.mark.parametrize("ours,jinja,bos", [(CHATML, QWEN2_JINJA, None), (LLAMA3, LLAMA3_JINJA, "<|begin_of_text|>")])
@pytest.mark.parametrize("gen", [False, True])
def test_render_matches_transformers(ours, jinja, bos, gen):
    hf = hf_tokenizer(jinja, bos)
    for conv in CONVERSATIONS:
        expected = hf.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen)
        assert ours.render(conv, add_generation_prompt=gen) == expected


@pytest.fixture(scope="module")
def bpe():
    text = "Hello! Be brief. 2+2? 4 and 3+3? 你好，世界 有什么可以帮你 system user assistant\n" * 20
    specials = CHATML.special_tokens + LLAMA3.special_tokens
    return BPETokenizer.train([text], vocab_size=300, special_tokens=specials)


@pytest.mark.parametrize("template", [CHATML, LLAMA3])
def test_mask_marks_exactly_assistant_replies(template, bpe):
    conv = CONVERSATIONS[1] + [{"role": "assistant", "content": "6"}]
    ids, mask = template.render_with_mask(conv, bpe)
    assert len(ids) == len(mask)
    assert ids == bpe.encode(template.render(conv), allowed_special="all")
    eot = bpe.token_to_id(template.end_of_turn)
    # the masked tokens are the two replies, each followed by its end-of-turn token
    trained = [i for i, m in zip(ids, mask) if m]
    assert bpe.decode(trained) == "4" + template.end_of_turn + "6" + template.end_of_turn
    assert trained.count(eot) == 2
    # nothing of the prompt (system/user turns, headers) is trained
    assert sum(mask) == len(trained) < len(ids) / 3


def test_cjk_reply_mask(bpe):
    conv = CONVERSATIONS[2]
    ids, mask = CHATML.render_with_mask(conv, bpe)
    assert ids == bpe.encode(CHATML.render(conv), allowed_special="all")
    assert bpe.decode([i for i, m in zip(ids, mask) if m]) == " 你好！\n有什么可以帮你？ <|im_end|>"


def test_bad_messages(bpe):
    with pytest.raises(TokenizerError, match="unknown role 'robot'"):
        CHATML.render([{"role": "robot", "content": "x"}])
    with pytest.raises(TokenizerError, match="message 1 needs both"):
        CHATML.render([{"role": "user", "content": "x"}, {"role": "assistant"}])
    with pytest.raises(TokenizerError, match="content must be a string"):
        CHATML.render([{"role": "user", "content": 3}])
    with pytest.raises(TokenizerError, match="list of"):
        CHATML.render("hello")
    plain = BPETokenizer.train(["abc abc"], vocab_size=260)
    with pytest.raises(TokenizerError, match="no single token"):
        CHATML.render_with_mask([{"role": "user", "content": "x"}], plain)
    with pytest.raises(TokenizerError, match="unknown chat template"):
        get_template("vicuna")
    with pytest.raises(ValueError, match="turn_end"):
        ChatTemplate(name="x", turn_start="{role}:", turn_end="\n", end_of_turn="</s>")
