"""BLIP on the synthetic shapes scenes (vision/shapes.py): tokenizer, model size, and the two figures.

Captions are the scenes' canonical ones ("a red circle left of a blue square"), tokenised by a
word-level tokenizer over `caption_words()` as ``<cls> words <sep> <pad>...``; ITM swaps
``<cls>`` for ``<enc>`` and the decoder for ``<dec>`` (BLIP's [CLS]/[ENC]/[DEC]).

Figures on held-out scenes:
  caption exact-attribute accuracy  greedy captions whose colours, shapes and relation all equal
                                    the scene's ("a blue square right of a red circle" counts as
                                    equal to "a red circle left of a blue square");
  ITM AUC                           P(match) of each scene's own caption against the caption of
                                    another scene that differs ("random" negatives) and against its
                                    own caption with one attribute changed (a colour, a shape or the
                                    relation: "hard" negatives); the area under the ROC curve.
"""

from __future__ import annotations

import random

import torch

from lmkit.tokenizers.simple import WhitespaceTokenizer
from lmkit.vision.blip import BLIP, BLIPConfig, blip_vision_config
from lmkit.vision.blip_text import BLIPTextConfig
from lmkit.vision.clip_digits import tokenize as framed_tokenize
from lmkit.vision.shapes import COLOURS, RELATIONS, SHAPES, Scene, caption_words

SPECIALS = ("<pad>", "<cls>", "<enc>", "<dec>", "<sep>")
MAX_LEN = 12  # "<cls> a red circle left of a blue square <sep>" is 10
HARD_SHARE = 0.5  # half the ITM negatives drawn by ITC similarity, half uniformly (vision/blip_losses.py)
_MIRROR = {"right of": "left of", "below": "above"}


def shapes_tokenizer() -> WhitespaceTokenizer:
    """A word-level tokenizer over every word a shapes caption or question can use."""
    return WhitespaceTokenizer.train([" ".join(caption_words())], special_tokens=SPECIALS, unk_token="<unk>")


def tokenize(tok: WhitespaceTokenizer, texts: list[str], max_len: int = MAX_LEN) -> tuple[torch.Tensor, torch.Tensor]:
    """texts -> (ids [N, max_len] as ``<cls> words <sep> <pad>...``, attention mask [N, max_len])."""
    return framed_tokenize(tok, texts, max_len, start="<cls>", end="<sep>")


def decode_caption(tok: WhitespaceTokenizer, ids: torch.Tensor) -> str:
    """Generated ids (first token [DEC]) -> the words before <sep> (or padding)."""
    stop = {tok.token_to_id("<sep>"), tok.token_to_id("<pad>")}
    words = []
    for i in ids.tolist()[1:]:
        if i in stop:
            break
        words.append(tok.id_to_token(i))
    return " ".join(words)


def shapes_blip_config(tok: WhitespaceTokenizer, image_size: int = 32, patch_size: int = 4, d_model: int = 64,
                       n_layers: int = 2) -> BLIPConfig:
    """A small BLIP for the shapes scenes (RGB, 32x32, 64 patches)."""
    heads = max(1, d_model // 16)
    tid = tok.token_to_id
    return BLIPConfig(
        vision=blip_vision_config(image_size=image_size, patch_size=patch_size, d_model=d_model, n_layers=n_layers,
                                  n_heads=heads, d_ff=4 * d_model),
        text=BLIPTextConfig(vocab_size=tok.vocab_size, max_seq_len=MAX_LEN, d_model=d_model, n_layers=n_layers,
                            n_heads=heads, d_ff=4 * d_model, encoder_width=d_model, pad_token_id=tid("<pad>"),
                            bos_token_id=tid("<dec>"), sep_token_id=tid("<sep>"), eos_token_id=tid("<sep>"),
                            label_smoothing=0.1),
        embed_dim=d_model,
    )


def new_shapes_blip(tok: WhitespaceTokenizer, seed: int = 0, **kw) -> BLIP:
    torch.manual_seed(seed)
    return BLIP(shapes_blip_config(tok, **kw))


def caption_attributes(caption: str) -> tuple | None:
    """A caption -> its attributes in a canonical order (relations "right of"/"below" mirrored), or None
    when it is not a well-formed shapes caption."""
    words = caption.split()

    def obj(w: list[str]) -> tuple[str, str] | None:
        ok = len(w) == 3 and w[0] == "a" and w[1] in COLOURS and w[2] in SHAPES
        return (w[1], w[2]) if ok else None

    if len(words) == 3:
        one = obj(words)
        return (one,) if one else None
    for relation in RELATIONS:
        n = len(relation.split())
        if len(words) == 6 + n and " ".join(words[3:3 + n]) == relation:
            first, second = obj(words[:3]), obj(words[3 + n:])
            if first is None or second is None:
                return None
            if relation in _MIRROR:
                return (second, _MIRROR[relation], first)
            return (first, relation, second)
    return None


@torch.no_grad()
def caption_accuracy(model: BLIP, tok: WhitespaceTokenizer, scenes: list[Scene], pixels: torch.Tensor,
                     batch_size: int = 256) -> tuple[float, list[str]]:
    """(share of greedy captions whose attributes equal the scene's, the captions)."""
    model.eval()
    captions: list[str] = []
    for i in range(0, len(scenes), batch_size):
        out = model.generate_captions(pixels[i:i + batch_size], max_new_tokens=MAX_LEN - 1)
        captions += [decode_caption(tok, row) for row in out]
    right = sum(caption_attributes(c) == caption_attributes(s.caption()) for c, s in zip(captions, scenes))
    return right / max(1, len(scenes)), captions


def changed_caption(scene: Scene, rng: random.Random) -> str:
    """The scene's caption with one attribute changed: a colour, a shape, or (two shapes) the relation."""
    objs = [[o.colour, o.shape] for o in scene.objects]
    relation = scene.relation
    choices = ["colour", "shape"] + (["relation"] if relation else [])
    what = rng.choice(choices)
    k = rng.randrange(len(objs))
    if what == "colour":
        objs[k][0] = rng.choice([c for c in COLOURS if c not in {o[0] for o in objs}])
    elif what == "shape":
        objs[k][1] = rng.choice([s for s in SHAPES if s not in {o[1] for o in objs}])
    else:
        relation = rng.choice([r for r in RELATIONS if r != relation])  # each other relation means another scene
    text = f"a {objs[0][0]} {objs[0][1]}"
    return text if len(objs) == 1 else f"{text} {relation} a {objs[1][0]} {objs[1][1]}"


@torch.no_grad()
def itm_match_probability(model: BLIP, pixels: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor,
                          enc_token_id: int | None = None, batch_size: int = 256) -> torch.Tensor:
    """P(match) [N] of paired rows (image i, caption i) from the ITM head."""
    model.eval()
    ids = ids.clone()
    if enc_token_id is not None:
        ids[:, 0] = enc_token_id
    out = []
    for i in range(0, ids.shape[0], batch_size):
        states = model.image_states(pixels[i:i + batch_size])
        out.append(model.itm_logits(states, ids[i:i + batch_size], mask[i:i + batch_size]).softmax(-1)[:, 1])
    return torch.cat(out)


def auc(positive: torch.Tensor, negative: torch.Tensor) -> float:
    """Area under the ROC curve: P(a positive scores above a negative), ties counted half."""
    diff = positive.double()[:, None] - negative.double()[None, :]
    return float((diff > 0).double().mean() + 0.5 * (diff == 0).double().mean())


def itm_auc(model: BLIP, tok: WhitespaceTokenizer, scenes: list[Scene], pixels: torch.Tensor, seed: int = 0
            ) -> dict[str, float]:
    """{"random": AUC of own captions vs another scene's different caption, "hard": vs own caption with
    one attribute changed} on held-out scenes."""
    rng = random.Random(seed)
    own = [s.caption() for s in scenes]
    others = []
    for i in range(len(scenes)):
        differ = [c for c in own if caption_attributes(c) != caption_attributes(own[i])]
        if not differ:
            raise ValueError("every held-out scene has the same caption: no unmatched pairs to score")
        others.append(rng.choice(differ))
    hard = [changed_caption(s, rng) for s in scenes]
    enc = tok.token_to_id("<enc>")
    scores = {}
    for name, texts in (("own", own), ("random", others), ("hard", hard)):
        ids, mask = tokenize(tok, texts)
        scores[name] = itm_match_probability(model, pixels, ids, mask, enc)
    return {"random": auc(scores["own"], scores["random"]), "hard": auc(scores["own"], scores["hard"])}
