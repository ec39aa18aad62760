"""Hands lmc-jax encoders to PyTorch/timm (safetensors + config.json) and takes timm ViT weights in."""
