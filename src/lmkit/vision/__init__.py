"""Vision: ViT image encoder, CLIP (and, in other files, diffusion). Import the modules directly."""
