"""BLIP's three pretraining losses on a batch of matched (image, caption) pairs.

ITC  image-text contrastive: CLIP's symmetric InfoNCE (`clip_loss`) on the unimodal embeddings.
ITM  image-text matching: the grounded encoder's [ENC] state classifies (image, text) as matched
     or not. Besides the B matched pairs, each image gets one wrong caption and each caption one
     wrong image, *hard negatives* drawn from the batch with probability softmax(ITC similarity)
     over the wrong ones: the pairs the contrastive model confuses are the ones worth learning.
     "Wrong" excludes any caption equal to the true one (`same_rows`): with short compositional
     captions two images of a batch often share a caption, and such a pair is not a negative.
     Measured on the shapes scenes (docs/multimodal.md): with only hard negatives the small model's
     ITM stays at the prior for 400 steps (the contrastive part learns fast, so the negatives are
     near-duplicates from the start); with uniformly drawn ones it starts learning within ~150
     steps. `hard_share` mixes the two (a curriculum-free middle way).
LM   the grounded decoder's next-token cross-entropy of the caption ([DEC] first).
The three are summed with equal weight, as in the paper.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmkit.vision.blip import BLIP
from lmkit.vision.clip import clip_loss


def same_rows(ids: torch.Tensor) -> torch.Tensor:
    """[B, B] bool: rows i and j of ids [B, T] are the same token sequence (the same caption)."""
    return (ids[:, None, :] == ids[None, :, :]).all(-1)


def hard_negatives(similarity: torch.Tensor, forbidden: torch.Tensor, generator: torch.Generator | None = None,
                   hard_share: float = 1.0) -> torch.Tensor:
    """For each row i of similarity [B, B] one column j != forbidden, drawn with probability
    softmax(similarity[i]) over the allowed columns (uniformly when a row's weights underflow);
    with hard_share < 1 that distribution is mixed with the uniform one over the allowed columns
    (hard_share * hard + (1 - hard_share) * uniform). A row with no allowed column keeps its own
    index (and its pair counts as a positive)."""
    if not 0.0 <= hard_share <= 1.0:
        raise ValueError(f"hard_share={hard_share}: must be in [0, 1]")
    weights = similarity.detach().float().softmax(dim=-1).masked_fill(forbidden, 0.0)
    allowed = (~forbidden).float()
    empty = weights.sum(-1) <= 0
    weights[empty] = allowed[empty]
    if hard_share < 1.0:
        uniform = allowed / allowed.sum(-1, keepdim=True).clamp_min(1.0)
        weights = hard_share * weights / weights.sum(-1, keepdim=True).clamp_min(1e-30) + (1 - hard_share) * uniform
    none = allowed.sum(-1) == 0
    weights[none] = 0.0
    weights[none, none.nonzero().flatten()] = 1.0
    return torch.multinomial(weights, 1, generator=generator).flatten()


def blip_losses(
    model: BLIP, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
    *, enc_token_id: int | None = None, generator: torch.Generator | None = None, hard_share: float = 1.0,
) -> dict[str, torch.Tensor]:
    """-> {"itc", "itm", "lm", "loss" (their sum)} for B matched pairs. input_ids start with the [CLS]
    token (ITC); ITM sees them with [ENC] (enc_token_id) first, the decoder with [DEC] (bos) first.
    hard_share: see `hard_negatives` (BLIP: 1, every negative drawn by similarity)."""
    b = pixel_values.shape[0]
    states = model.image_states(pixel_values)
    image_emb = model.image_embedding(states)
    text_emb = model.text_embedding(input_ids, attention_mask)
    sim = model.similarity(image_emb, text_emb)
    itc = clip_loss(sim)

    itm_ids = input_ids.clone()
    if enc_token_id is not None:
        itm_ids[:, 0] = enc_token_id
    same = same_rows(input_ids)
    neg_text = hard_negatives(sim, same, generator, hard_share)  # for image i, a wrong caption
    neg_image = hard_negatives(sim.t(), same, generator, hard_share)  # for caption j, an image whose caption differs
    idx = torch.arange(b, device=input_ids.device)
    image_rows = torch.cat([idx, idx, neg_image])
    text_rows = torch.cat([idx, neg_text, idx])
    logits = model.itm_logits(states[image_rows], itm_ids[text_rows], attention_mask[text_rows])
    labels = same[image_rows, text_rows].long()  # 1 for the matched pairs (and a row with no negative)
    itm = F.cross_entropy(logits.float(), labels)

    dec_ids = input_ids.clone()
    dec_ids[:, 0] = model.config.text.bos_token_id
    lm = model.caption_loss(states, dec_ids, attention_mask)
    return {"itc": itc, "itm": itm, "lm": lm, "loss": itc + itm + lm}
