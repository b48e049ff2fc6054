"""GGML block formats (hub/gguf_quants.py): quantize / dequantize bit-equal to the `gguf` package's
reference where it has one (Q8_0, Q4_0, Q5_0 quantize; every dequantize); the K-quant quantizers
(which the package lacks) against bytes recorded from ggml-quants.c's quantize_row_*_ref compiled
as ISO C (-ffp-contract=off); error bounds; bad input."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from lmkit.errors import CheckpointError
from lmkit.hub import gguf_quants as q

gguf = pytest.importorskip("gguf")
T = gguf.GGMLQuantizationType


def data(rows: int = 24, cols: int = 512, seed: int = 1234) -> np.ndarray:
    """Random rows of very different scales plus the corner cases the C loops branch on."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((rows, cols)) * rng.uniform(0.001, 2.0, (rows, 1))).astype(np.float32)
    x[0] = 0  # all-zero blocks
    x[1, :256] = 0.25  # constant blocks
    x[2, :32] = -1  # ties of the largest magnitude
    x[3, 100:] *= 1e-3  # tiny sub-blocks next to large ones
    x[4] = np.abs(x[4])  # all positive: min 0
    x[5] = -np.abs(x[5])  # all negative
    x[6, ::7] = 0
    return x


@pytest.mark.parametrize("name", ["Q8_0", "Q4_0", "Q5_0", "F16", "BF16"])
def test_quantize_bit_equal_to_gguf(name):
    x = data()
    ours = q.quantize(x, name)
    ref = np.asarray(gguf.quants.quantize(x, getattr(T, name))).view(np.uint8)
    assert ours.shape == ref.shape and np.array_equal(ours, ref)


@pytest.mark.parametrize("name", ["Q8_0", "Q4_0", "Q5_0", "Q4_K", "Q6_K", "F16", "BF16", "F32"])
def test_dequantize_bit_equal_to_gguf(name):
    t = q.ggml_type(name)
    rng = np.random.default_rng(7)
    raw = rng.integers(0, 256, (16, 8 * t.type_size), dtype=np.uint8)
    with np.errstate(invalid="ignore", over="ignore"):  # random scale bytes include inf / nan
        ours = q.dequantize(raw, name)
        ref = np.asarray(gguf.quants.dequantize(raw, getattr(T, name)), dtype=np.float32)
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    assert np.array_equal(ours.view(np.uint32), ref.view(np.uint32))  # bit for bit, NaN payloads too


# sha256 (first 16 hex digits) of quantize_row_*_ref(data()) from ggml-quants.c (llama.cpp as vendored by
# llama-cpp-python 0.3.36), built with gcc -O3 -march=native -ffp-contract=off
REFERENCE = {"Q4_K": "b5ee8725b70cdd37", "Q6_K": "1609a048ef26193b", "Q5_0": "6749423654f64c93",
             "Q4_0": "78b11ed2ef8f25bc", "Q8_0": "02f0ce169160d460"}


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_quantize_bit_equal_to_ggml_reference_c(name):
    assert hashlib.sha256(q.quantize(data(), name).tobytes()).hexdigest()[:16] == REFERENCE[name]


@pytest.mark.parametrize("name,bound", [("Q8_0", 0.006), ("Q6_K", 0.025), ("Q5_0", 0.05), ("Q4_K", 0.09),
                                        ("Q4_0", 0.11)])
def test_round_trip_error(name, bound):
    x = np.random.default_rng(3).standard_normal((8, 1024)).astype(np.float32)
    raw = q.quantize(x, name)
    t = q.ggml_type(name)
    assert raw.shape == (8, 1024 // t.block_size * t.type_size)
    back = q.dequantize(raw, name)
    rel = np.linalg.norm(back - x) / np.linalg.norm(x)
    assert rel < bound, rel
    assert np.array_equal(q.dequantize(q.quantize(np.zeros((2, 256), np.float32), name), name), np.zeros((2, 256)))


def test_bad_input():
    with pytest.raises(CheckpointError, match="multiple of 256"):
        q.quantize(np.zeros((2, 96), np.float32), "Q4_K")
    with pytest.raises(CheckpointError, match="multiple of 32"):
        q.quantize(np.zeros((2, 40), np.float32), "Q8_0")
    with pytest.raises(CheckpointError, match="not supported"):
        q.ggml_type("IQ2_XXS")
    with pytest.raises(CheckpointError, match="not supported"):
        q.ggml_type(10)  # Q2_K
    with pytest.raises(CheckpointError, match="whole blocks"):
        q.dequantize(np.zeros((1, 100), np.uint8), "Q6_K")


@pytest.mark.parametrize("name", ["Q8_0", "Q4_0", "Q5_0", "Q4_K", "Q6_K"])
def test_integer_groups_give_the_dequantized_values(name):
    """code * scale + offset per group: what an integer layer takes from a GGUF tensor."""
    x = data(8, 512)
    raw = q.quantize(x, name)
    codes, scales, offsets, group = q.integer_groups(raw, name)
    assert codes.dtype == np.int8 and codes.shape == x.shape and scales.shape == (8, 512 // group)
    low, high = {"Q8_0": (-127, 127), "Q4_0": (-8, 7), "Q5_0": (-16, 15), "Q4_K": (-8, 7), "Q6_K": (-32, 31)}[name]
    assert low <= codes.min() and codes.max() <= high
    values = codes.reshape(8, -1, group).astype(np.float32) * scales[..., None] + offsets[..., None]
    np.testing.assert_allclose(values.reshape(x.shape), q.dequantize(raw, name), rtol=1e-6, atol=1e-7)
    if name != "Q4_K":
        assert not offsets.any()
    with pytest.raises(CheckpointError, match="not an integer block format"):
        q.integer_groups(raw, "F16")
