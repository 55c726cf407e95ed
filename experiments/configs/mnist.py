"""MNIST, unconditional: the Fashion-MNIST recipe (fashion_mnist.py) on MNIST.

    python -m experiments.train --config=experiments/configs/mnist.py \
        --workdir=workdirs/mnist

Hardware: one GPU (e.g. an A100/H100; ~16 GB is plenty). 28 -> 14 -> 7 U-Net, 64 base channels,
attention at 14x14, Fourier features, learned linear schedule on [-13.3, 5], batch 128,
200k steps. Result: unmeasured (no GPU run yet). MNIST is not on this machine: get it as
the `vdm_jax.data` docstring says (the four IDX files, or `tfds build mnist`).
"""
from experiments.configs import fashion_mnist


def get_config():
  c = fashion_mnist.get_config()
  c.data.name = "mnist"
  return c
