"""Data sets (TFDS builders) and the grain input pipeline."""
