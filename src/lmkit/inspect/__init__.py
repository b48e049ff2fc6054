"""lmkit.inspect — interpretability: attention maps per layer and head, attention rollout,
logit lens, gradient × input and integrated-gradients saliency, heatmap PNGs; `lmkit inspect`."""

from lmkit.inspect.attention_maps import attention_maps
from lmkit.inspect.logit_lens import LensLayer, logit_lens
from lmkit.inspect.rollout import attention_rollout
from lmkit.inspect.saliency import gradient_x_input, integrated_gradients, token_logit_fn

__all__ = [
    "LensLayer", "attention_maps", "attention_rollout", "gradient_x_input", "integrated_gradients", "logit_lens",
    "token_logit_fn",
]
