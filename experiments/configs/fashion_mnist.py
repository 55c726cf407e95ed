"""Fashion-MNIST, unconditional, a multi-resolution U-Net sized for one GPU.

    python -m experiments.train --config=experiments/configs/fashion_mnist.py \
        --workdir=workdirs/fashion_mnist

Hardware: one GPU (e.g. an A100/H100; ~16 GB is plenty). 28 -> 14 -> 7 U-Net, 64 base channels,
attention at 14x14, Fourier features, learned linear schedule on [-13.3, 5], batch 128,
200k steps. Result: unmeasured (no GPU run yet). For a CPU run, see quickstart.py.
"""
from experiments.configs import base


def get_config():
  c = base.get_config()
  c.model.unet.update(ch=64, ch_mult=(1, 2, 2), attn_resolutions=(14,),
                      with_fourier_features=True)
  c.training.num_steps = 200_000
  c.optimizer.update(lr=5e-4, decay="cosine")
  c.eval.num_time_samples = 4
  return c
