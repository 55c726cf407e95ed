"""The official VDMConfig as this project reads it: its fields, schedules and network constants,
the model it converts to, and the official parameter layout (shapes and count)."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from vdm_jax import model as model_lib
from vdm_jax import nets

# The fields of the official VDMConfig that a conversion reads (its sm_kernel_init is unused).
MODEL_FIELDS = ("vocab_size", "sample_softmax", "antithetic_time_sampling",
                "with_fourier_features", "with_attention", "gamma_type", "gamma_min", "gamma_max",
                "sm_n_timesteps", "sm_n_embd", "sm_n_layer", "sm_pdrop")

# Official gamma_type -> vdm_jax schedule (model.VDM.schedule).
GAMMA_TYPES = {"fixed": "fixed_linear", "learnable_scalar": "learned_linear",
               "learnable_nnet": "monotone_net"}

# The official network's constants: Fourier-feature exponents, GroupNorm groups, the width of
# the learnable_nnet schedule's hidden layer.
FOURIER_FREQS = (6, 7)
NORM_GROUPS = 32
NNET_FEATURES = 1024

# The VDMScoreNet attributes that make it the official layout (beside those from the config).
OFFICIAL_NETWORK = dict(fourier_freqs=FOURIER_FREQS, input_skip=True, cond_scalar_input=True,
                        attn_key_bias=True, norm_groups=NORM_GROUPS, num_classes=0)


def read_model_config(config: Any) -> dict:
  """The official model config as a checked dict of `MODEL_FIELDS`.

  config: a Mapping (dict, ConfigDict) or any object with those attributes; other keys are
  ignored. Raises ValueError naming what is missing or unsupported.
  """
  get = (lambda k: config[k]) if hasattr(config, "keys") else (lambda k: getattr(config, k))
  values, missing = {}, []
  for name in MODEL_FIELDS:
    try:
      values[name] = get(name)
    except (KeyError, AttributeError):
      missing.append(name)
  if missing:
    raise ValueError(f"the official model config lacks {', '.join(missing)}; it needs every "
                     f"field of the official VDMConfig: {', '.join(MODEL_FIELDS)}.")
  c = values
  if c["gamma_type"] not in GAMMA_TYPES:
    raise ValueError(f"official gamma_type {c['gamma_type']!r} is not supported; choose one "
                     f"of {', '.join(GAMMA_TYPES)}.")
  for name in ("sm_n_embd", "sm_n_layer", "sm_n_timesteps", "vocab_size"):
    if isinstance(c[name], bool) or not isinstance(c[name], (int, np.integer)):
      raise ValueError(f"official {name} must be an int, got {c[name]!r}.")
    c[name] = int(c[name])
  if c["sm_n_embd"] < NORM_GROUPS or c["sm_n_embd"] % NORM_GROUPS:
    raise ValueError(f"official sm_n_embd={c['sm_n_embd']} is not a positive multiple of "
                     f"{NORM_GROUPS}: the official network's GroupNorms ({NORM_GROUPS} groups) "
                     "cannot be built with it.")
  if c["sm_n_layer"] < 1:
    raise ValueError(f"official sm_n_layer={c['sm_n_layer']}: vdm_jax's VDMScoreNet needs at "
                     "least one layer.")
  for name in ("sample_softmax", "antithetic_time_sampling", "with_fourier_features",
               "with_attention"):
    c[name] = bool(c[name])
  for name in ("gamma_min", "gamma_max", "sm_pdrop"):
    c[name] = float(c[name])
  return c


def model_from_config(config: Any, channels: int, image_shape=None) -> model_lib.VDM:
  """The `model.VDM` in the official layout that `config` (official fields) describes.

  channels: the data's channel count (C); image_shape: (H, W, C), default (32, 32, C), the
  size the official code builds its models at (its network is fully convolutional, so any
  H, W works).
  """
  c = read_model_config(config)
  shape = (32, 32, int(channels)) if image_shape is None else tuple(int(d) for d in image_shape)
  if shape[-1] != channels:
    raise ValueError(f"image_shape {shape} has {shape[-1]} channels, but the weights are for "
                     f"{channels}.")
  network = nets.VDMScoreNet(
      n_embd=c["sm_n_embd"], n_layer=c["sm_n_layer"],
      with_fourier_features=c["with_fourier_features"], with_attention=c["with_attention"],
      dropout=c["sm_pdrop"], **OFFICIAL_NETWORK)
  return model_lib.VDM(
      network=network, image_shape=shape, vocab_size=c["vocab_size"],
      schedule=GAMMA_TYPES[c["gamma_type"]], gamma_min=c["gamma_min"],
      gamma_max=c["gamma_max"], T=c["sm_n_timesteps"], antithetic=c["antithetic_time_sampling"])


def official_model_config(model: model_lib.VDM) -> dict:
  """The official config fields of a `model.VDM` in the official layout (the inverse of
  `model_from_config`); raises ValueError naming the attribute (= config field) that has no
  official counterpart. E.g. `experiments/configs/cifar10_paper.py` gives the official CIFAR-10
  model."""
  net = model.network
  where = "config.model.vdm_unet"
  if not isinstance(net, nets.VDMScoreNet):
    raise ValueError(f"the official network is VDMScoreNet (config.model.network='vdm_unet'), "
                     f"not {type(net).__name__}.")
  wrong = [f"{where}.{k}={getattr(net, k)!r} (official: {v!r})"
           for k, v in OFFICIAL_NETWORK.items()
           if (tuple(getattr(net, k)) if k == "fourier_freqs" else getattr(net, k)) != v]
  schedules = {v: k for k, v in GAMMA_TYPES.items()}
  if model.schedule not in schedules:
    wrong.append(f"config.model.schedule={model.schedule!r} (official: one of "
                 f"{', '.join(schedules)})")
  data = model.data
  if data.kind != "discrete" or (data.low, data.high) != (-1.0, 1.0):
    wrong.append(f"data={data.describe()} (official: integers on the bin-centre grid in (-1, 1), "
                 "config.model.data='discrete', data_range=(-1.0, 1.0))")
  if wrong:
    raise ValueError("this model is not in the official layout: " + "; ".join(wrong) + ".")
  return dict(vocab_size=model.vocab_size, sample_softmax=False,
              antithetic_time_sampling=model.antithetic,
              with_fourier_features=net.with_fourier_features,
              with_attention=net.with_attention, gamma_type=schedules[model.schedule],
              gamma_min=model.gamma_min, gamma_max=model.gamma_max, sm_n_timesteps=model.T,
              sm_n_embd=net.n_embd, sm_n_layer=net.n_layer, sm_pdrop=net.dropout)


def official_param_shapes(config: Any, channels: int) -> dict[str, tuple[int, ...]]:
  """The official model's parameters: '/'-joined path under 'params' -> shape."""
  c = read_model_config(config)
  n, n_layer = c["sm_n_embd"], c["sm_n_layer"]
  shapes: dict[str, tuple[int, ...]] = {}

  def dense(name, n_in, n_out, bias=True):
    shapes[f"{name}/kernel"] = (n_in, n_out)
    if bias:
      shapes[f"{name}/bias"] = (n_out,)

  def conv(name, n_in, n_out):
    shapes[f"{name}/kernel"] = (3, 3, n_in, n_out)
    shapes[f"{name}/bias"] = (n_out,)

  def norm(name, ch):
    shapes[f"{name}/scale"] = shapes[f"{name}/bias"] = (ch,)

  def block(name, n_in):
    norm(f"{name}/GroupNorm_0", n_in)
    conv(f"{name}/conv1", n_in, n)
    dense(f"{name}/cond_proj", 4 * n, n, bias=False)
    norm(f"{name}/GroupNorm_1", n)
    conv(f"{name}/conv2", n, n)
    if n_in != n:
      dense(f"{name}/nin_shortcut", n_in, n)

  def attn(name):
    norm(f"{name}/GroupNorm_0", n)
    for part in ("q", "k", "v", "proj_out"):
      dense(f"{name}/{part}", n, n)

  sm = "score_model/"
  n_input = channels * (1 + 2 * len(FOURIER_FREQS)) if c["with_fourier_features"] else channels
  dense(sm + "dense0", n + 1, 4 * n)
  dense(sm + "dense1", 4 * n, 4 * n)
  conv(sm + "conv_in", n_input, n)
  for i in range(n_layer):
    block(f"{sm}down.block_{i}", n)
    if c["with_attention"]:
      attn(f"{sm}down.attn_{i}")
  block(sm + "mid.block_1", n)
  attn(sm + "mid.attn_1")
  block(sm + "mid.block_2", n)
  for i in range(n_layer + 1):
    block(f"{sm}up.block_{i}", 2 * n)
    if c["with_attention"]:
      attn(f"{sm}up.attn_{i}")
  norm(sm + "GroupNorm_0", n)
  conv(sm + "conv_out", n, channels)
  if c["gamma_type"] == "learnable_scalar":
    shapes["gamma/w"] = shapes["gamma/b"] = (1,)
  elif c["gamma_type"] == "learnable_nnet":
    dense("gamma/l1", 1, 1)
    dense("gamma/l2", 1, NNET_FEATURES)
    dense("gamma/l3", NNET_FEATURES, 1, bias=False)
  return shapes


def official_param_count(config: Any, channels: int) -> int:
  """Number of scalars in the official model's parameters."""
  return sum(math.prod(s) for s in official_param_shapes(config, channels).values())
