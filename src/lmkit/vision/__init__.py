"""Vision: image encoders, CLIP, vision-language models, diffusion and GANs."""
