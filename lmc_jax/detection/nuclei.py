"""Proxy detection targets for the embedded slide: nucleus centres found on the UNPERTURBED H&E pixels.

These are nuclei, not mitotic figures. The embedded slide has no mitosis annotations, so the embedded detection
analogue (lmc_jax/detection/embedded.py) asks a narrower question: does a detector trained on the source rendering
find the same nuclei on stain/scanner renderings it never saw? The targets are computed once, on the slide as
scanned, and shared by every rendering, so a label never depends on the site.

Definition (deterministic, pure NumPy/SciPy):
1. haematoxylin density: Ruifrok colour deconvolution of optical density, H = OD(RGB) · HED_FROM_RGB[:, 0]
   (lmc_jax/stain/color.py, natural-log OD), clipped to [0, H_MAX];
2. nucleus mask: H smoothed (Gaussian, σ = 1 px) above Otsu's threshold of the region, connected components of
   at least `min_area_microns2` µm² kept (drops haematoxylin speckle);
3. blob response: the scale-normalised Laplacian of Gaussian, −σ²∇²G_σ ∗ H with σ = radius/√2 (a disc of
   radius r gives its strongest response at σ = r/√2), at the mask's pixels only;
4. centres: the 3 × 3 local maxima of the response that are > 0, greedy NMS by response at
   `min_distance_microns` (lmc_jax/detection/peaks.find_peaks), reported at pixel centres (i + 0.5), sorted
   row-major (the order MIDOG-style matching walks them).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from lmc_jax.detection.peaks import find_peaks
from lmc_jax.slides import otsu_threshold
from lmc_jax.stain import color

H_MAX = 3.0
"""Haematoxylin density (natural-log OD units) above which a pixel counts as H_MAX: black or saturated pixels reach
OD ≈ 14 and would otherwise squeeze the histogram that Otsu's threshold is cut from."""
MASK_SMOOTHING_PX = 1.0


def haematoxylin_density(pixels: np.ndarray) -> np.ndarray:
    """float64 [H, W]: the Ruifrok haematoxylin concentration of uint8 RGB pixels [H, W, 3], in [0, H_MAX]."""
    od = np.asarray(color.rgb_to_od(np.asarray(pixels, np.uint8)), np.float64)
    return np.clip(od @ color.HED_FROM_RGB[:, 0], 0.0, H_MAX)


def nucleus_mask(density: np.ndarray, min_area_px: float) -> np.ndarray:
    """bool [H, W]: smoothed haematoxylin density above Otsu's threshold, components of ≥ min_area_px pixels."""
    smooth = ndimage.gaussian_filter(density, MASK_SMOOTHING_PX, mode="nearest")
    mask = smooth > otsu_threshold(smooth / H_MAX) * H_MAX
    labels, _ = ndimage.label(mask)
    area = np.bincount(labels.ravel())
    big = area >= min_area_px
    big[0] = False
    return big[labels]


def blob_response(density: np.ndarray, sigma_px: float) -> np.ndarray:
    """float64 [H, W]: the scale-normalised Laplacian-of-Gaussian response −σ²∇²(G_σ ∗ density) (bright blobs > 0)."""
    return -(sigma_px**2) * ndimage.gaussian_laplace(density, sigma_px, mode="nearest")


def nucleus_centres(pixels: np.ndarray, microns_per_pixel: float, *, radius_microns: float = 3.0,
                    min_area_microns2: float = 12.0, min_distance_microns: float = 4.0) -> np.ndarray:
    """float64 [K, 2] (y, x) pixel coordinates of the proxy nuclei of uint8 RGB `pixels` [H, W, 3] scanned at
    `microns_per_pixel`, sorted row-major (see the module docstring for the definition)."""
    if microns_per_pixel <= 0:
        raise ValueError(f"microns_per_pixel must be > 0, got {microns_per_pixel}")
    density = haematoxylin_density(pixels)
    mask = nucleus_mask(density, min_area_microns2 / microns_per_pixel**2)
    response = np.where(mask, blob_response(density, radius_microns / microns_per_pixel / np.sqrt(2.0)), 0.0)
    yx, _ = find_peaks(response, float(np.finfo(np.float32).tiny), min_distance_microns / microns_per_pixel)
    return yx[np.lexsort((yx[:, 1], yx[:, 0]))]
