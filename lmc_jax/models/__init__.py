"""ViT encoder and projector."""
