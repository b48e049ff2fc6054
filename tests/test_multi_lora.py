"""Multi-LoRA serving: many adapters on one base model, a different one per batch row.

Oracle: the same adapter folder loaded alone through lmkit's single-adapter path and merged into
the weights (`peft.load_any.apply_adapter`, itself checked against the `peft` library in
test_peft_lora.py). Three adapters with different ranks, alphas (rsLoRA too) and targets
(lm_head included) share one batch with base-model rows, at the layer level, in the engine and
through the live server with the official `openai` client; adapters load and unload over HTTP.
"""

from __future__ import annotations

import copy
import threading

import pytest
import torch

from lmkit.errors import CheckpointError, ConfigError
from lmkit.hub import save_pretrained
from lmkit.infer import GenerationConfig, generate
from lmkit.models.config import ModelConfig
from lmkit.models.decoder import DecoderLM
from lmkit.peft.load_any import apply_adapter
from lmkit.peft.lora import LoraConfig, inject_lora
from lmkit.peft import multi_lora
from lmkit.peft.multi_lora import MultiLora, MultiLoraLinear, adapter_rows
from lmkit.peft.peft_format import save_lora
from lmkit.serve.engine import Engine
from lmkit.serve.lora_adapters import AdapterRegistry
from lmkit.tokenizers.bpe import BPETokenizer
from lmkit.tokenizers.chat_template import CHATML

NAME = "tiny"
SPECS = [  # different ranks, scalings and targets
    LoraConfig(r=4, alpha=8, target_modules=("q_proj", "v_proj")),
    LoraConfig(r=8, alpha=4, target_modules=("all-linear",), use_rslora=True),
    LoraConfig(r=2, alpha=16, target_modules=("o_proj", "down_proj", "lm_head")),
]
PROMPTS = ["the quick brown fox", "over the lazy dog", "and then it rains", "the dog"]


def _model(seed: int = 0, d_model: int = 32) -> DecoderLM:
    cfg = ModelConfig(arch="decoder", model_type="llama", vocab_size=300, d_model=d_model, n_layers=2, n_heads=4,
                      n_kv_heads=2, d_ff=64, max_seq_len=128, norm="rmsnorm", activation="silu", gated_ffn=True,
                      position="rope", initializer_range=0.2, eos_token_id=2)
    torch.manual_seed(seed)
    return DecoderLM(cfg).eval()


def _adapter(base: DecoderLM, config: LoraConfig, path, seed: int):
    m = copy.deepcopy(base)
    inject_lora(m, config)
    torch.manual_seed(seed)
    for p in m.parameters():
        if p.requires_grad:  # B is zero at init: give both a real update
            p.data.normal_(0, 0.3)
    save_lora(m, path)
    return str(path)


@pytest.fixture(scope="module")
def tok():
    text = "the quick brown fox jumps over the lazy dog, and then it rains; " * 20
    return BPETokenizer.train([text], vocab_size=300, special_tokens=["<|endoftext|>"] + CHATML.special_tokens)


@pytest.fixture(scope="module")
def files(tmp_path_factory, tok):
    root = tmp_path_factory.mktemp("multi-lora")
    base = _model()
    save_pretrained(base, root / "base")
    tok.save_hf_json(root / "base" / "tokenizer.json")
    dirs = [_adapter(base, c, root / f"ad{i}", 10 + i) for i, c in enumerate(SPECS)]
    other = _adapter(_model(d_model=48), SPECS[0], root / "other-size", 20)
    return {"base": base, "root": root, "dirs": dirs, "other": other}


@pytest.fixture(scope="module")
def alone(files):
    """Adapter i loaded alone and merged into its own copy of the base (index -1: the base)."""
    models = {-1: files["base"]}
    for i, d in enumerate(files["dirs"]):
        models[i] = apply_adapter(copy.deepcopy(files["base"]), d).eval()
    return models


def _greedy(model, tok, prompt: str, n: int = 10) -> list[int]:
    return generate(model, [tok.encode(prompt)], max_new_tokens=n, tokenizer=tok).sequences[0]


# ---- the layer -----------------------------------------------------------------------------
@pytest.mark.parametrize("grouped_above", [64, 0], ids=["stacked", "grouped"])
def test_rows_with_different_adapters_equal_each_adapter_merged_alone(files, alone, grouped_above, monkeypatch):
    monkeypatch.setattr(multi_lora, "GROUPED_ABOVE", grouped_above)  # decode-size batches / long prefills
    served = copy.deepcopy(files["base"])
    multi = MultiLora(served)
    ids = [multi.load(f"a{i}", d) for i, d in enumerate(files["dirs"])]
    assert ids == [0, 1, 2] and isinstance(served.lm_head, MultiLoraLinear)
    torch.manual_seed(1)
    x = torch.randint(3, 300, (6, 9))
    rows = [0, -1, 2, 1, 0, 2]
    with torch.no_grad():
        with adapter_rows(rows):
            got = served(x).logits
        plain = served(x).logits  # outside the context: the base model
    for j, a in enumerate(rows):
        with torch.no_grad():
            want = alone[a](x[j : j + 1]).logits[0]
        torch.testing.assert_close(got[j], want, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(plain, files["base"](x).logits, atol=0, rtol=0)
    assert not torch.allclose(got[0], got[1], atol=1e-3)  # the adapters really change the output
    multi.remove("a1")
    with torch.no_grad(), adapter_rows([1, 0]):  # a removed id computes the base model
        after = served(x[:2]).logits
    torch.testing.assert_close(after[0], files["base"](x[:1]).logits[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(after[1], alone[0](x[1:2]).logits[0], atol=2e-4, rtol=1e-4)


def test_bad_adapters_are_refused_before_the_model_changes(files, tmp_path):
    served = copy.deepcopy(files["base"])
    multi = MultiLora(served)
    with pytest.raises(CheckpointError, match="no such adapter directory"):
        multi.load("x", tmp_path / "missing")
    with pytest.raises(CheckpointError, match="not a LoRA adapter folder"):
        multi.load("x", files["root"] / "base")
    with pytest.raises(CheckpointError, match="shape|does not fit"):
        multi.load("x", files["other"])
    whole_head = LoraConfig(r=2, target_modules=("q_proj",), modules_to_save=("lm_head",))
    with pytest.raises(CheckpointError, match="low-rank pairs only"):
        multi.load("x", _adapter(files["base"], whole_head, tmp_path / "b", 3))
    assert not any(isinstance(m, MultiLoraLinear) for m in served.modules())
    multi.load("x", files["dirs"][0])
    with pytest.raises(ConfigError, match="already loaded"):
        multi.load("x", files["dirs"][1])
    with pytest.raises(ConfigError, match="without ':'"):
        multi.load("a:b", files["dirs"][1])


def test_an_adapter_saved_by_the_peft_library_in_a_mixed_batch_equals_peft(files, tmp_path):
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModelForCausalLM.from_pretrained(files["root"] / "base", attn_implementation="eager")
    config = peft.LoraConfig(r=3, lora_alpha=7, target_modules=["k_proj", "o_proj", "up_proj"], task_type="CAUSAL_LM")
    pm = peft.get_peft_model(hf.eval(), config).eval()
    torch.manual_seed(5)
    with torch.no_grad():
        for v in peft.get_peft_model_state_dict(pm).values():
            v.normal_(0, 0.3)
    pm.save_pretrained(tmp_path / "p")
    served = copy.deepcopy(files["base"])
    multi = MultiLora(served)
    multi.load("ours", files["dirs"][1])
    theirs = multi.load("theirs", tmp_path / "p")
    x = torch.randint(3, 300, (3, 8))
    with torch.no_grad():
        with adapter_rows([theirs, multi.id("ours"), theirs]):
            got = served(x).logits
        want = pm(x).logits
    torch.testing.assert_close(got[0], want[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got[2], want[2], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(got[1], want[1], atol=1e-3)


# ---- the engine ----------------------------------------------------------------------------
def test_engine_batches_three_adapters_and_the_base_together(files, alone, tok):
    reg = AdapterRegistry(copy.deepcopy(files["base"]), NAME)
    for i, d in enumerate(files["dirs"]):
        reg.load(f"a{i}", d)
    engine = Engine(reg.multi.model, tok, max_batch_size=8, lora=reg)
    assert engine.fused is None  # the fused step refuses adapted layers: model.forward decodes
    jobs = [(p, a) for p in PROMPTS[:2] for a in (0, 1, 2, -1)]
    done = [threading.Event() for _ in jobs]
    out = [[] for _ in jobs]
    cfg = GenerationConfig(max_new_tokens=10)
    with engine._lock:  # everything is queued before the engine admits anything: one mixed batch
        for k, (p, a) in enumerate(jobs):
            def cb(ev, k=k):
                out[k].append(ev.token)
                if ev.finish_reason or ev.error:
                    done[k].set()
            engine.submit(tok.encode(p), cfg, cb, adapter=f"a{a}" if a >= 0 else None)
        assert reg.in_use("a0") == 2
    for d in done:
        assert d.wait(60)
    with pytest.raises(ConfigError, match="no LoRA adapter named"):
        engine.submit(tok.encode("x"), cfg, lambda ev: None, adapter="nope")
    engine.stop()
    # all 8 requests (three adapters and the base) decode together: > 4 rows per step on average
    assert engine.stats.batch_rows / engine.stats.decode_steps > 4
    for k, (p, a) in enumerate(jobs):
        assert [t for t in out[k] if t is not None] == _greedy(alone[a], tok, p), (p, a)
    assert reg.in_use("a0") == 0


# ---- the server ----------------------------------------------------------------------------
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")


@pytest.fixture(scope="module")
def live(files, tok):
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    from lmkit.serve.app import create_app
    from test_serve_util import LiveServer

    model = copy.deepcopy(files["base"])
    reg = AdapterRegistry(model, NAME)
    reg.load("a0", files["dirs"][0])
    reg.load("a1", files["dirs"][1])
    engine = Engine(model, tok, max_batch_size=8, lora=reg)
    with LiveServer(create_app(engine, model_name=NAME)) as server:
        server.engine = engine
        yield server


@pytest.fixture(scope="module")
def client(live):
    return openai.OpenAI(base_url=live.url + "/v1", api_key="none", max_retries=0, timeout=60)


def test_concurrent_requests_for_different_adapters_through_openai(client, live, files, alone, tok):
    r = httpx.post(live.url + "/v1/adapters", json={"lora_name": "a2", "lora_path": files["dirs"][2]}, timeout=60)
    assert r.status_code == 200 and r.json()["id"] == "a2"
    assert [m.id for m in client.models.list().data] == [NAME, "a0", "a1", "a2"]
    assert client.models.retrieve("a1").id == "a1"
    # each way of naming an adapter, all at once
    asks = [("a0", {}, 0), (f"{NAME}:a1", {}, 1), (NAME, {"lora": "a2"}, 2), (NAME, {}, -1), ("a2", {"lora": "a2"}, 2),
            ("a1", {}, 1), (f"{NAME}:a0", {}, 0), ("a2", {}, 2)]
    texts = [None] * len(asks)

    def one(k):
        model, extra, _ = asks[k]
        c = client.completions.create(model=model, prompt=PROMPTS[k % 4], max_tokens=10, temperature=0,
                                      extra_body=extra or None)
        texts[k] = c.choices[0].text

    threads = [threading.Thread(target=one, args=(k,)) for k in range(len(asks))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k, (_, _, a) in enumerate(asks):
        want = generate(alone[a], [tok.encode(PROMPTS[k % 4])], max_new_tokens=10, tokenizer=tok).texts[0]
        assert texts[k] == want, asks[k]
    assert len({texts[0], texts[1], texts[2], texts[3]}) > 1
    stream = client.completions.create(model="a2", prompt=PROMPTS[0], max_tokens=10, temperature=0, stream=True)
    want = generate(alone[2], [tok.encode(PROMPTS[0])], max_new_tokens=10, tokenizer=tok).texts[0]
    assert "".join(c.choices[0].text for c in stream) == want


def test_unknown_adapters_are_openai_errors(client, live):
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="nope", prompt="the", max_tokens=2)
    assert e.value.code == "model_not_found" and "a0" in e.value.message
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model=f"{NAME}:nope", prompt="the", max_tokens=2)
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=2,
                                       extra_body={"lora": "nope"})
    assert e.value.code == "adapter_not_found" and e.value.param == "lora"
    with pytest.raises(openai.BadRequestError, match="disagree|give one"):
        client.completions.create(model="a0", prompt="the", max_tokens=2, extra_body={"lora": "a1"})
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=NAME, prompt="the", max_tokens=2, extra_body={"lora": 3})


def test_load_and_unload_over_http(client, live, files, alone, tok, tmp_path):
    url = live.url + "/v1/adapters"

    def err(r, status):
        assert r.status_code == status, r.text
        return r.json()["error"]

    assert err(httpx.post(url, json={"name": "late", "path": str(tmp_path / "missing")}), 400)["param"] == "path"
    assert "not a LoRA adapter" in err(httpx.post(url, json={"name": "late", "path": str(files["root"] / "base")}),
                                       400)["message"]
    assert err(httpx.post(url, json={"name": "late", "path": files["other"]}), 400)["code"] == "invalid_adapter"
    assert err(httpx.post(url, json={"name": "a:b", "path": files["dirs"][0]}), 400)["param"] == "name"
    assert err(httpx.post(url, json={"name": NAME, "path": files["dirs"][0]}), 400)["param"] == "name"
    assert err(httpx.post(url, json={"name": "a0", "path": files["dirs"][0]}), 409)["code"] == "adapter_exists"
    assert err(httpx.post(url, json={"path": files["dirs"][0]}), 400)["param"] == "name"
    assert err(httpx.post(url, json={"name": "x", "path": "p", "scale": 2}), 400)["param"] == "scale"
    assert httpx.post(url, json={"name": "late", "path": files["dirs"][1]}).status_code == 200
    assert "late" in [a["id"] for a in httpx.get(url).json()["data"]]
    r = client.completions.create(model="late", prompt=PROMPTS[1], max_tokens=8, temperature=0)
    assert r.choices[0].text == generate(alone[1], [tok.encode(PROMPTS[1])], max_new_tokens=8, tokenizer=tok).texts[0]
    # in use: refused (409) until the request ends
    engine = live.engine
    with engine._lock:
        handle = engine.submit(tok.encode("the"), GenerationConfig(max_new_tokens=50), lambda ev: None, adapter="late")
        assert err(httpx.delete(url + "/late"), 409)["code"] == "adapter_in_use"
        handle.cancel()
    r = httpx.delete(url + "/late")
    assert r.status_code == 200 and r.json()["deleted"] is True
    assert err(httpx.delete(url + "/late"), 404)["code"] == "adapter_not_found"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="late", prompt="the", max_tokens=2)
    assert "late" not in [m.id for m in client.models.list().data]


def test_serve_command_lora_flag(files):
    from click.testing import CliRunner

    from lmkit.serve.commands import serve_cmd

    r = CliRunner().invoke(serve_cmd, [str(files["root"] / "base"), "--lora", "noequals"])
    assert r.exit_code == 2 and "NAME=PATH" in r.output
    r = CliRunner().invoke(serve_cmd, [str(files["root"] / "base"), "--port", "0", "--lora",
                                       f"x={files['root'] / 'missing'}"])
    assert r.exit_code == 1 and "no such adapter directory" in r.output and "Traceback" not in r.output
