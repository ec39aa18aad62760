"""Camelyon16 lesion annotations (ASAP XML polygons) and the tumour test for points.

Groups as the Camelyon16 evaluation code reads them: "_0", "_1" and "Tumor" outline metastases, "_2" outlines
non-tumour areas inside them (exclusions). A point is tumour when it lies inside a metastasis polygon and
inside no exclusion polygon. Coordinates are level-0 pixels (X = column, Y = row).
"""

import dataclasses
import pathlib
import xml.etree.ElementTree as ElementTree

import numpy as np
from skimage.measure import points_in_poly

TUMOUR_GROUPS = ("_0", "_1", "Tumor")
EXCLUSION_GROUPS = ("_2",)


@dataclasses.dataclass(frozen=True)
class Annotations:
    """Polygons as (N, 2) float arrays of (x, y) vertices."""

    tumour: tuple[np.ndarray, ...] = ()
    exclusion: tuple[np.ndarray, ...] = ()


def parse(xml_text: str, source: str) -> Annotations:
    """Polygons of an ASAP XML document; ValueError naming `source` for unknown groups or malformed XML."""
    try:
        root = ElementTree.fromstring(xml_text)
    except ElementTree.ParseError as err:
        raise ValueError(f"{source} is not valid XML ({err}).") from err
    tumour, exclusion = [], []
    for annotation in root.iter("Annotation"):
        group = annotation.get("PartOfGroup", "")
        coordinates = sorted(annotation.iter("Coordinate"), key=lambda c: float(c.get("Order", 0)))
        vertices = np.array([[float(c.get("X")), float(c.get("Y"))] for c in coordinates], np.float64)
        if len(vertices) < 3:  # dots and lines outline no area
            continue
        if group in TUMOUR_GROUPS:
            tumour.append(vertices)
        elif group in EXCLUSION_GROUPS:
            exclusion.append(vertices)
        else:
            raise ValueError(
                f"{source}: annotation {annotation.get('Name')!r} is in group {group!r}; Camelyon16 uses "
                f"{TUMOUR_GROUPS} for metastases and {EXCLUSION_GROUPS} for exclusions."
            )
    return Annotations(tuple(tumour), tuple(exclusion))


def read(path: pathlib.Path) -> Annotations:
    """Polygons of an ASAP XML file."""
    return parse(path.read_text(), str(path))


def _inside_any(points: np.ndarray, polygons: tuple[np.ndarray, ...]) -> np.ndarray:
    inside = np.zeros(len(points), bool)
    for polygon in polygons:
        low, high = polygon.min(0), polygon.max(0)
        candidates = np.flatnonzero(~inside & (points >= low).all(1) & (points <= high).all(1))
        if len(candidates):
            inside[candidates] = points_in_poly(points[candidates], polygon)
    return inside


def is_tumour(points: np.ndarray, annotations: Annotations) -> np.ndarray:
    """Boolean per (x, y) point: inside a metastasis and outside every exclusion."""
    points = np.asarray(points, np.float64).reshape(-1, 2)
    return _inside_any(points, annotations.tumour) & ~_inside_any(points, annotations.exclusion)
