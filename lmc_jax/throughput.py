"""Model FLOPs utilisation: compiled FLOPs per step over the devices' peak, from a table of known peaks."""

from __future__ import annotations

import pathlib

import jax

# Dense peak FLOP/s per chip for the compute dtype (vendor data sheets; bf16 without sparsity).
PEAK_FLOPS_BF16: dict[str, float] = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
    "NVIDIA H100 80GB HBM3": 989e12,
    "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12,
    "NVIDIA A100-SXM4-80GB": 312e12,
    "NVIDIA A100-SXM4-40GB": 312e12,
    "NVIDIA A100": 312e12,
}


def peak_flops(device: jax.Device) -> float | None:
    """Peak bf16 FLOP/s of one device, or None when unknown (CPUs): MFU is then not reported."""
    kind = device.device_kind
    if kind in PEAK_FLOPS_BF16:
        return PEAK_FLOPS_BF16[kind]
    matches = [name for name in PEAK_FLOPS_BF16 if kind.startswith(name)]
    return PEAK_FLOPS_BF16[max(matches, key=len)] if matches else None


def compiled_flops(compiled: jax.stages.Compiled | jax.stages.Lowered) -> float | None:
    """FLOPs of one call of a compiled (per-device, SPMD-partitioned) program, from XLA's cost analysis; of a
    lowered one (not compiled: the unoptimised program, for shapes too costly to compile here) likewise."""
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"])


def mfu(flops_per_step: float | None, seconds_per_step: float, device: jax.Device) -> float | None:
    """Fraction of the device's peak achieved; None when FLOPs or the peak are unknown."""
    peak = peak_flops(device)
    if flops_per_step is None or peak is None or seconds_per_step <= 0:
        return None
    return flops_per_step / seconds_per_step / peak


def required_rate(flops_per_item: float, peak: float, utilisation: float = 0.4) -> float:
    """Items per second a device of `peak` FLOP/s must be fed to run at `utilisation` of its peak, when one
    item (a tile of a train step, say) costs `flops_per_item` FLOPs."""
    if flops_per_item <= 0 or peak <= 0 or not 0 < utilisation <= 1:
        raise ValueError(f"need flops_per_item > 0, peak > 0 and 0 < utilisation ≤ 1; got {flops_per_item}, "
                         f"{peak}, {utilisation}")
    return utilisation * peak / flops_per_item


def seconds_at(flops: float, peak: float, utilisation: float) -> float:
    """Wall seconds `flops` FLOPs take on a device of `peak` FLOP/s running at `utilisation` of its peak."""
    if flops < 0 or peak <= 0 or not 0 < utilisation <= 1:
        raise ValueError(f"need flops ≥ 0, peak > 0 and 0 < utilisation ≤ 1; got {flops}, {peak}, {utilisation}")
    return flops / (utilisation * peak)


def cpu_model() -> str:
    """This machine's CPU model from /proc/cpuinfo ("unknown" where it has none), to note beside a timing."""
    try:
        lines = pathlib.Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return "unknown"
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown")
