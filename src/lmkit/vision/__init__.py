"""Vision and multimodal models: ViT, CLIP and BLIP (vit.py, clip*.py, blip*.py), diffusion (DDPM/DDIM, UNet, guidance) and a GAN."""
