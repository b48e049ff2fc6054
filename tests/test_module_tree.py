"""models.module_tree.replace_module: the one way quant and peft swap a submodule by name."""

from __future__ import annotations

from torch import nn

from lmkit.models.module_tree import replace_module


def test_replace_module_nested_and_top_level():
    root = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 3), nn.ReLU()))
    inner = root[1][0]
    new = nn.Linear(2, 3, bias=False)
    assert replace_module(root, "1.0", new) is inner
    assert root[1][0] is new and root.get_submodule("1.0") is new
    top = nn.Identity()
    old = replace_module(root, "0", top)
    assert isinstance(old, nn.Linear) and root[0] is top
