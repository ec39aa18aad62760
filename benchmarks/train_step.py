"""One training step: lmc-jax vs the same model and step in PyTorch timm, same batch, one run.

    python benchmarks/train_step.py [--job both|s16|default] [--steps 10] [--variant S/16] [--image-size 224]

`s16`: forward, backward and AdamW (lr 1e-3, wd 0.05) of a ViT backbone + linear 1000-way head with softmax
cross-entropy (default ViT-S/16 at 224 px, batch 32, float32). `default`: the default job's own step
(configs/default.py: ViT-Mi/8, 64 px tiles of the embedded slide, K=2 views of 56 px, batch 64, projector
512-512-512, Barlow Twins over view pairs, AdamW with clipping): lmc-jax's compiled `train.train_step`
(crops, flips and stain views on device) against timm + torch with the same views made (1) on the CPU per tile,
as torchvision / skimage users do (numpy crop and dihedral flip, skimage HED jitter, torchvision ColorJitter),
and (2) batched on tensors (the same per-pixel optical-density maths as ours: log, a 3 × 3 map with a tissue
ramp, gamma, exp, brightness, contrast). Prints a table per job: median images/s of `--steps` timed steps
after warm-up, the ratio to timm, and the CPU model. Needs the test extra (torch==2.13.0 CPU, timm).
"""

from __future__ import annotations

import argparse
import datetime
import os
import runpy
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from data_pipelines import tiling
from lmc_jax import parallel, train
from lmc_jax.export.torch_compat import import_timm
from lmc_jax.models.vit import ViT, parse_variant
from lmc_jax.stain import color
from lmc_jax.throughput import cpu_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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


def s16_table(args) -> list[str]:
    """The backbone + classifier step of `--variant` at `--image-size`: lmc-jax vs timm."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.batch, args.image_size, args.image_size, 3), dtype=np.uint8)
    labels = rng.integers(0, NUM_CLASSES, args.batch).astype(np.int32)
    jax_times = time_jax(args, images, labels)
    timm_times = time_timm(args, images, labels)
    jax_ips = args.batch / statistics.median(jax_times)
    timm_ips = args.batch / statistics.median(timm_times)
    return [f"ViT-{args.variant} {args.image_size}px batch {args.batch} {args.dtype}, classifier step, "
            f"median of {args.steps} steps",
            "| implementation | images/s | s/step | ratio vs timm |",
            "| --- | ---: | ---: | ---: |",
            f"| lmc-jax (jit) | {jax_ips:.1f} | {statistics.median(jax_times):.3f} | {jax_ips / timm_ips:.2f}× |",
            f"| timm (eager torch) | {timm_ips:.1f} | {statistics.median(timm_times):.3f} | 1.00× |"]


def default_config():
    """configs/default.py's config, as the command line loads it."""
    return runpy.run_path(os.path.join(REPO, "configs", "default.py"))["get_config"]()


def slide_tiles(size: int, count: int) -> np.ndarray:
    """`count` tissue tiles of size² px from the embedded H&E slide (a stride-size/2 grid)."""
    slide = tiling.read_slide_region(tiling.locate_cmu_slide())
    corners = tiling.tile_grid(tiling.tissue_mask(slide), size, size // 2, 0.5)
    picks = np.linspace(0, len(corners) - 1, count).round().astype(int)
    return np.stack([slide[y : y + size, x : x + size] for y, x in (corners[i] for i in picks)])


def time_lmc_jax(config, tiles: np.ndarray, steps: int) -> list[float]:
    """Seconds per step of the default job's compiled LMC step (train.compile_step), views made on device."""
    mesh = parallel.make_mesh(1, 1, devices=jax.devices()[:1])
    trainer = train.make_trainer(config, mesh)
    state = train.init_state(trainer)
    batch = {"image": jax.device_put(tiles, parallel.batch_sharding(mesh, 4))}
    key = jax.random.key(config.seed)
    step = train.compile_step(trainer)
    for _ in range(2):
        state, metrics = step(state, batch, key)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics = step(state, batch, key)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    return times


class TorchLMC:
    """timm's VisionTransformer + the Barlow-Twins projector and loss of `config`, AdamW with clipping."""

    def __init__(self, config):
        import torch

        timm = import_timm()
        size, patch = parse_variant(config.model.variant)
        self.encoder = timm.models.vision_transformer.VisionTransformer(
            img_size=config.data.crop_size, patch_size=patch, embed_dim=size.width, depth=size.depth,
            num_heads=size.heads, mlp_ratio=size.mlp_dim / size.width, num_classes=0, global_pool="token")
        widths = (size.width, *config.model.projector_dims)
        layers = []
        for a, b in zip(widths[:-2], widths[1:-1]):
            layers += [torch.nn.Linear(a, b, bias=False), torch.nn.BatchNorm1d(b), torch.nn.ReLU()]
        self.projector = torch.nn.Sequential(*layers, torch.nn.Linear(widths[-2], widths[-1], bias=False))
        params = [*self.encoder.parameters(), *self.projector.parameters()]
        self.params = params
        self.optimizer = torch.optim.AdamW(
            [{"params": [p for p in params if p.ndim > 1], "weight_decay": config.optimizer.weight_decay},
             {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}],
            lr=config.optimizer.learning_rate, betas=(config.optimizer.b1, config.optimizer.b2))
        self.config = config

    def step(self, views) -> float:
        """One step on views float [K, B, 3, C, C] in [0, 1]."""
        import torch

        k, b = views.shape[:2]
        self.optimizer.zero_grad(set_to_none=True)
        features = self.encoder(views.reshape(k * b, *views.shape[2:])).reshape(k, b, -1)
        projections = [self.projector(features[v]) for v in range(k)]  # batch statistics per view
        pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
        loss = sum(self._barlow(projections[i], projections[j]) for i, j in pairs) / len(pairs)
        loss.backward()
        if self.config.optimizer.grad_clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.config.optimizer.grad_clip_norm)
        self.optimizer.step()
        return float(loss.detach())

    def _barlow(self, z1, z2):
        def standardize(z):
            return (z - z.mean(0)) / (z.var(0, unbiased=False) + 1e-5).sqrt()

        c = standardize(z1).T @ standardize(z2) / z1.shape[0]
        diag = c.diagonal()
        on = ((1 - diag) ** 2).sum()
        return on + self.config.lmc.off_diagonal_weight * ((c**2).sum() - (diag**2).sum())


def cpu_views(tiles: np.ndarray, config, rng: np.random.Generator):
    """K views per tile made one tile at a time on the CPU, the torchvision / skimage way: random crop and
    dihedral flip (numpy), Tellez HED jitter (skimage rgb2hed / hed2rgb), ColorJitter(brightness, contrast)."""
    import torch
    from skimage.color import hed2rgb, rgb2hed
    from torchvision.transforms import v2

    stain, crop = config.lmc.stain, config.data.crop_size
    jitter = v2.ColorJitter(brightness=stain.brightness, contrast=stain.contrast)
    views = []
    for _ in range(config.lmc.num_views):
        per_view = []
        for tile in tiles:
            y, x = rng.integers(0, tile.shape[0] - crop + 1, 2)
            image = tile[y : y + crop, x : x + crop]
            image = np.rot90(image, k=int(rng.integers(4)))
            image = image[:, ::-1] if rng.integers(2) else image
            hed = rgb2hed(image)
            s = stain.hed_jitter
            hed = hed * rng.uniform(1 - s, 1 + s, 3) + rng.uniform(-s, s, 3)
            rgb = torch.from_numpy(np.clip(hed2rgb(hed), 0, 1).astype(np.float32)).permute(2, 0, 1)
            per_view.append(jitter(rgb))
        views.append(torch.stack(per_view))
    return torch.stack(views)


def tensor_views(tiles, config, generator):
    """The same K views made batched on tensors, with our per-pixel optical-density maths (lmc_jax/stain/augment):
    crop, dihedral flip, od' = od @ A + tissue × b (HED jitter composed into A, b), gamma, exp, brightness, contrast."""
    import torch

    stain, crop, k = config.lmc.stain, config.data.crop_size, config.lmc.num_views
    b, size = tiles.shape[0], tiles.shape[1]
    hed_from_rgb = torch.tensor(color.HED_FROM_RGB, dtype=torch.float32)
    rgb_from_hed = torch.tensor(color.RGB_FROM_HED, dtype=torch.float32)
    grey = torch.tensor([0.299, 0.587, 0.114])
    uniform = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731
    out = []
    for _ in range(k):
        offsets = (uniform(b, 2) * (size - crop + 1)).long()
        rows = offsets[:, :1, None] + torch.arange(crop)[None, :, None]
        cols = offsets[:, 1:, None] + torch.arange(crop)[None, None, :]
        image = tiles[torch.arange(b)[:, None, None], rows, cols].float() / 255.0  # [B, C, C, 3]
        flips = uniform(b, 3) < 0.5
        image = torch.where(flips[:, 0, None, None, None], image.transpose(1, 2), image)
        image = torch.where(flips[:, 1, None, None, None], image.flip(2), image)
        image = torch.where(flips[:, 2, None, None, None], image.flip(1), image)
        od = -torch.log(image.clamp(1.0 / 255.0, 1.0))
        s = stain.hed_jitter
        alpha, beta = 1 + s * (2 * uniform(b, 3) - 1), s * (2 * uniform(b, 3) - 1)
        matrix = (hed_from_rgb[None] * alpha[:, None, :]) @ rgb_from_hed  # [B, 3, 3]
        shift = (beta * color.HED_LOG_ADJUST) @ rgb_from_hed
        tissue = ((od.sum(-1, keepdim=True) - 0.15) / 0.3).clamp(0, 1)
        od = torch.einsum("bhwi,bij->bhwj", od, matrix) + tissue * shift[:, None, None, :]
        od = od * (1 + stain.gamma * (2 * uniform(b, 1, 1, 1) - 1))
        image = torch.exp(-od).clamp(0, 1) * (1 + stain.brightness * (2 * uniform(b, 1, 1, 1) - 1))
        image = image.clamp(0, 1)
        mean_grey = (image.mean((1, 2)) * grey).sum(-1)[:, None, None, None]
        factor = 1 + stain.contrast * (2 * uniform(b, 1, 1, 1) - 1)
        out.append(((image - mean_grey) * factor + mean_grey).clamp(0, 1).permute(0, 3, 1, 2))
    return torch.stack(out)


def time_lmc_timm(config, tiles: np.ndarray, steps: int, on_tensors: bool) -> list[float]:
    """Seconds per step (views made + forward, backward, AdamW) of the torch/timm LMC step."""
    import torch

    model = TorchLMC(config)
    rng, generator = np.random.default_rng(0), torch.Generator().manual_seed(0)
    batch = torch.from_numpy(tiles)

    def step() -> None:
        views = tensor_views(batch, config, generator) if on_tensors else cpu_views(tiles, config, rng)
        model.step(views)

    for _ in range(2):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def default_table(args) -> list[str]:
    """The default job's LMC step: lmc-jax vs timm with CPU-made and tensor-made views."""
    config = default_config()
    tiles = slide_tiles(config.data.tile_size, config.batch_size)
    results = {"lmc-jax (jit, views on device)": time_lmc_jax(config, tiles, args.steps),
               "timm, views per tile on the CPU (skimage HED + torchvision)":
                   time_lmc_timm(config, tiles, args.steps, on_tensors=False),
               "timm, views batched on tensors": time_lmc_timm(config, tiles, args.steps, on_tensors=True)}
    rates = {name: config.batch_size / statistics.median(times) for name, times in results.items()}
    lines = [f"Default job step: ViT-{config.model.variant}, {config.data.tile_size} px tiles, "
             f"K={config.lmc.num_views} views of {config.data.crop_size} px, batch {config.batch_size} tiles, "
             f"{config.model.dtype}, median of {args.steps} steps",
             "| implementation | tiles/s | s/step | lmc-jax / this |", "| --- | ---: | ---: | ---: |"]
    ours = rates["lmc-jax (jit, views on device)"]
    for name, times in results.items():
        lines.append(f"| {name} | {rates[name]:.1f} | {statistics.median(times):.3f} | {ours / rates[name]:.2f}× |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--job", choices=("both", "s16", "default"), default="both")
    parser.add_argument("--variant", default="S/16")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    import torch

    print(f"{datetime.date.today()}, {cpu_model()}, {os.cpu_count()} CPU cores, load {os.getloadavg()[0]:.1f}, "
          f"jax {jax.__version__} on {jax.devices()[0].device_kind}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), timm {import_timm().__version__}")
    if args.job in ("both", "default"):
        print("\n".join(default_table(args)))
    if args.job in ("both", "s16"):
        print("\n".join(s16_table(args)))


if __name__ == "__main__":
    main()
