"""Quickstart: Fashion-MNIST on a laptop-class CPU in under ten minutes.

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
2.3 GiB.

For scale on the Fashion-MNIST test set: uniform = 8 bpd, per-pixel histogram = 4.59 bpd,
xz -9e = 3.86 bpd.
"""
import ml_collections

placeholder = ml_collections.config_dict.placeholder


def get_config():
  c = ml_collections.ConfigDict()
  c.data = dict(name="fashion_mnist", data_dir=placeholder(str))
  c.model = dict(
      network="unet",
      unet=dict(ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(), dropout=0.0,
                with_fourier_features=True, fourier_freqs=(6, 7), input_skip=False, remat=False),
      image_shape=(28, 28, 1), vocab_size=256, schedule="learned_linear",
      gamma_min=-13.3, gamma_max=5.0, T=0, antithetic=True, num_classes=0, label_dropout=0.0,
      dtype="float32", weighting="elbo", sigmoid_bias=2.0, schedule_objective="elbo")
  # steps_per_call=1: on CPU the steps of a call are unrolled (see train.make_train_step), so
  # compile time grows with it.
  c.training = dict(seed=0, batch_size=64, num_steps=1000, steps_per_call=1, log_every=100,
                    eval_every=0, checkpoint_every=500, sample_every=0, keep_checkpoints=2)
  c.optimizer = dict(lr=3e-3, warmup_steps=100, decay="cosine", weight_decay=0.01,
                     ema_rate=0.999, grad_clip=1.0)
  c.eval = dict(num_time_samples=1, batch_size=1000, T=placeholder(int),
                max_batches=placeholder(int))
  c.sampling = dict(sampler="ancestral", T=128, num_samples=36, eta=1.0, guidance_weight=0.0)
  return ml_collections.ConfigDict(c)
