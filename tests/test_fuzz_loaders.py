"""Every file loader on mutated and truncated inputs: only LmkitError escapes, its message names
the file, and nothing is written on failure.

A seeded mutator (no hypothesis shrinking: the budget is fixed and a failure prints the
seed and mutation that reproduce it) starts from a valid file that lmkit itself wrote and
applies byte mutations (bit flips, truncation, random bytes, spliced/duplicated/deleted
runs) or, for JSON and JSONL, structure mutations (wrong types, missing keys, huge or
negative numbers, NaN, deep nesting). The default run tries FAST inputs per loader; the
slow-marked run tries SLOW. The figures go to docs/reliability.md.
"""

from __future__ import annotations

import copy
import json
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from lmkit.errors import LmkitError

FAST = 150
SLOW = 2000
SEED = 20240624

# ---- the mutator ---------------------------------------------------------------------------
_WEIRD_VALUES: list[Any] = [
    None, True, False, 0, -1, 1, 2**31, 2**63, -(2**63), 10**30, 1e308, -1e308, 0.5, -0.0,
    "", "x", "nan", "\x00", "é" * 3, [], [None], [1, 2, 3], {}, {"a": 1}, [[[[[]]]]],
]


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (tuple of keys / indexes) inside a JSON value, the root included."""
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:50]):
            out += _paths(v, prefix + (i,))
    return out


def _get(obj: Any, path: tuple) -> Any:
    for p in path:
        obj = obj[p]
    return obj


def mutate_json_value(obj: Any, rng: random.Random) -> tuple[Any, str]:
    """A copy of `obj` with one structural mutation, and a description of it."""
    obj = copy.deepcopy(obj)
    paths = _paths(obj)
    path = rng.choice(paths)
    kind = rng.choice(["type", "type", "delete", "number", "add", "root"])
    if kind == "root" or not path:
        return rng.choice(_WEIRD_VALUES + [[obj], "text"]), "root replaced"
    parent, last = _get(obj, path[:-1]), path[-1]
    old = parent[last]
    if kind == "delete":
        del parent[last]
        return obj, f"deleted {path}"
    if kind == "add" and isinstance(old, dict):
        old[rng.choice(["", "x", "type", "model", "vocab", "format"])] = rng.choice(_WEIRD_VALUES)
        return obj, f"added key under {path}"
    if kind == "number" and isinstance(old, (int, float)) and not isinstance(old, bool):
        parent[last] = rng.choice([old * 1000003, -old, old + 1, old - 1, 2**62, -1, 0, float("nan"), float("inf")])
        return obj, f"number at {path}"
    parent[last] = rng.choice(_WEIRD_VALUES)
    return obj, f"type at {path} -> {parent[last]!r}"


def mutate_bytes(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """A copy of `data` with one to three byte-level mutations, and a description of them."""
    desc = []
    buf = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        kind = rng.choice(["flip", "flip", "truncate", "random", "splice", "delete", "duplicate", "header"])
        n = len(buf)
        if kind == "flip" and n:
            for _ in range(rng.randint(1, 8)):
                i = rng.randrange(n)
                buf[i] ^= 1 << rng.randrange(8)
        elif kind == "truncate":
            del buf[rng.randint(0, n):]
        elif kind == "random":
            buf = bytearray(rng.randbytes(rng.randint(0, 64)))
        elif kind == "splice" and n:
            i = rng.randrange(n)
            buf[i:i + rng.randint(1, 16)] = rng.randbytes(rng.randint(1, 16))
        elif kind == "delete" and n:
            i = rng.randrange(n)
            del buf[i:i + rng.randint(1, 64)]
        elif kind == "duplicate" and n:
            i = rng.randrange(n)
            buf[i:i] = buf[i:i + rng.randint(1, 64)]
        elif kind == "header" and n >= 8:  # the first bytes are where formats keep lengths and magic
            i = rng.randrange(min(n, 16))
            buf[i] = rng.choice([0, 0xFF, 0x7F, 0x80, rng.randrange(256)])
        desc.append(kind)
    return bytes(buf), "+".join(desc)


def mutate_json_file(raw: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Half structure mutations of the parsed JSON, half byte mutations of the text."""
    if rng.random() < 0.6:
        value, desc = mutate_json_value(json.loads(raw), rng)
        return json.dumps(value).encode(), desc
    return mutate_bytes(raw, rng)


def mutate_jsonl_file(raw: bytes, rng: random.Random) -> tuple[bytes, str]:
    """One line mutated as JSON, or the file's bytes mutated."""
    lines = raw.decode().splitlines()
    if rng.random() < 0.6 and lines:
        i = rng.randrange(len(lines))
        value, desc = mutate_json_value(json.loads(lines[i]), rng)
        lines[i] = json.dumps(value)
        return ("\n".join(lines) + "\n").encode(), f"line {i + 1}: {desc}"
    return mutate_bytes(raw, rng)


def mutate_text_lines(raw: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Line-level edits of a text format (ARPA): drop, duplicate, swap fields, change numbers."""
    if rng.random() < 0.4:
        return mutate_bytes(raw, rng)
    lines = raw.decode().split("\n")
    i = rng.randrange(len(lines))
    kind = rng.choice(["drop", "dup", "field", "number", "junk"])
    if kind == "drop":
        del lines[i]
    elif kind == "dup":
        lines.insert(i, lines[i])
    elif kind == "field":
        parts = lines[i].split()
        if parts:
            parts[rng.randrange(len(parts))] = rng.choice(["", "x", "=", "1=2=3", "-inf", "nan", "1e999", "\\"])
        lines[i] = " ".join(parts)
    elif kind == "number":
        lines[i] = lines[i].replace("=", "=" + rng.choice(["-", "9999999", "x", ""]), 1)
    else:
        lines[i] = rng.choice(["\\data\\", "\\end\\", "\\1-grams:", "\\x-grams:", "\\-1-grams:", "ngram", "ngram 1",
                               "ngram 0=0", "ngram 7=1", "\\3-grams:"])
    return "\n".join(lines).encode(), f"line {i + 1}: {kind}"


# ---- the harness ----------------------------------------------------------------------------
@dataclass
class FuzzReport:
    name: str
    tried: int = 0
    rejected: int = 0  # LmkitError, as it should be
    accepted: int = 0  # the mutation still made a valid file
    escaped: list[str] = field(default_factory=list)  # anything else: a bug

    def line(self) -> str:
        return (f"{self.name}: {self.tried} inputs, {self.rejected} rejected with LmkitError, "
                f"{self.accepted} still valid, {len(self.escaped)} other exceptions")


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def fuzz(name: str, valid: Path, target: str, mutate: Callable[[bytes, random.Random], tuple[bytes, str]],
         load: Callable[[Path], Any], n: int, seed: int, work: Path) -> FuzzReport:
    """Mutate `valid/target` n times (in a copy of the directory `valid`) and call `load(copy)` each time.

    A failure is an exception that is not an LmkitError, an LmkitError whose message names
    neither the file nor its directory, or any change to the directory's files.
    """
    report = FuzzReport(name)
    rng = random.Random(f"{seed}:{name}")
    pristine = (valid / target).read_bytes()
    case = work / f"fuzz-{name}"
    for i in range(n):
        if case.exists():
            shutil.rmtree(case)
        shutil.copytree(valid, case)
        data, desc = mutate(pristine, rng)
        (case / target).write_bytes(data)
        before = _snapshot(case)
        report.tried += 1
        where = f"{name} #{i} ({desc})"
        try:
            load(case)
            report.accepted += 1
        except LmkitError as exc:
            report.rejected += 1
            msg = str(exc)
            if target not in msg and str(case) not in msg and case.name not in msg:
                report.escaped.append(f"{where}: {type(exc).__name__} does not name the file: {msg[:200]}")
        except RecursionError as exc:
            report.escaped.append(f"{where}: RecursionError {exc}")
        except Exception as exc:  # noqa: BLE001 - the point of the test
            report.escaped.append(f"{where}: {type(exc).__name__}: {str(exc)[:200]}")
        if _snapshot(case) != before:
            report.escaped.append(f"{where}: the loader changed the directory's files")
    shutil.rmtree(case, ignore_errors=True)
    return report


def _check(report: FuzzReport) -> None:
    print(report.line())
    _record(report)
    assert not report.escaped, "\n".join(report.escaped[:15])


def _record(report: FuzzReport) -> None:
    """Append the figures to $LMKIT_FUZZ_REPORT (a JSONL file) when set: docs/reliability.md is made from it."""
    out = os.environ.get("LMKIT_FUZZ_REPORT")
    if out:
        with open(out, "a", encoding="utf-8") as f:
            f.write(json.dumps({"loader": report.name, "tried": report.tried, "rejected": report.rejected,
                                "accepted": report.accepted, "escaped": len(report.escaped)}) + "\n")


# ---- valid inputs, written by lmkit ----------------------------------------------------------
def _tiny_llama(vocab: int = 64):
    from lmkit.models.config import ModelConfig
    from lmkit.models.decoder import DecoderLM

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=vocab, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2, d_ff=64, max_seq_len=32,
                      model_type="llama", tie_embeddings=False)
    return DecoderLM(cfg).eval()


@pytest.fixture(scope="module")
def valid(tmp_path_factory) -> Path:
    """One directory per format, each holding files that lmkit wrote."""
    from lmkit.data.sft import toy_sft_rows
    from lmkit.hub import save_pretrained
    from lmkit.ngram import train_ngram
    from lmkit.ngram.arpa import write_arpa
    from lmkit.peft.lora import LoraConfig, inject_lora
    from lmkit.peft.peft_format import save_peft_adapter
    from lmkit.quant.checkpoint import save_quantized
    from lmkit.quant.quantize_model import quantize_model
    from lmkit.tokenizers import BPETokenizer
    from lmkit.tokenizers.unigram import UnigramTokenizer

    root = tmp_path_factory.mktemp("valid")
    text = "the quick brown fox jumps over the lazy dog. " * 20 + "a b c d e f g h i j k l m n o p\n"
    save_pretrained(_tiny_llama(), root / "hf")
    bpe = BPETokenizer.train([text], vocab_size=300, special_tokens=["<|endoftext|>"])
    (root / "tokjson").mkdir()
    bpe.save_hf_json(root / "tokjson" / "tokenizer.json")
    (root / "toklmkit").mkdir()
    bpe.save(root / "toklmkit" / "tokenizer.lmkit.json")
    (root / "spm").mkdir()
    UnigramTokenizer.train([text], vocab_size=36).save_sentencepiece(root / "spm" / "tok.model")
    (root / "arpa").mkdir()
    write_arpa(train_ngram(["the cat sat", "the dog sat on the mat", "a cat ran"], order=3, method="kn"),
               root / "arpa" / "lm.arpa")
    lora = inject_lora(_tiny_llama(), LoraConfig(r=2, alpha=4, target_modules=("q_proj", "v_proj")))
    save_peft_adapter(lora, root / "peft")
    save_quantized(quantize_model(_tiny_llama(), "nf4"), root / "quant")
    (root / "jsonl").mkdir()
    rows = toy_sft_rows(4)
    (root / "jsonl" / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs = [{"prompt": "Say hi", "chosen": "hi", "rejected": "no"},
             {"prompt": [{"role": "user", "content": "2+2?"}], "chosen": "4", "rejected": "5"}]
    (root / "jsonl" / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs))
    task = [{"context": "The capital of France is", "choices": ["Paris", "Rome"], "gold": 0},
            {"query": "2 + 2 =", "choices": ["4", "four", "5"], "label": 1},
            {"question": "Cats say", "choices": ["meow", "woof"], "answer": "woof"}]
    (root / "jsonl" / "task.jsonl").write_text("".join(json.dumps(r) + "\n" for r in task))
    return root


def _load_hf(d: Path) -> None:
    from lmkit.hub import load_pretrained

    load_pretrained(d)


def _load_tokenizer(name: str) -> Callable[[Path], Any]:
    def load(d: Path) -> None:
        from lmkit.tokenizers.loading import load_tokenizer

        tok = load_tokenizer(d / name)
        tok.decode(tok.encode("the quick brown fox"))  # a loaded tokenizer must also work

    return load


def _load_arpa(d: Path) -> None:
    from lmkit.ngram.arpa import read_arpa

    read_arpa(d / "lm.arpa")


def _load_peft(d: Path) -> None:
    from lmkit.peft.peft_format import load_peft_adapter

    load_peft_adapter(_tiny_llama(), d)


def _load_quant(d: Path) -> None:
    from lmkit.quant.checkpoint import load_quantized

    load_quantized(d)


def _load_sft(d: Path) -> None:
    from lmkit.data.sft import read_sft_file

    read_sft_file(d / "sft.jsonl")


def _load_pairs(d: Path) -> None:
    from lmkit.data.preference import load_preference_jsonl

    load_preference_jsonl(d / "pairs.jsonl")


def _load_task(d: Path) -> None:
    from lmkit.eval.multiple_choice import load_task

    load_task(d / "task.jsonl")


# name, valid sub-directory, file mutated, mutator, loader
CASES = [
    ("safetensors", "hf", "model.safetensors", mutate_bytes, _load_hf),
    ("config.json", "hf", "config.json", mutate_json_file, _load_hf),
    ("tokenizer.json", "tokjson", "tokenizer.json", mutate_json_file, _load_tokenizer("tokenizer.json")),
    ("tokenizer.lmkit.json", "toklmkit", "tokenizer.lmkit.json", mutate_json_file,
     _load_tokenizer("tokenizer.lmkit.json")),
    ("sentencepiece.model", "spm", "tok.model", mutate_bytes, _load_tokenizer("tok.model")),
    ("arpa", "arpa", "lm.arpa", mutate_text_lines, _load_arpa),
    ("peft-config", "peft", "adapter_config.json", mutate_json_file, _load_peft),
    ("peft-weights", "peft", "adapter_model.safetensors", mutate_bytes, _load_peft),
    ("quant-config", "quant", "quantization.json", mutate_json_file, _load_quant),
    ("quant-weights", "quant", "model.safetensors", mutate_bytes, _load_quant),
    ("sft-jsonl", "jsonl", "sft.jsonl", mutate_jsonl_file, _load_sft),
    ("preference-jsonl", "jsonl", "pairs.jsonl", mutate_jsonl_file, _load_pairs),
    ("mc-task-jsonl", "jsonl", "task.jsonl", mutate_jsonl_file, _load_task),
]


@pytest.mark.parametrize("name,sub,target,mutate,load", CASES, ids=[c[0] for c in CASES])
def test_fuzz_loader(valid, tmp_path, name, sub, target, mutate, load):
    load(valid / sub)  # the pristine input loads
    _check(fuzz(name, valid / sub, target, mutate, load, FAST, SEED, tmp_path))


@pytest.mark.slow
@pytest.mark.parametrize("name,sub,target,mutate,load", CASES, ids=[c[0] for c in CASES])
def test_fuzz_loader_long(valid, tmp_path, name, sub, target, mutate, load):
    _check(fuzz(name, valid / sub, target, mutate, load, SLOW, SEED + 1, tmp_path))


def test_mutators_are_deterministic():
    a = [mutate_bytes(b"0123456789abcdef" * 4, random.Random("s"))[0] for _ in range(3)]
    b = [mutate_bytes(b"0123456789abcdef" * 4, random.Random("s"))[0] for _ in range(3)]
    assert a == b
    obj = {"a": [1, {"b": 2.5}], "c": "d"}
    runs = [[json.dumps(mutate_json_value(obj, rng)[0]) for _ in range(20)] for rng in (random.Random(1), random.Random(1))]
    assert runs[0] == runs[1] and obj == {"a": [1, {"b": 2.5}], "c": "d"}
