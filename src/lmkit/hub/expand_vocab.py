"""Vocabulary expansion, the model side: grow the embedding and LM head for the pieces a
domain tokenizer added (tokenizers/bpe_vocab_merge.py), and optionally train those rows alone.

Initialisation. A new token is a fusion of old tokens (its ``leaves``); before any
training the model already reads that string as those old tokens, so the new input row is
the mean of their input rows and the new output row the mean of their output rows. That
is a far better start than the mean of all rows (hub/add_tokens.py, right for control
tokens that mean nothing yet) or random rows: 的 starts near the bytes that spell 的.
A tied head stays tied (one shared row). Logits of the old tokens on old ids are exactly
unchanged (only rows are added), so the expanded model scores old encodings as before.

Training the new rows first (`train_new_rows_only`): every parameter but the embedding
and the LM head is frozen, and a gradient hook zeroes the rows of old tokens, so an
optimizer with no weight decay (AdamW's decay acts without a gradient) leaves the old
model bit for bit as it was while the new rows learn; then unfreeze and train everything.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from lmkit.errors import CheckpointError, TokenizerError
from lmkit.hub.add_tokens import resize_token_embeddings


def _rows(model: nn.Module) -> tuple[nn.Embedding, nn.Linear | None, bool]:
    embed = getattr(model, "embed_tokens", None)
    head = getattr(model, "lm_head", None)
    if not isinstance(embed, nn.Embedding):
        raise CheckpointError(f"{type(model).__name__} has no token embedding (embed_tokens) to expand")
    head = head if isinstance(head, nn.Linear) else None
    return embed, head, head is not None and head.weight is embed.weight


def expand_embeddings(model: nn.Module, vocab_size: int, leaves: Mapping[int, Sequence[int]]) -> nn.Module:
    """Grow `model` to `vocab_size` rows; row ``i`` in `leaves` becomes the mean of the rows
    ``leaves[i]`` (input embedding and untied LM head alike). Rows not in `leaves` get the
    mean of all old rows."""
    embed, head, tied = _rows(model)
    old = embed.weight.shape[0]
    for i, parts in leaves.items():
        if not parts or min(parts) < 0 or max(parts) >= old:
            raise TokenizerError(f"new token {i}: its old-token leaves {list(parts)} are not rows of the old "
                                 f"embedding (size {old})")
    resize_token_embeddings(model, vocab_size)
    with torch.no_grad():
        weights = [embed.weight] + ([head.weight] if head is not None and not tied else [])
        if head is not None and head.bias is not None:
            weights.append(head.bias)
        for w in weights:
            for i, parts in leaves.items():  # ids below `old`: unused padding rows, overwritten
                w[i] = w[list(parts)].float().mean(dim=0).to(w.dtype)
    return model


def train_new_rows_only(model: nn.Module, first_new_id: int) -> list[Any]:
    """Freeze everything except the embedding and LM head, and mask their gradients to the rows
    ``first_new_id`` and above. Returns the hook handles (``h.remove()`` for each, and
    ``requires_grad_(True)``, to train everything again). Use weight_decay=0 meanwhile."""
    embed, head, tied = _rows(model)
    keep = {id(embed.weight)} | ({id(head.weight)} if head is not None else set())
    if head is not None and head.bias is not None:
        keep.add(id(head.bias))
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)

    def mask(grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        grad[:first_new_id] = 0
        return grad

    params = {id(p): p for p in model.parameters() if id(p) in keep}
    return [p.register_hook(mask) for p in params.values()]


def expand_vocab_checkpoint(model_dir: str | os.PathLike, domain_files: Sequence[str | os.PathLike],
                            n_new_tokens: int, out: str | os.PathLike, domain_vocab_size: int | None = None,
                            non_ascii_only: bool = False) -> dict:
    """Train a domain BPE on `domain_files`, merge `n_new_tokens` of its pieces into the
    checkpoint's byte-level BPE (tokenizer.json or tokenizer.lmkit.json), grow the model and
    write the expanded checkpoint to `out`. Returns a summary."""
    from lmkit.hub.add_tokens import _copy_other_files
    from lmkit.hub.pretrained import load_pretrained, save_pretrained
    from lmkit.tokenizers.bpe import BPETokenizer
    from lmkit.tokenizers.bpe_vocab_merge import expand_bpe, non_ascii

    src, dst = Path(model_dir), Path(out)
    tok_file = src / "tokenizer.json" if (src / "tokenizer.json").is_file() else src / "tokenizer.lmkit.json"
    if not tok_file.is_file():
        raise CheckpointError(f"{src}: no tokenizer.json (or tokenizer.lmkit.json) to expand")
    base = BPETokenizer.load(tok_file)
    files = [Path(f) for f in domain_files]
    expansion = expand_bpe(base, files, n_new_tokens, domain_vocab_size,
                           keep=non_ascii if non_ascii_only else None)
    model = load_pretrained(src)
    rows = max(expansion.tokenizer.vocab_size, model.embed_tokens.weight.shape[0])
    expand_embeddings(model, rows, expansion.leaves)
    save_pretrained(model, dst, tokenizer=expansion.tokenizer)
    if dst.resolve() != src.resolve():
        _copy_other_files(src, dst)
    if (src / "tokenizer.lmkit.json").is_file():
        expansion.tokenizer.save(dst / "tokenizer.lmkit.json")
    return {"added": len(expansion.new_ids), "skipped": expansion.skipped, "vocab_size": rows,
            "first_new_id": expansion.base_vocab_size, "examples": expansion.new_pieces()[:20], "path": str(dst)}
