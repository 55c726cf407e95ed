"""EMNIST letters (26 classes, 28x28), as in the VDM colab; class-conditional optional.

    python -m experiments.train --config=experiments/configs/emnist.py --workdir=workdirs/emnist
    # class-conditional (labels 0..25 = a..z), trained with 10% null labels for guidance:
    python -m experiments.train --config=experiments/configs/emnist.py --workdir=workdirs/emnist_c \
        --config.model.num_classes=26 --config.model.label_dropout=0.1 \
        --config.sampling.guidance_weight=1.0

Hardware: one GPU. The VDM paper's full-resolution score network, scaled down (64 channels,
8 layers, Fourier features), learned linear schedule on [-13.3, 5], batch 128, 100k steps.
Result: unmeasured (no GPU run yet). Data: the EMNIST gzip files or `tfds build emnist/letters`
(see vdm_jax/data.py); not on this machine.
"""
import ml_collections

placeholder = ml_collections.config_dict.placeholder


def get_config():
  c = ml_collections.ConfigDict()
  c.data = dict(name="emnist/letters", data_dir=placeholder(str))
  c.model = dict(
      network="vdm_unet",
      vdm_unet=dict(n_embd=64, n_layer=8, with_fourier_features=True, fourier_freqs=(6, 7),
                    with_attention=False, dropout=0.1, input_skip=True, remat=False, scan=True),
      image_shape=(28, 28, 1), vocab_size=256, schedule="learned_linear",
      gamma_min=-13.3, gamma_max=5.0, T=0, antithetic=True, num_classes=0, label_dropout=0.0,
      dtype="float32", weighting="elbo", sigmoid_bias=2.0, schedule_objective="elbo")
  c.training = dict(seed=0, batch_size=128, num_steps=100_000, steps_per_call=100,
                    log_every=1000, eval_every=10_000, checkpoint_every=10_000,
                    sample_every=10_000, keep_checkpoints=3)
  c.optimizer = dict(lr=3e-4, warmup_steps=1000, decay="cosine", weight_decay=0.01,
                     ema_rate=0.9999, grad_clip=1.0)
  c.eval = dict(num_time_samples=4, batch_size=800, T=placeholder(int),
                max_batches=placeholder(int))
  c.sampling = dict(sampler="ancestral", T=1000, num_samples=78, eta=1.0, guidance_weight=0.0)
  return ml_collections.ConfigDict(c)
