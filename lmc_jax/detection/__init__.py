"""Mitotic-figure detection on frozen (or fine-tuned) encoder patch tokens: a heat-map head, Gaussian targets,
peaks by non-maximum suppression and MIDOG's F1 (configs/midog_detection.py)."""
