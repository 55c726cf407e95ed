"""Every config field with its default: the other configs are `base.get_config()` plus a few
overrides.

    python -m experiments.train --config=experiments/configs/base.py --workdir=workdirs/base

Hardware: one GPU. As it stands: Fashion-MNIST, the DDPM-style U-Net at its library defaults
(128 base channels), learned linear schedule on the paper's [-13.3, 5], batch 128, AdamW 2e-4,
EMA 0.9999, 100k steps. Result: unmeasured (a template; the named configs are the measured
ones). Any field can be overridden on the command line (--config.<group>.<field>=<value>), and
`vdm_jax.config.resolve` checks them all before anything runs.
"""
import ml_collections

from vdm_jax import schedules
from vdm_jax.config import EvalSpec, ModelSpec, OptimizerSpec, SampleEvalSpec, SamplingSpec

placeholder = ml_collections.config_dict.placeholder


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.data = dict(
      name="fashion_mnist",         # a vdm_jax.data dataset (built in, or data.register_dataset)
      data_dir=placeholder(str),    # searched first for the files; None: VDM_DATA_DIR, system dirs
  )
  c.model = dict(
      network="unet",               # a key of vdm_jax.model.NETWORKS (or noisy_classifier); its group below
      # nets.UNet attributes (num_classes and dtype come from this group).
      unet=dict(ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,),
                dropout=0.1, with_fourier_features=False, fourier_freqs=(6, 7),
                input_skip=False, remat=False, cond_scalar_input=False, attn_key_bias=False,
                norm_groups=0, fast_conv_grad=False,
                # Labels by embedding, or by cross-attention to their tokens (nets.UNet).
                label_conditioning="embedding", context_dim=64, context_tokens=1,
                cross_attn_heads=1, cross_attn_resolutions=()),
      # nets.VDMScoreNet attributes: the paper's CIFAR-10 network.
      vdm_unet=dict(n_embd=128, n_layer=32, with_fourier_features=True, fourier_freqs=(6, 7),
                    with_attention=False, dropout=0.1, input_skip=True, remat=False,
                    scan=True, scan_unroll=1, fast_conv_grad=True,
                    # The official code's layout: True, True, 32 (see nets.VDMScoreNet).
                    cond_scalar_input=False, attn_key_bias=False, norm_groups=0),
      # nets.MLPScoreNet attributes: data of any shape (vectors, sequences).
      mlp=dict(hidden=256, num_layers=4, n_embd=64, with_fourier_features=True,
               fourier_freqs=(-1, 0, 1, 2), dropout=0.0),
      # nets.NoisyClassifier attributes: network="noisy_classifier" trains p(y | z_t) on the
      # schedule below (fixed: the diffusion model's trained one) for classifier guidance.
      noisy_classifier=dict(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, dropout=0.0),
      # nets.KLAutoencoder attributes: network="autoencoder" trains stage 1 of latent
      # diffusion, -log p(x | z) + kl_weight KL(q(z | x) || N(0, I)); downsampling 2 ** (levels - 1).
      autoencoder=dict(latent_channels=4, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1,
                       kl_weight=1.0),
      image_shape=(28, 28, 1),      # one example's shape, (H, W, C) for images: as the dataset's
      data=ModelSpec.data,          # data model: discrete (integers) | continuous (floats)
      vocab_size=256,               # discrete: values per dimension (8-bit data)
      data_range=ModelSpec.data_range,  # discrete: (low, high) of the bin-centre grid
      schedule="learned_linear",    # a key of vdm_jax.schedules.SCHEDULES
      gamma_min=schedules.GAMMA_MIN,   # gamma(0) (initial value when learned); paper -13.3
      gamma_max=schedules.GAMMA_MAX,   # gamma(1); paper 5.0
      T=0,                          # 0: continuous-time loss; else the number of steps
      antithetic=True,              # low-discrepancy times across the batch
      num_classes=0,                # 0: unconditional; else class-conditional (null = num_classes)
      label_dropout=0.0,            # P(label -> null) in training, for classifier-free guidance
      dtype="float32",              # network compute dtype: float32 | bfloat16 (params float32)
      weighting="elbo",             # training weighting: elbo | simple | sigmoid (bpd: always elbo)
      sigmoid_bias=2.0,             # b of the sigmoid weighting, w = sigmoid(b - log-SNR)
      schedule_objective="elbo",    # elbo | variance (schedule interior minimises the variance)
      # Latent diffusion, stage 2: the workdir of a stage-1 run (network="autoencoder") whose
      # latents this VDM models, and its checkpoint step (None: the latest).
      autoencoder_workdir=placeholder(str),
      autoencoder_step=placeholder(int),
  )
  c.training = dict(
      seed=0,                       # parameters, data order, time/noise draws, eval/sample keys
      batch_size=128,               # GLOBAL batch: split over every device of every host
      num_steps=100_000,
      steps_per_call=100,           # optimizer steps per compiled call (unrolled on CPU)
      log_every=1000,               # intervals in steps; 0 = never (each also runs at the end)
      eval_every=10_000,
      checkpoint_every=10_000,
      sample_every=10_000,
      keep_checkpoints=3,           # newest checkpoints kept
  )
  c.optimizer = dict(
      lr=2e-4,                      # peak learning rate
      warmup_steps=1000,            # linear warm-up from lr / warmup_steps
      decay="none",                 # after warm-up: none | linear | cosine (to 0 at num_steps)
      weight_decay=0.01,            # AdamW's, on the parameters weight_decay_mask selects
      # kernels (kernels and embeddings) | all_but_biases (also norm scales and the schedule)
      weight_decay_mask=OptimizerSpec.weight_decay_mask,
      ema_rate=0.9999,              # EMA of the parameters (evaluated and sampled)
      grad_clip=1.0,                # global-norm clipping; 0 = off
      b1=0.9, b2=0.99, eps=1e-8,    # Adam's moments and epsilon
  )
  c.eval = dict(
      batch_size=1000,              # global batch of the test-set evaluation
      num_time_samples=1,           # (t, noise) draws per test image
      T=placeholder(int),           # None: the model's T; 0: continuous time; else discrete
      max_batches=placeholder(int),  # None: the whole test split; else its first batches only
      method=EvalSpec.method,       # --mode=eval's bound: elbo | ode (probability-flow ODE;
                                    # training runs' periodic evals are always the ELBO)
      trace=EvalSpec.trace,         # ode: divergence by hutchinson (one probe) | exact (small D)
      rtol=EvalSpec.rtol,           # ode: the solver's relative tolerance
      atol=EvalSpec.atol,           # ode: the solver's absolute tolerance
  )
  c.sampling = dict(
      # ancestral | ddim | dpmpp_2m | dpmpp_3m | unipc | ode (probability-flow ODE, adaptive)
      sampler="ancestral",
      T=1000,                       # network evaluations (every sampler but ode)
      spacing=placeholder(str),     # None: the sampler's (uniform_t | logsnr | karras)
      order=placeholder(int),       # unipc: 2 | 3 (None: 3)
      num_samples=64,               # images in each sample grid
      eta=placeholder(float),       # None: the sampler's own (ancestral 1, ddim 0)
      guidance_weight=0.0,          # classifier-free guidance (class-conditional models)
      # --mode=sample: images per device per chunk (bounds memory)
      per_device_batch=SamplingSpec.per_device_batch,
      rtol=SamplingSpec.rtol,       # ode: the solver's relative tolerance
      atol=SamplingSpec.atol,       # ode: the solver's absolute tolerance
      classifier_workdir=placeholder(str),   # classifier guidance: a noisy-classifier run
      classifier_scale=SamplingSpec.classifier_scale,   # ... and its scale (0: unguided)
  )
  S = SampleEvalSpec
  c.sample_eval = dict(             # sample quality (FD, KID, precision/recall); --mode=sample_eval
      every_steps=S.every_steps,    # training interval in steps; 0 = never
      num_samples=S.num_samples,    # samples drawn (the same count makes FDs comparable)
      sampler=S.sampler, T=S.T, eta=placeholder(float),   # as config.sampling
      spacing=placeholder(str), order=placeholder(int),
      guidance_weight=S.guidance_weight,
      classifier_workdir=placeholder(str), classifier_scale=S.classifier_scale,
      per_device_batch=S.per_device_batch, rtol=S.rtol, atol=S.atol,
      feature_network=S.feature_network,   # auto (named like the dataset) | a shipped network
      feature_weights=placeholder(str),    # or your own: a train_classifier.py weights file
      feature_sha256=placeholder(str),     # ... and its sha256 (its run's result.json)
      reference_split=S.reference_split,   # compared with this split's features (cached)
      max_features=S.max_features,  # KID and precision/recall on the first this many
      kid_subsets=S.kid_subsets, kid_subset_size=S.kid_subset_size,
      pr_k=S.pr_k,                  # k of the k-NN manifolds (precision/recall)
      cache_dir=placeholder(str),   # reference statistics; None: $VDM_CACHE_DIR, ~/.cache/vdm_jax
  )
  return c
