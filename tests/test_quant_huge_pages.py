"""Kernel weights in transparent huge pages (quant/huge_pages.py): same values, stable caches."""

from __future__ import annotations

import copy

import torch
from torch import nn

from lmkit.quant import huge_pages
from lmkit.quant.huge_pages import HUGE_PAGE, MIN_BYTES, huge_page_copy
from lmkit.quant.linear import Int8Linear


def test_copy_has_the_same_values_and_is_made_once():
    t = torch.randn(MIN_BYTES // 4 + 3)
    with torch.inference_mode():  # built under inference mode (as the decode step does): still an ordinary tensor
        h = huge_page_copy(t)
    assert torch.equal(h, t) and not h.is_inference()
    if huge_pages._MODE != "never":
        assert h.data_ptr() != t.data_ptr() and h.data_ptr() % HUGE_PAGE == 0
    assert huge_page_copy(h) is h  # already in huge pages: no second copy
    d = copy.deepcopy(h)  # a deepcopy is ordinary memory again, though it carries the mark
    assert torch.equal(huge_page_copy(d), t)
    small = torch.randn(16)
    assert huge_page_copy(small) is small


def test_int8_kernel_moves_its_codes_once_and_stays_cached():
    torch.manual_seed(0)
    lin = nn.Linear(2048, 2048, bias=False)  # 4 MiB of int8 codes
    m = Int8Linear.from_linear(lin)
    codes = m.weight_int8.clone()
    fn = m.kernel_fn()
    assert torch.equal(m.weight_int8, codes)  # same values, possibly new memory
    assert m.kernel_fn() is fn  # keyed on the moved buffer: no rebuild on the next call
    x = torch.randn(1, 2048)
    with torch.no_grad():
        assert torch.equal(m(x), m(x))
    assert m.state_dict()["weight_int8"].dtype == torch.int8
