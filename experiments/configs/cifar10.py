"""CIFAR-10 with a multi-resolution (DDPM-style) U-Net: a cheaper run than the paper's network.

    python -m experiments.train --config=experiments/configs/cifar10.py --workdir=workdirs/cifar10

Hardware: GPUs (1-8; the batch is split over every device). 32 -> 16 -> 8 -> 4 U-Net, 128 base
channels, attention at 16x16, Fourier features, dropout 0.1 (~36M parameters), learned linear
schedule on [-13.3, 5], batch 128, AdamW 2e-4, EMA 0.9999, 1M steps. Result: unmeasured (no GPU
run yet). Data: the CIFAR-10 binary version (see vdm_jax/data.py).
"""
import ml_collections

placeholder = ml_collections.config_dict.placeholder


def get_config():
  c = ml_collections.ConfigDict()
  c.data = dict(name="cifar10", data_dir=placeholder(str))
  c.model = dict(
      network="unet",
      unet=dict(ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,),
                dropout=0.1, with_fourier_features=True, fourier_freqs=(6, 7), input_skip=False,
                remat=False),
      image_shape=(32, 32, 3), vocab_size=256, schedule="learned_linear",
      gamma_min=-13.3, gamma_max=5.0, T=0, antithetic=True, num_classes=0, label_dropout=0.0,
      dtype="float32", weighting="elbo", sigmoid_bias=2.0, schedule_objective="elbo")
  c.training = dict(seed=0, batch_size=128, num_steps=1_000_000, steps_per_call=100,
                    log_every=1000, eval_every=20_000, checkpoint_every=10_000,
                    sample_every=20_000, keep_checkpoints=3)
  c.optimizer = dict(lr=2e-4, warmup_steps=1000, decay="none", weight_decay=0.01,
                     ema_rate=0.9999, grad_clip=1.0)
  c.eval = dict(num_time_samples=4, batch_size=512, T=placeholder(int),
                max_batches=placeholder(int))
  c.sampling = dict(sampler="ancestral", T=1000, num_samples=64, eta=1.0, guidance_weight=0.0)
  return ml_collections.ConfigDict(c)
