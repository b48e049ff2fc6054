"""Cross-modal retrieval recall: how often the right caption is among an image's k nearest texts.

Image->text R@k = the share of images for which at least one relevant text is among the k texts
most similar to it (cosine of the normalised embeddings), the figure CLIP papers report for
COCO/Flickr retrieval. Relevance is a boolean matrix, so a caption shared by many images, or
several captions of one image, are handled alike.
"""

from __future__ import annotations

import torch

from lmkit.errors import ConfigError


def recall_at_k(similarity: torch.Tensor, relevant: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[int, float]:
    """similarity [N_queries, N_items], relevant [N_queries, N_items] bool -> {k: R@k}."""
    if similarity.shape != relevant.shape:
        raise ConfigError(f"similarity {tuple(similarity.shape)} and relevant {tuple(relevant.shape)} differ in shape")
    if not bool(relevant.any(dim=1).all()):
        raise ConfigError("every query needs at least one relevant item")
    order = similarity.argsort(dim=1, descending=True)
    hits = relevant.gather(1, order)  # hits[i, r]: the item ranked r for query i is relevant
    return {k: float(hits[:, :k].any(dim=1).float().mean()) for k in ks}


@torch.no_grad()
def image_to_text_recall(model, pixels: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, relevant: torch.Tensor,
                         ks: tuple[int, ...] = (1, 5), batch_size: int = 512) -> dict[int, float]:
    """R@k of a `CLIP` ranking the texts (ids, mask) for each image; relevant [N_images, N_texts]."""
    model.eval()
    images = torch.cat([model.encode_image(pixels[i:i + batch_size]) for i in range(0, pixels.shape[0], batch_size)])
    texts = torch.cat([model.encode_text(ids[i:i + batch_size], mask[i:i + batch_size])
                       for i in range(0, ids.shape[0], batch_size)])
    return recall_at_k(images @ texts.t(), relevant, ks)
