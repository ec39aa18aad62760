"""One training step (forward, backward, AdamW) of ViT-S/16 at 224 px: lmc-jax vs PyTorch timm, same batch, one run.

    python benchmarks/train_step.py [--variant S/16] [--image-size 224] [--batch 32] [--steps 10] [--dtype float32]

Both sides train the same thing: the ViT backbone + a linear 1000-way head with softmax cross-entropy,
AdamW (lr 1e-3, wd 0.05). Prints a table: median images/s of `--steps` timed steps after warm-up, and the ratio.
Needs the test extra (torch==2.13.0 CPU, timm).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from lmc_jax.export.torch_compat import import_timm
from lmc_jax.models.vit import ViT, parse_variant

NUM_CLASSES = 1000


class Classifier(nnx.Module):
    def __init__(self, variant: str, image_size: int, dtype: jnp.dtype):
        rngs = nnx.Rngs(0)
        self.encoder = ViT(variant, image_size, dtype=dtype, rngs=rngs)
        self.head = nnx.Linear(self.encoder.width, NUM_CLASSES, rngs=rngs)

    def __call__(self, x):
        return self.head(self.encoder(x))


def time_jax(args, images: np.ndarray, labels: np.ndarray) -> list[float]:
    """Seconds per step of a jitted pure step over nnx.split state (no NNX eager overhead)."""
    model = Classifier(args.variant, args.image_size, jnp.dtype(args.dtype))
    graphdef, params = nnx.split(model, nnx.Param)
    params = nnx.to_pure_dict(params)
    tx = optax.adamw(1e-3, weight_decay=0.05)
    opt_state = tx.init(params)

    def step(params, opt_state, x, y):
        def loss_fn(p):
            logits = nnx.merge(graphdef, p)(x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    step = jax.jit(step, donate_argnums=(0, 1))
    x, y = jnp.asarray(images, jnp.float32) / 255.0, jnp.asarray(labels)
    for _ in range(2):
        params, opt_state, loss = step(params, opt_state, x, y)
    loss.block_until_ready()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        params, opt_state, loss = step(params, opt_state, x, y)
        loss.block_until_ready()
        times.append(time.perf_counter() - start)
    return times


def time_timm(args, images: np.ndarray, labels: np.ndarray) -> list[float]:
    """Seconds per step of timm's VisionTransformer in eager PyTorch (its usual use)."""
    import torch

    timm = import_timm()
    size, patch = parse_variant(args.variant)
    model = timm.models.vision_transformer.VisionTransformer(
        img_size=args.image_size, patch_size=patch, embed_dim=size.width, depth=size.depth,
        num_heads=size.heads, mlp_ratio=size.mlp_dim / size.width, num_classes=NUM_CLASSES)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0 - mean) / std
    y = torch.from_numpy(labels).long()

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()

    for _ in range(2):
        step()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", default="S/16")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.batch, args.image_size, args.image_size, 3), dtype=np.uint8)
    labels = rng.integers(0, NUM_CLASSES, args.batch).astype(np.int32)
    jax_times = time_jax(args, images, labels)
    timm_times = time_timm(args, images, labels)
    jax_ips = args.batch / statistics.median(jax_times)
    timm_ips = args.batch / statistics.median(timm_times)
    print(f"ViT-{args.variant} {args.image_size}px batch {args.batch} {args.dtype}, {os.cpu_count()} CPU cores, "
          f"{jax.devices()[0].device_kind}, median of {args.steps} steps")
    print("| implementation | images/s | s/step | ratio vs timm |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| lmc-jax (jit) | {jax_ips:.1f} | {statistics.median(jax_times):.3f} | {jax_ips / timm_ips:.2f}× |")
    print(f"| timm (eager torch) | {timm_ips:.1f} | {statistics.median(timm_times):.3f} | 1.00× |")


if __name__ == "__main__":
    main()
