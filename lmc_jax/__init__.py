"""lmc-jax: stain- and scanner-invariant histopathology embeddings (Latent Manifold Compaction) in JAX."""

__version__ = "0.1.0"
