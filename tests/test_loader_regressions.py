"""Inputs the loader fuzzer (tests/test_fuzz_loaders.py) found escaping as non-LmkitError
exceptions, or hanging / allocating without bound, each kept as a regular test."""

import json

import pytest
import torch

from lmkit.errors import CheckpointError, LmkitError


def _tiny_llama():
    from lmkit.models.config import ModelConfig
    from lmkit.models.decoder import DecoderLM

    torch.manual_seed(0)
    return DecoderLM(ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2, d_ff=64,
                                 max_seq_len=32, model_type="llama")).eval()


def _edit_json(path, **changes):
    data = json.loads(path.read_text())
    for k, v in changes.items():
        if v is KeyError:
            data.pop(k)
        else:
            data[k] = v
    path.write_text(json.dumps(data))


@pytest.fixture()
def hf_dir(tmp_path):
    from lmkit.hub import save_pretrained

    save_pretrained(_tiny_llama(), tmp_path / "hf")
    return tmp_path / "hf"


@pytest.mark.parametrize("changes", [
    {"num_hidden_layers": 2**31},  # was: building 2e9 layers (hours, then out of memory)
    {"intermediate_size": 64 * 1000003},  # was: allocating a 64-million-wide FFN before any shape check
    {"attention_dropout": [[[]]]},  # was: TypeError from float()
    {"head_dim": "\x00"},  # was: ValueError from int()
    {"pad_token_id": "x"},  # was: TypeError comparing str and int
    {"model_type": KeyError},  # was: a message not naming the file
    {"num_key_value_heads": KeyError},  # was: a shape mismatch not naming the checkpoint
])
def test_corrupt_config_json(hf_dir, changes):
    from lmkit.hub import load_pretrained

    _edit_json(hf_dir / "config.json", **changes)
    with pytest.raises(LmkitError, match="hf"):
        load_pretrained(hf_dir)


def test_arpa_not_utf8_and_bad_counts(tmp_path):
    from lmkit.ngram import train_ngram
    from lmkit.ngram.arpa import ArpaError, read_arpa, write_arpa

    path = tmp_path / "lm.arpa"
    write_arpa(train_ngram(["the cat sat", "a cat ran"], order=2, method="kn"), path)
    good = path.read_bytes()
    path.write_bytes(b"\xff\xfe" + good)  # was: UnicodeDecodeError
    with pytest.raises(ArpaError, match="lm.arpa:1: not UTF-8"):
        read_arpa(path)
    path.write_bytes(good.replace(b"ngram 1=", b"ngram 1=x=", 1))  # was: ValueError from unpacking
    with pytest.raises(ArpaError, match="expected 'ngram k=N'"):
        read_arpa(path)
    assert issubclass(ArpaError, LmkitError)  # was: a bare ValueError


def test_jsonl_not_utf8_and_rows_that_are_not_objects(tmp_path):
    from lmkit.data.preference import load_preference_jsonl
    from lmkit.eval.multiple_choice import load_task

    bad = tmp_path / "pairs.jsonl"
    bad.write_bytes(b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "\xff"}\n')
    with pytest.raises(LmkitError, match="pairs.jsonl:2: not UTF-8"):  # was: UnicodeDecodeError
        load_preference_jsonl(bad)
    task = tmp_path / "task.jsonl"
    for row in ('"text"', "[1, 2]", "7"):  # was: AttributeError / TypeError
        task.write_text(row + "\n")
        with pytest.raises(LmkitError, match="task.jsonl:1: each line must be a JSON object"):
            load_task(task)


def test_quantized_config_that_cannot_fit_its_weights(tmp_path):
    from lmkit.quant.checkpoint import load_quantized, save_quantized
    from lmkit.quant.quantize_model import quantize_model

    save_quantized(quantize_model(_tiny_llama(), "nf4"), tmp_path / "q")
    meta_path = tmp_path / "q" / "quantization.json"
    good = json.loads(meta_path.read_text())
    for key, value in (("d_ff", 2**31), ("n_layers", 2**31), ("activation", ""), ("max_seq_len", "x")):
        meta = json.loads(json.dumps(good))
        meta["arch"]["config"][key] = value  # was: a 256 GiB allocation / ConfigError not naming the file
        meta_path.write_text(json.dumps(meta))
        with pytest.raises(CheckpointError, match="quantization.json"):
            load_quantized(tmp_path / "q")
    meta = json.loads(json.dumps(good))
    meta["method"] = -0.0  # was: ValueError
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="quantization.json"):
        load_quantized(tmp_path / "q")


def test_peft_modules_to_save_of_the_wrong_type(tmp_path):
    from lmkit.peft.lora import LoraConfig, inject_lora
    from lmkit.peft.peft_format import load_peft_adapter, save_peft_adapter

    save_peft_adapter(inject_lora(_tiny_llama(), LoraConfig(r=2, alpha=4)), tmp_path / "a")
    for value in ([None], "nan"):  # was: TypeError / a ConfigError not naming the file
        _edit_json(tmp_path / "a" / "adapter_config.json", modules_to_save=value)
        with pytest.raises(CheckpointError, match="adapter_config.json"):
            load_peft_adapter(_tiny_llama(), tmp_path / "a")


def test_lmkit_tokenizer_with_an_infinite_id(tmp_path):
    from lmkit.tokenizers import BPETokenizer
    from lmkit.tokenizers.loading import load_tokenizer

    path = tmp_path / "tok.json"
    BPETokenizer.train(["the cat sat on the mat " * 5], vocab_size=270).save(path)
    data = json.loads(path.read_text())
    data["vocab"][next(iter(data["vocab"]))] = float("inf")  # was: OverflowError
    path.write_text(json.dumps(data))
    with pytest.raises(LmkitError, match="tok.json"):
        load_tokenizer(path)


def test_second_fuzz_round(tmp_path, hf_dir):
    """Found by the 2000-input run: head_dim 0.5, a non-integer version, an ARPA order 0, a damaged
    format name, a flipped byte in an adapter tensor name — each now an LmkitError naming the file."""
    from lmkit.hub import load_pretrained
    from lmkit.ngram import train_ngram
    from lmkit.ngram.arpa import ArpaError, read_arpa, write_arpa
    from lmkit.peft.lora import LoraConfig, inject_lora
    from lmkit.peft.peft_format import load_peft_adapter, save_peft_adapter
    from lmkit.quant.checkpoint import load_quantized, save_quantized
    from lmkit.quant.quantize_model import quantize_model
    from lmkit.tokenizers import BPETokenizer
    from lmkit.tokenizers.loading import load_tokenizer

    _edit_json(hf_dir / "config.json", head_dim=0.5)  # was: ZeroDivisionError
    with pytest.raises(LmkitError, match="config.json"):
        load_pretrained(hf_dir)
    save_quantized(quantize_model(_tiny_llama(), "int8"), tmp_path / "q")
    _edit_json(tmp_path / "q" / "quantization.json", version=None)  # was: TypeError comparing None > 1
    with pytest.raises(CheckpointError, match="quantization.json"):
        load_quantized(tmp_path / "q")
    arpa = tmp_path / "lm.arpa"
    write_arpa(train_ngram(["the cat sat", "a cat ran"], order=2, method="kn"), arpa)
    arpa.write_text(arpa.read_text().replace("\\data\\\n", "\\data\\\nngram 0=0\n", 1))  # was: KeyError 0
    with pytest.raises(ArpaError, match="lm.arpa"):
        read_arpa(arpa)
    tok = tmp_path / "tok.json"
    BPETokenizer.train(["the cat sat on the mat " * 5], vocab_size=270).save(tok)
    tok.write_text(tok.read_text().replace('"lmkit.bpe"', '"lmkbt.bpe"'))  # was: a message without the file
    with pytest.raises(LmkitError, match="tok.json"):
        load_tokenizer(tok)
    save_peft_adapter(inject_lora(_tiny_llama(), LoraConfig(r=2, alpha=4)), tmp_path / "a")
    w = tmp_path / "a" / "adapter_model.safetensors"
    w.write_bytes(w.read_bytes().replace(b"layers.0", b"layurs.0", 1))  # was: a message without the file
    with pytest.raises(CheckpointError, match=str(tmp_path / "a")):
        load_peft_adapter(_tiny_llama(), tmp_path / "a")
