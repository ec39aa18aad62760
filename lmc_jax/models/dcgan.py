"""Class-conditional DCGAN (Radford et al. 2016) generator and projection discriminator in Flax NNX.

Generator: z ⊕ a learned class embedding → dense → b×b feature map → stride-2 4×4 transposed convs + BatchNorm +
ReLU (channels halving as the resolution doubles, `width` at the last hidden one) → 4×4 transposed conv → tanh.
Discriminator: stride-2 4×4 convs with LeakyReLU(0.2) (`width` channels first, no BatchNorm on the first conv, as
DCGAN), down to b×b, conditioned by projection (Miyato & Koyama 2018): logit = w·φ(x) + c + ⟨embed(y), φ(x)⟩.
Images are float [-1, 1], NHWC; image_size must be b·2^n with n ≥ 1 and a base b of 3 to 7 (DCGAN's 4·2^n; also
48 = 3·16, 96 = 3·32, 224 = 7·32, the sizes of the data sets). Weights start N(0, 0.02), as DCGAN's.

Both strided convolutions are written as one matmul over 2×2 windows (`UpConv`: the sub-pixel form of the
transposed conv; `DownConv`: space-to-depth, then a 2×2 conv), the same linear maps as lax.conv_transpose /
lax.conv_general_dilated. XLA:CPU's conv_transpose kernel gradient runs ~30× its forward pass (2-core CPU, batch 64,
a 16→32 px, 128→64-channel layer: forward + backward 14 s, 0.7 s as the matmul); a whole training step at 64 px,
width 32 was not slower with DownConv than with lax.conv in D (1.6 vs 2.4 s, on a loaded machine).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

_INIT = nnx.initializers.normal(0.02)  # DCGAN's weight initialisation
BN_MOMENTUM = 0.9  # running statistics follow the last ~10 steps of a generator that keeps moving


def base_and_levels(image_size: int) -> tuple[int, int]:
    """(b, n) with image_size = b·2^n, n ≥ 1 halvings while the map stays ≥ 3 px, b in 3..7: the first map's size
    and the number of stride-2 layers; any other size raises a one-line error."""
    n, base = 0, image_size
    while base % 2 == 0 and base // 2 >= 3:
        n, base = n + 1, base // 2
    if n < 1 or not 3 <= base <= 7:
        raise ValueError(f"DCGAN image_size={image_size}: must be b·2^n with n ≥ 1 and b in 3..7 (8, 12, 16, 24, "
                         "32, 48, 64, 96, 224, ...); resize or crop the tiles to such a size first.")
    return base, n


def num_levels(image_size: int) -> int:
    """n of `base_and_levels`: the number of stride-2 layers."""
    return base_and_levels(image_size)[1]


def channels(image_size: int, width: int) -> list[int]:
    """Channels of the hidden feature maps from b×b up to image_size/2: width·2^(n-1), ..., 2·width, width."""
    n = num_levels(image_size)
    return [width * 2 ** (n - 1 - i) for i in range(n)]


def _windows(x: jax.Array) -> jax.Array:
    """All 2×2 windows of x [B, H, W, C] as channels: [B, H-1, W-1, 4C], ordered (row offset, column offset, c)."""
    return jnp.concatenate([x[:, :-1, :-1], x[:, :-1, 1:], x[:, 1:, :-1], x[:, 1:, 1:]], axis=-1)


class UpConv(nnx.Module):
    """4×4 stride-2 transposed conv [B, H, W, Cin] → [B, 2H, 2W, Cout], in sub-pixel form: output pixel (2i+a, 2j+b)
    is the 2×2 window of inputs at (i, j) times the kernel of phase (a, b): the stride-2 transposed conv with a 4×4
    kernel (16 weights per channel pair), its full (2H+2)-pixel output cropped to pixels 2 .. 2H+1 (the test
    checks it against the scatter definition)."""

    def __init__(self, in_features: int, out_features: int, *, use_bias: bool, rngs: nnx.Rngs):
        self.out_features = out_features
        # rows (window row, window column, cin), columns (phase row, phase column, cout)
        self.kernel = nnx.Param(_INIT(rngs.params(), (4 * in_features, 4 * out_features)))
        self.bias = nnx.Param(jnp.zeros((out_features,))) if use_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, _ = x.shape
        y = _windows(jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))) @ self.kernel[...]
        y = y.reshape(b, h, w, 2, 2, self.out_features).transpose(0, 1, 3, 2, 4, 5).reshape(b, 2 * h, 2 * w, -1)
        return y if self.bias is None else y + self.bias[...]


class DownConv(nnx.Module):
    """4×4 stride-2 conv with padding 1 (DCGAN's) [B, H, W, Cin] → [B, H/2, W/2, Cout], as space-to-depth then one
    matmul over 2×2 windows; the kernel's rows are (window row, window column, row parity, column parity, cin)."""

    def __init__(self, in_features: int, out_features: int, *, use_bias: bool, rngs: nnx.Rngs):
        self.kernel = nnx.Param(_INIT(rngs.params(), (16 * in_features, out_features)))
        self.bias = nnx.Param(jnp.zeros((out_features,))) if use_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        b, h, w, c = x.shape
        x = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, h // 2, w // 2, 4 * c)
        y = _windows(x) @ self.kernel[...]
        return y if self.bias is None else y + self.bias[...]


class Generator(nnx.Module):
    """(z [B, latent_dim], labels int [B]) → images float [B, image_size, image_size, 3] in [-1, 1]."""

    def __init__(self, num_classes: int, image_size: int, *, latent_dim: int, width: int, rngs: nnx.Rngs):
        chans = channels(image_size, width)
        self.num_classes, self.image_size, self.latent_dim = num_classes, image_size, latent_dim
        self.base = base_and_levels(image_size)[0]
        self.embed = nnx.Embed(num_classes, latent_dim, embedding_init=nnx.initializers.normal(1.0), rngs=rngs)
        self.dense = nnx.Linear(2 * latent_dim, self.base**2 * chans[0], use_bias=False, kernel_init=_INIT,
                                rngs=rngs)
        self.norm0 = nnx.BatchNorm(chans[0], momentum=BN_MOMENTUM, rngs=rngs)
        self.ups = nnx.List([UpConv(a, b, use_bias=False, rngs=rngs)
                             for a, b in zip(chans[:-1], chans[1:])])
        self.norms = nnx.List([nnx.BatchNorm(b, momentum=BN_MOMENTUM, rngs=rngs) for b in chans[1:]])
        self.out = UpConv(chans[-1], 3, use_bias=True, rngs=rngs)

    def __call__(self, z: jax.Array, labels: jax.Array, *, train: bool) -> jax.Array:
        """train=True: BatchNorm on batch statistics (and running averages updated); False: on the running averages."""
        h = self.dense(jnp.concatenate([z, self.embed(labels)], axis=-1))
        h = h.reshape(z.shape[0], self.base, self.base, -1)
        h = jax.nn.relu(self.norm0(h, use_running_average=not train))
        for up, norm in zip(self.ups, self.norms):
            h = jax.nn.relu(norm(up(h), use_running_average=not train))
        return jnp.tanh(self.out(h))


class Discriminator(nnx.Module):
    """(images float [B, S, S, 3] in [-1, 1], labels int [B]) → real-vs-fake logits [B] for that class.

    Conditioning by projection rather than label maps: the class enters as one inner product with the final
    features (no extra input channels, no cost that grows with the number of classes), and Miyato & Koyama found
    it trains better than concatenating labels.
    """

    def __init__(self, num_classes: int, image_size: int, *, width: int, rngs: nnx.Rngs):
        chans = channels(image_size, width)[::-1]  # width, 2·width, ... at image_size/2 ... b
        self.first = DownConv(3, chans[0], use_bias=True, rngs=rngs)
        self.downs = nnx.List([DownConv(a, b, use_bias=False, rngs=rngs) for a, b in zip(chans[:-1], chans[1:])])
        self.norms = nnx.List([nnx.BatchNorm(b, rngs=rngs) for b in chans[1:]])
        features = base_and_levels(image_size)[0] ** 2 * chans[-1]
        self.linear = nnx.Linear(features, 1, kernel_init=_INIT, rngs=rngs)
        self.embed = nnx.Embed(num_classes, features, embedding_init=_INIT, rngs=rngs)  # the class projection

    def __call__(self, images: jax.Array, labels: jax.Array, *, train: bool) -> jax.Array:
        """train=True: BatchNorm on this batch's statistics (real and fake batches are normalised separately)."""
        h = jax.nn.leaky_relu(self.first(images), 0.2)
        for down, norm in zip(self.downs, self.norms):
            h = jax.nn.leaky_relu(norm(down(h), use_running_average=not train), 0.2)
        h = h.reshape(h.shape[0], -1)
        return self.linear(h)[:, 0] + jnp.sum(self.embed(labels) * h, axis=-1)
