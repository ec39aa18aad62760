"""Evaluation "sites": fixed stain/scanner transforms of a source tile, from families training never samples.

Host-side numpy, deterministic; each site maps uint8 (H, W, 3) -> uint8 (H, W, 3). Training
augments with random optical-density (OD) stain-vector rotation/scaling, stain-concentration
scaling, HED jitter and brightness/contrast. The sites differ in kind or, for one, in magnitude:

- `source`: identity (the slide as scanned).
- `scanner_tone`: another scanner's colour response: 3x3 channel cross-talk and white balance in
  LINEAR RGB, then per-channel gamma and an S-shaped tone curve. Mixing happens before the log, so
  in OD space it is neither a linear stain-matrix change nor a concentration scaling, and the
  curves are channel-specific and non-linear, unlike brightness/contrast.
- `lab_shift`: another lab's staining protocol, Reinhard-style: CIELAB channel statistics of this
  slide's tissue (measured once, fixed below) mapped to a target lab's mean/std. It moves the
  opponent-colour a*/b* axes of a perceptual space, which no training transform addresses.
- `stain_transfer`: Ruifrok H&E(+residual) deconvolution, then reconstruction with another lab's
  fixed stain matrix. Same physical model as the training stain-vector jitter, but the vectors are
  12.5 deg (H) and 18.5 deg (E) away from the source's, well outside small random rotations: this
  is the extrapolation test of the family training does sample.
- `jpeg_blur`: optics and compression: Gaussian blur (sigma 1 px) then JPEG at quality 30. It
  changes spatial frequency content and adds block artefacts; training never alters texture.

Because every site lies outside the training augmentation distribution, invariance measured on
them is not circular (the model was never trained to map these exact transforms together). The
unseen-stain IHC image is a separate split, not a transform: its site id is `len(SITE_NAMES)`.
Blank (white) or black tiles give finite values; no site produces NaN.
"""

import io
import warnings
from collections.abc import Callable

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage import color

SITE_NAMES: tuple[str, ...] = ("source", "scanner_tone", "lab_shift", "stain_transfer", "jpeg_blur")
IHC_SITE = "ihc"
ALL_SITE_NAMES: tuple[str, ...] = SITE_NAMES + (IHC_SITE,)

# scanner_tone: rows sum to 1 (neutral greys stay neutral before white balance).
_CROSSTALK = np.array([[0.86, 0.10, 0.04], [0.07, 0.83, 0.10], [0.03, 0.13, 0.84]])
_WHITE_BALANCE = np.array([1.00, 0.97, 0.91])  # warm (yellowish) glass, as many bright-field scanners
_GAMMA = np.array([0.88, 1.00, 1.15])  # per-channel exponent in linear light
_S_CURVE_WEIGHT = 0.35  # blend of smoothstep into the tone curve (0 = pure gamma)

# lab_shift: CIELAB mean/std of the embedded slide's tissue pixels (tissue_mask, every 4th pixel).
_LAB_SOURCE_MEAN = np.array([50.41, 28.46, -11.62])
_LAB_SOURCE_STD = np.array([21.25, 12.88, 10.74])
_LAB_TARGET_MEAN = np.array([58.0, 36.0, 2.0])  # paler, pinker, less blue lab
_LAB_TARGET_STD = np.array([18.0, 15.0, 8.0])

# stain_transfer: rows are stain OD vectors (unit norm). Source: Ruifrok & Johnston (skimage's rgb_from_hed).
_RUIFROK = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_TARGET_STAINS = np.array([[0.80, 0.55, 0.24], [0.25, 0.90, 0.36], [0.27, 0.57, 0.78]])
_RUIFROK = _RUIFROK / np.linalg.norm(_RUIFROK, axis=1, keepdims=True)
_TARGET_STAINS = _TARGET_STAINS / np.linalg.norm(_TARGET_STAINS, axis=1, keepdims=True)

_BLUR_SIGMA = 1.0
_JPEG_QUALITY = 30


def _check_tile(tile: np.ndarray) -> None:
    if tile.ndim != 3 or tile.shape[-1] != 3 or tile.dtype != np.uint8:
        raise ValueError(f"Sites take uint8 (H, W, 3) tiles, got shape {tile.shape} dtype {tile.dtype}.")


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(np.nan_to_num(values, nan=0.0) * 255.0), 0, 255).astype(np.uint8)


def _srgb_to_linear(srgb: np.ndarray) -> np.ndarray:
    return np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)


def _linear_to_srgb(linear: np.ndarray) -> np.ndarray:
    linear = np.clip(linear, 0.0, 1.0)
    return np.where(linear <= 0.0031308, linear * 12.92, 1.055 * linear ** (1.0 / 2.4) - 0.055)


def source(tile: np.ndarray) -> np.ndarray:
    """Identity: the tile as the source scanner saw it."""
    return tile.copy()


def scanner_tone(tile: np.ndarray) -> np.ndarray:
    """Another scanner's response: linear-light cross-talk and white balance, per-channel gamma, S-curve."""
    linear = _srgb_to_linear(tile.astype(np.float64) / 255.0)
    linear = np.clip(linear @ _CROSSTALK.T * _WHITE_BALANCE, 0.0, 1.0) ** _GAMMA
    smooth = linear * linear * (3.0 - 2.0 * linear)
    return _to_uint8(_linear_to_srgb((1.0 - _S_CURVE_WEIGHT) * linear + _S_CURVE_WEIGHT * smooth))


def lab_shift(tile: np.ndarray) -> np.ndarray:
    """Reinhard-style map of the slide's CIELAB statistics onto another lab's target mean/std."""
    lab = color.rgb2lab(tile)
    lab = (lab - _LAB_SOURCE_MEAN) / _LAB_SOURCE_STD * _LAB_TARGET_STD + _LAB_TARGET_MEAN
    lab[..., 0] = np.clip(lab[..., 0], 0.0, 100.0)
    with warnings.catch_warnings():  # out-of-gamut colours are clipped; skimage warns about negative Z
        warnings.simplefilter("ignore", UserWarning)
        rgb = color.lab2rgb(lab)
    return _to_uint8(rgb)


def stain_transfer(tile: np.ndarray) -> np.ndarray:
    """Ruifrok deconvolution, then reconstruction with another lab's fixed H&E(+residual) stain matrix."""
    optical_density = -np.log10((tile.astype(np.float64) + 1.0) / 256.0)
    concentrations = optical_density @ np.linalg.inv(_RUIFROK)
    transmitted = 256.0 * 10.0 ** (-(concentrations @ _TARGET_STAINS)) - 1.0
    return _to_uint8(transmitted / 255.0)


def jpeg_blur(tile: np.ndarray) -> np.ndarray:
    """Optics and compression: Gaussian blur (sigma 1 px, per channel), then JPEG at quality 30."""
    blurred = ndimage.gaussian_filter(tile.astype(np.float64), sigma=(_BLUR_SIGMA, _BLUR_SIGMA, 0.0), mode="reflect")
    buffer = io.BytesIO()
    Image.fromarray(_to_uint8(blurred / 255.0)).save(buffer, format="JPEG", quality=_JPEG_QUALITY)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB")).copy()


_SITES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "source": source,
    "scanner_tone": scanner_tone,
    "lab_shift": lab_shift,
    "stain_transfer": stain_transfer,
    "jpeg_blur": jpeg_blur,
}


def site_id(name: str) -> int:
    """Integer id of a site (its index in ALL_SITE_NAMES); the IHC split is len(SITE_NAMES)."""
    if name not in ALL_SITE_NAMES:
        raise ValueError(f"Unknown site {name!r}; known sites: {ALL_SITE_NAMES}.")
    return ALL_SITE_NAMES.index(name)


def render_site(name: str, tile: np.ndarray) -> np.ndarray:
    """Render one uint8 (H, W, 3) tile as site `name` would have produced it."""
    if name == IHC_SITE:
        raise ValueError(f"Site {IHC_SITE!r} is a separate image (the unseen-stain split), not a transform; "
                         f"render one of {SITE_NAMES}.")
    if name not in _SITES:
        raise ValueError(f"Unknown site {name!r}; renderable sites: {SITE_NAMES}.")
    _check_tile(tile)
    return _SITES[name](tile)
