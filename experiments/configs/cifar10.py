"""CIFAR-10 with a multi-resolution (DDPM-style) U-Net: a cheaper run than the paper's network.

    python -m experiments.train --config=experiments/configs/cifar10.py --workdir=workdirs/cifar10

Hardware: GPUs (1-8; the batch is split over every device). 32 -> 16 -> 8 -> 4 U-Net, 128 base
channels, attention at 16x16, Fourier features, dropout 0.1 (~36M parameters), learned linear
schedule on [-13.3, 5], batch 128, AdamW 2e-4, EMA 0.9999, 1M steps. Result: unmeasured (no GPU
run yet). Data: the CIFAR-10 binary version (see the `vdm_jax.data` docstring).
"""
from experiments.configs import base


def get_config():
  c = base.get_config()
  c.data.name = "cifar10"
  c.model.image_shape = (32, 32, 3)
  c.model.unet.with_fourier_features = True
  c.training.update(num_steps=1_000_000, eval_every=20_000, sample_every=20_000)
  c.eval.update(num_time_samples=4, batch_size=512)
  return c
