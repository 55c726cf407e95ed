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
import ml_collections

placeholder = ml_collections.config_dict.placeholder


def get_config():
  c = ml_collections.ConfigDict()
  c.data = dict(name="cifar10", data_dir=placeholder(str))
  c.model = dict(
      network="vdm_unet",
      vdm_unet=dict(n_embd=128, n_layer=32, with_fourier_features=True, fourier_freqs=(6, 7),
                    with_attention=False, dropout=0.1, input_skip=True, remat=False, scan=True),
      image_shape=(32, 32, 3), vocab_size=256, schedule="learned_linear",
      gamma_min=-13.3, gamma_max=5.0, T=0, antithetic=True, num_classes=0, label_dropout=0.0,
      dtype="float32", weighting="elbo", sigmoid_bias=2.0, schedule_objective="elbo")
  c.training = dict(seed=1, batch_size=128, num_steps=10_000_000, steps_per_call=1000,
                    log_every=1000, eval_every=10_000, checkpoint_every=10_000,
                    sample_every=100_000, keep_checkpoints=3)
  c.optimizer = dict(lr=2e-4, warmup_steps=100, decay="none", weight_decay=0.01,
                     ema_rate=0.9999, grad_clip=0.0)
  c.eval = dict(num_time_samples=1, batch_size=512, T=placeholder(int),
                max_batches=placeholder(int))
  c.sampling = dict(sampler="ancestral", T=1000, num_samples=64, eta=1.0, guidance_weight=0.0)
  return ml_collections.ConfigDict(c)
