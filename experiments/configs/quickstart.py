"""Quickstart: Fashion-MNIST on a laptop-class CPU in about ten minutes.

    python -m experiments.train --config=experiments/configs/quickstart.py --workdir=/tmp/qs

Hardware: 2 CPU cores, no accelerator. A small multi-resolution U-Net (16 base channels,
28 -> 14 -> 7, attention only in the 7x7 middle block, Fourier features; 0.27M parameters),
learned linear schedule on [-13.3, 5], batch 64, 1000 steps (about one epoch), AdamW 3e-3 with
warm-up and cosine decay, EMA 0.999. The final evaluation covers the whole test split (10000
images).

Result (measured on a 2-core CPU VM, jax 0.10.2, this exact command): test bpd 3.542 +- 0.032
(recon 0.049, prior 0.002, diffusion 3.491) after 1000 steps (64k images), 8-10 minutes of wall
time (8m03s and 9m49s in two runs; the VM's speed varies) including compilation (12-18s), the
final evaluation (19-28s) and 36 samples (8-14s); 2.0-2.4 steps/s, 125-150 images/s, peak RSS
2.3 GiB. A third run, on a fresh virtual environment with the data downloaded from a mirror, on
a slower day of the same VM: 3.541 +- 0.032 in 15m30s (0.9-1.4 steps/s, 60-92 images/s).

For scale on the Fashion-MNIST test set: uniform = 8 bpd, per-pixel histogram = 4.59 bpd,
xz -9e = 3.86 bpd.
"""
from experiments.configs import base


def get_config():
  c = base.get_config()
  c.model.unet.update(ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(),
                      dropout=0.0, with_fourier_features=True)
  # steps_per_call=1: on CPU the steps of a call are unrolled, so compile time grows with it.
  c.training.update(batch_size=64, num_steps=1000, steps_per_call=1, log_every=100,
                    eval_every=0, checkpoint_every=500, sample_every=0, keep_checkpoints=2)
  c.optimizer.update(lr=3e-3, warmup_steps=100, decay="cosine", ema_rate=0.999)
  c.sampling.update(T=128, num_samples=36)
  return c
