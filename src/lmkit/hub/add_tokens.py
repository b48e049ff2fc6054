"""Add tokens to a model's vocabulary: the tokenizer learns them, the embeddings and LM head grow.

The usual reason is a chat template whose control tokens (ChatML's ``<|im_start|>``,
``<|im_end|>``) the base tokenizer lacks: spelled out as several ordinary tokens, the end of
a turn is a sequence the model must learn to produce piece by piece, and every tool that
stops on a token id runs on. `add_tokens` gives each string one id (from the tokenizer's
``vocab_size`` up), adds rows to the input embedding and the LM head (tied or not) and
initialises them with the mean of the existing rows — a new token then starts as an
"average" token: its logit is the average logit, not a random spike, and the logits of every
old token are exactly unchanged (tested against transformers).

`add_tokens_to_checkpoint` does the same on a checkpoint directory and writes the result
atomically, with the eos / pad ids and chat template that the new tokens make possible
(`hub/end_of_turn.py`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from lmkit.errors import CheckpointError, TokenizerError
from lmkit.tokenizers.special_tokens import PAD_TOKEN


def chat_tokens(template_name: str, tokenizer: Any) -> list[str]:
    """The tokens ``--chat NAME`` adds: the template's control tokens, and a pad token when the
    tokenizer has none (batched training and serving pad with it)."""
    from lmkit.hub.end_of_turn import PAD_CANDIDATES, find_token
    from lmkit.tokenizers.chat_template import get_template

    tokens = list(get_template(template_name).special_tokens)
    if find_token(tokenizer, PAD_CANDIDATES) is None:
        tokens.append(PAD_TOKEN)
    return tokens


def _vocab(tokenizer: Any) -> dict[str, int]:
    if hasattr(tokenizer, "get_vocab"):
        return dict(tokenizer.get_vocab())
    raise TokenizerError(f"cannot read the vocabulary of a {type(tokenizer).__name__}")


def _add_to_tokenizer(tokenizer: Any, tokens: Sequence[str], special: bool) -> list[int]:
    """Add `tokens` (those not yet single tokens) to `tokenizer` in place; their ids, in order."""
    from lmkit.tokenizers.bpe import BPETokenizer
    from lmkit.tokenizers.sentencepiece_bpe import SentencePieceBPETokenizer

    if isinstance(tokenizer, (BPETokenizer, SentencePieceBPETokenizer)):
        return tokenizer.add_tokens(tokens, special=special)
    if hasattr(tokenizer, "add_special_tokens") and hasattr(tokenizer, "convert_tokens_to_ids"):  # transformers
        vocab = tokenizer.get_vocab()
        new = [t for t in tokens if t not in vocab]
        if new:
            tokenizer.add_tokens(new, special_tokens=special)
        return [int(tokenizer.convert_tokens_to_ids(t)) for t in tokens]
    raise TokenizerError(
        f"adding tokens is supported for BPE tokenizers (lmkit's, or a tokenizer.json with a BPE model, "
        f"byte-level or SentencePiece-style) and transformers tokenizers, not {type(tokenizer).__name__}"
    )


def _grown(weight: torch.Tensor, rows: int, fill_from: int, reset: Iterable[int]) -> torch.Tensor:
    """`weight` with `rows` rows: rows beyond the old ones, and the rows in `reset`, are set to
    the mean of the first `fill_from` rows."""
    with torch.no_grad():
        mean = weight[:fill_from].float().mean(dim=0).to(weight.dtype)
        out = torch.empty((rows, *weight.shape[1:]), dtype=weight.dtype, device=weight.device)
        n = min(rows, weight.shape[0])
        out[:n] = weight[:n]
        out[n:] = mean
        for i in reset:
            out[i] = mean
    return out


def resize_token_embeddings(model: nn.Module, vocab_size: int, reset_ids: Iterable[int] = (),
                            fill_from: int | None = None) -> nn.Module:
    """Grow `model`'s embedding and LM head to `vocab_size` rows (never shrinks); new rows and
    the rows `reset_ids` get the mean of the first `fill_from` rows (default: the old size).
    A tied head stays tied. Updates ``model.config.vocab_size``."""
    embed = getattr(model, "embed_tokens", None)
    head = getattr(model, "lm_head", None)
    if not isinstance(embed, nn.Embedding):
        raise CheckpointError(f"{type(model).__name__} has no token embedding (embed_tokens) to resize")
    old = embed.weight.shape[0]
    rows = max(old, int(vocab_size))
    fill_from = min(fill_from or old, old)
    reset = [i for i in reset_ids if i < old]
    tied = isinstance(head, nn.Linear) and head.weight is embed.weight
    embed.weight = nn.Parameter(_grown(embed.weight, rows, fill_from, reset), requires_grad=embed.weight.requires_grad)
    embed.num_embeddings = rows
    if isinstance(head, nn.Linear):
        if tied:
            head.weight = embed.weight
        else:
            head.weight = nn.Parameter(_grown(head.weight, rows, fill_from, reset), requires_grad=head.weight.requires_grad)
        if head.bias is not None:
            head.bias = nn.Parameter(_grown(head.bias, rows, fill_from, reset), requires_grad=head.bias.requires_grad)
        head.out_features = rows
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "vocab_size"):
        cfg.vocab_size = rows
    return model


def add_tokens(model: nn.Module, tokenizer: Any, tokens: Sequence[str], special: bool = True) -> list[int]:
    """Add `tokens` to `tokenizer` (in place) and grow `model`'s embedding and LM head to match,
    new rows initialised from the mean embedding. Tokens already in the vocabulary keep their
    id. Returns the ids of `tokens`, in order."""
    tokens = list(dict.fromkeys(tokens))
    if not tokens or any(not isinstance(t, str) or not t for t in tokens):
        raise TokenizerError(f"add_tokens needs non-empty token strings, got {tokens!r}")
    known = _vocab(tokenizer)
    ids = _add_to_tokenizer(tokenizer, tokens, special)
    new_ids = [i for t, i in zip(tokens, ids) if t not in known]
    n_tok = max(len(_vocab(tokenizer)), max(ids) + 1)
    old_rows = model.embed_tokens.weight.shape[0] if hasattr(model, "embed_tokens") else 0
    fill_from = min(len(known), old_rows) if known else None
    resize_token_embeddings(model, n_tok, reset_ids=new_ids, fill_from=fill_from)
    return ids


def add_tokens_to_checkpoint(model_dir: str | os.PathLike, tokens: Sequence[str] | None = None,
                             chat: str | None = None, out: str | os.PathLike | None = None) -> dict:
    """Add `tokens` and/or the tokens of chat template `chat` (see `chat_tokens`) to the
    checkpoint `model_dir` (its tokenizer.json, or tokenizer.lmkit.json) and write the grown
    checkpoint to `out` (default: in place), atomically, with tokenizer files, eos / pad ids and
    chat template. Returns {"added": {token: id}, "vocab_size": rows, "path": out}."""
    from lmkit.hub.pretrained import load_pretrained, save_pretrained
    from lmkit.tokenizers.loading import load_tokenizer

    src = Path(model_dir)
    dst = Path(out) if out is not None else src
    tok_file = src / "tokenizer.json" if (src / "tokenizer.json").is_file() else src / "tokenizer.lmkit.json"
    if not tok_file.is_file():
        raise CheckpointError(f"{src}: no tokenizer.json (or tokenizer.lmkit.json) to add tokens to")
    tokenizer = load_tokenizer(tok_file)
    wanted = list(tokens or [])
    if chat:
        wanted += chat_tokens(chat, tokenizer)
    if not wanted:
        raise TokenizerError("nothing to add: give tokens or a chat template (e.g. --chat chatml)")
    model = load_pretrained(src)
    before = _vocab(tokenizer)
    ids = add_tokens(model, tokenizer, wanted)
    added = {t: i for t, i in zip(dict.fromkeys(wanted), ids) if t not in before}
    save_pretrained(model, dst, tokenizer=tokenizer)
    if dst.resolve() != src.resolve():
        _copy_other_files(src, dst)
    if (src / "tokenizer.lmkit.json").is_file():
        tokenizer.save(dst / "tokenizer.lmkit.json")
    return {"added": added, "vocab_size": model.config.vocab_size, "path": str(dst)}


def _copy_other_files(src: Path, dst: Path) -> None:
    """Files of `src` that the new checkpoint `dst` does not have yet (README, tokenizer
    extras), weights excepted, so that `dst` is the whole model."""
    for f in src.iterdir():
        if f.is_file() and not (dst / f.name).exists() and not f.name.endswith((".safetensors", ".bin")) \
                and f.name != "model.safetensors.index.json":
            shutil.copy2(f, dst / f.name)
