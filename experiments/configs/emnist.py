"""EMNIST letters (26 classes, 28x28), as in the VDM colab; class-conditional optional.

    python -m experiments.train --config=experiments/configs/emnist.py --workdir=workdirs/emnist
    # class-conditional (labels 0..25 = a..z), trained with 10% null labels for guidance:
    python -m experiments.train --config=experiments/configs/emnist.py --workdir=workdirs/emnist_c \
        --config.model.num_classes=26 --config.model.label_dropout=0.1 \
        --config.sampling.guidance_weight=1.0

Hardware: one GPU. The VDM paper's full-resolution score network, scaled down (64 channels,
8 layers, Fourier features), learned linear schedule on [-13.3, 5], batch 128, 100k steps.
Result: unmeasured (no GPU run yet). Data: the EMNIST gzip files or `tfds build emnist/letters`
(see the `vdm_jax.data` docstring); not on this machine.
"""
from experiments.configs import base


def get_config():
  c = base.get_config()
  c.data.name = "emnist/letters"
  c.model.network = "vdm_unet"
  c.model.vdm_unet.update(n_embd=64, n_layer=8)
  c.optimizer.update(lr=3e-4, decay="cosine")
  c.eval.update(num_time_samples=4, batch_size=800)
  c.sampling.num_samples = 78
  return c
