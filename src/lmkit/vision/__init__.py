"""Vision and multimodal models: ViT and CLIP (vit.py, clip*.py), diffusion (DDPM/DDIM, UNet, guidance) and a GAN."""
