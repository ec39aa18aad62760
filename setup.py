"""lmc-jax: stain- and scanner-invariant histopathology embeddings (Latent Manifold Compaction) in JAX."""

from setuptools import find_packages, setup

setup(
    name="lmc-jax",
    version="0.1.0",
    description="Latent Manifold Compaction: stain-invariant ViT embeddings for histopathology, in JAX/Flax.",
    # jaxlib >= 0.10 ships wheels for CPython 3.11+ only; the versions tested together are pinned per Python
    # in constraints/py3XX.txt (./run.sh installs with them; see constraints/update.sh).
    python_requires=">=3.11",
    classifiers=[
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Operating System :: POSIX :: Linux",
    ],
    packages=find_packages(include=["lmc_jax", "lmc_jax.*", "data_pipelines", "data_pipelines.*"]),
    install_requires=[
        "jax>=0.10",
        "flax>=0.12",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.12",
        "tensorflow-datasets>=4.9.9",
        "grain>=0.2.15",
        "array-record>=0.8",
        "numpy>=2.0",
        "ml-collections>=1.1",
        "absl-py>=2.1",
        "importlib_resources>=6.0",  # TFDS needs it on Python 3.11 without TensorFlow
        "tifffile>=2024.1",  # reads the embedded Aperio .svs
        "imagecodecs>=2024.1",  # JPEG tiles inside the .svs
        "pillow>=10.0",
        "scikit-image>=0.22",  # ships ihc.png, the unseen-stain image
        "scipy>=1.11",
        "matplotlib>=3.8",
        "tensorboard>=2.15",  # event files only (its writer needs neither TensorFlow nor torch)
        "safetensors>=0.4",  # export writes timm-compatible weights without torch
        "threadpoolctl>=3.1",  # one BLAS thread around D×D linear algebra in evaluation (faster on few cores)
    ],
    extras_require={
        # parity references: numpy backends only (scib-metrics' values are stored in tests/golden/)
        "test": ["pytest>=8", "pytest-xdist>=3.5", "hypothesis>=6.100", "scikit-learn>=1.4", "torchstain>=1.4"],
        # PyTorch parity (export/import tests, benchmarks). Ranges here; the tested versions (a CPU torch wheel) are
        # pinned in constraints/. timm drags torchvision in, and each torchvision release requires one torch
        # release; with a CPU torch its compiled ops may not load, which lmc_jax/export/torch_compat.py handles.
        "export": ["torch>=2.5,<3", "torchvision>=0.20,<1", "timm>=1.0.9,<2"],
    },
)
