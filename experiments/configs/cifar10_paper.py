"""CIFAR-10 with the VDM paper's model and training setup (Kingma et al. 2021, App. B; the
official configs/cifar10.py).

    python -m experiments.train --config=experiments/configs/cifar10_paper.py \
        --workdir=workdirs/cifar10_paper

Model: the full-resolution score network, 128 channels, 32 layers, Fourier features, no
attention in the blocks, dropout 0.1; learned linear schedule with gamma in [-13.3, 5];
continuous time; antithetic time sampling. Training: batch 128, AdamW (lr 2e-4, b1 0.9, b2 0.99,
eps 1e-8, weight decay 0.01), 100 warm-up steps, no decay, no gradient clipping, EMA 0.9999,
10M steps.

Hardware: the paper trained on TPU (8 cores); plan for 8 accelerators (the batch of 128 is split
over them) and weeks of compute. `--config.model.vdm_unet.remat=True` trades compute for memory
on small GPUs. Result: unmeasured with this code; the paper reports 2.65 bits/dim on the test set.
"""
from experiments.configs import cifar10


def get_config():
  c = cifar10.get_config()
  c.model.network = "vdm_unet"      # base.py's vdm_unet group is the paper's network
  c.training.update(seed=1, num_steps=10_000_000, steps_per_call=1000, eval_every=10_000,
                    sample_every=100_000)
  c.optimizer.update(warmup_steps=100, grad_clip=0.0)
  c.eval.num_time_samples = 1
  return c
