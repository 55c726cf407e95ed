"""Fashion-MNIST, unconditional, a multi-resolution U-Net sized for one GPU.

    python -m experiments.train --config=experiments/configs/fashion_mnist.py \
        --workdir=workdirs/fashion_mnist

Hardware: one GPU (e.g. an A100/H100; ~16 GB is plenty). 28 -> 14 -> 7 U-Net, 64 base channels,
attention at 14x14, Fourier features, learned linear schedule on [-13.3, 5], batch 128,
200k steps. Result: unmeasured (no GPU run yet). For a CPU run, see quickstart.py.
"""
import ml_collections

placeholder = ml_collections.config_dict.placeholder


def get_config():
  c = ml_collections.ConfigDict()
  c.data = dict(name="fashion_mnist", data_dir=placeholder(str))
  c.model = dict(
      network="unet",
      unet=dict(ch=64, ch_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(14,), dropout=0.1,
                with_fourier_features=True, fourier_freqs=(6, 7), input_skip=False, remat=False),
      image_shape=(28, 28, 1), vocab_size=256, schedule="learned_linear",
      gamma_min=-13.3, gamma_max=5.0, T=0, antithetic=True, num_classes=0, label_dropout=0.0,
      dtype="float32", weighting="elbo", sigmoid_bias=2.0, schedule_objective="elbo")
  c.training = dict(seed=0, batch_size=128, num_steps=200_000, steps_per_call=100,
                    log_every=1000, eval_every=10_000, checkpoint_every=10_000,
                    sample_every=10_000, keep_checkpoints=3)
  c.optimizer = dict(lr=5e-4, warmup_steps=1000, decay="cosine", weight_decay=0.01,
                     ema_rate=0.9999, grad_clip=1.0)
  c.eval = dict(num_time_samples=4, batch_size=1000, T=placeholder(int),
                max_batches=placeholder(int))
  c.sampling = dict(sampler="ancestral", T=1000, num_samples=64, eta=1.0, guidance_weight=0.0)
  return ml_collections.ConfigDict(c)
