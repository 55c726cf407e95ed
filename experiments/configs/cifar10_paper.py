"""CIFAR-10 with the VDM paper's model and training setup (Kingma et al. 2021, App. B; the
official configs/cifar10.py).

    python -m experiments.train --config=experiments/configs/cifar10_paper.py \
        --workdir=workdirs/cifar10_paper

Model: the full-resolution score network, 128 channels, 32 layers, Fourier features, no
attention in the blocks, dropout 0.1; learned linear schedule with gamma in [-13.3, 5];
continuous time; antithetic time sampling. Training: batch 128, AdamW (lr 2e-4, b1 0.9, b2 0.99,
eps 1e-8, weight decay 0.01 on every parameter but the biases), 100 warm-up steps, no decay, no
gradient clipping, EMA 0.9999, 10M steps, 1000 steps per call.

The model is the official one in its exact layout (30,578,181 parameters, as the official code
counts): `vdm_jax.interop.official` loads the official checkpoints into it, and
`--mode=eval --official_checkpoint=<.../checkpoints-0>` evaluates them with this config. The
official recipe, field by field, where this config differs:
  model.schedule: learned_linear, gamma = gamma_min + softplus(log_range) t, for the official
    learnable_scalar b + |w| t: the same function and initial values; at a range of 18.3 the
    two parameterisations' gradients and decays agree to 1e-8 (softplus'(18.3) = 1 - 1e-8).
  model.antithetic: the same stratified times t_b = (u + b/B) mod 1, over the global batch of
    128 here and over each device's share of it in the official code (both unbiased).
  optimizer.warmup_steps=100: here lr (step + 1) / 100 at 0-based step < 100, officially
    lr step / 100 (its first update has rate 0): the same ramp one step earlier.
  optimizer.ema_rate=0.9999: officially fixed from step 0; here min(0.9999, (1 + s) / (10 + s))
    (vdm_jax.training.optimizer.ema_decay), the same from step 89,990 on; the official average
    keeps weight 0.9999^s on the initial parameters (e^-100 by step 1M), so trained averages
    agree.
  dropout masks and every other random draw come from other generators (same distributions).
  training.sample_every=100_000: officially a sample grid with every eval (10k steps).
  eval: the whole test set once, one time sample per image, with a standard error; officially
    the mean over 100 batches of 128 shuffled test images (12,800 draws, with repeats).
The rest is the official configs/cifar10.py: data (CIFAR-10 without augmentation), batch,
steps, Adam's constants, weight decay and its mask, no clipping, log / eval / checkpoint every
1000 / 10k / 10k steps, ancestral sampling with 1000 steps and argmax decoding.

Hardware: the paper trained on TPU (8 cores); plan for 8 accelerators (the batch of 128 is split
over them) and weeks of compute. `--config.model.vdm_unet.remat=True` trades compute for memory
on small GPUs. Result: unmeasured with this code; the paper reports 2.65 bits/dim on the test set
and the official code 2.637 for its released checkpoint.
"""
from experiments.configs import cifar10


def get_config():
  c = cifar10.get_config()
  c.model.network = "vdm_unet"      # base.py's vdm_unet group is the paper's network
  c.model.vdm_unet.update(cond_scalar_input=True, attn_key_bias=True, norm_groups=32)
  c.training.update(seed=1, num_steps=10_000_000, steps_per_call=1000, eval_every=10_000,
                    sample_every=100_000)
  c.optimizer.update(warmup_steps=100, grad_clip=0.0, weight_decay_mask="all_but_biases")
  c.eval.num_time_samples = 1
  return c
