"""TFDS builders, one package per data set."""
