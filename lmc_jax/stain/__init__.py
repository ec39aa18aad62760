"""Stain colour maths, training stain views and evaluation sites."""
