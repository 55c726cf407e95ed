"""The official VDM code's models and checkpoints (github.com/google-research/vdm) in vdm_jax.

    from vdm_jax.interop import official
    model, variables = official.convert(official_variables, official_model_config)
    model, variables, meta = official.load_checkpoint("<workdir>/checkpoints-0", config)
    eps_hat = model.apply(variables, z, gamma_t, method=model.eps)
    gamma = model.apply(variables, t, method=model.gamma)

`official_model_config` holds the fields of the official `VDMConfig` (`MODEL_FIELDS`: its
configs' `config.model` group), as a dict or any object with those attributes. The returned
`model.VDM` computes, to float32 rounding,

    model.eps(z, gamma_t)  == official score_model(z, gamma_t, conditioning=0, deterministic=True)
    model.gamma(t)         == official gamma(t)

and hence the same bound (`model.VDM.__call__`) and samplers: conditioning 0 is what the
official code feeds for un-augmented data and in sampling.

The official score network is `nets.VDMScoreNet` with `OFFICIAL_NETWORK` (an extra zero input to
the conditioning MLP, a bias in the attention keys, 32 GroupNorm groups everywhere; z added to
the output as its "base measure"), so parameter counts are equal (the paper's CIFAR-10 network:
30,578,181 with its learnable_scalar schedule). Layers map one to one:

    official score_model            vdm_jax network (nn.scan layout: a leading layer axis)
    dense0, dense1                  cond_embed/dense0, cond_embed/dense1
    conv_in, conv_out               conv_in, conv_out
    GroupNorm_0 (output head)       norm_out
    down.block_<i>, down.attn_<i>   down/block, down/attn        (entry i of the stack)
    mid.block_1, mid.attn_1, .._2   mid_block1, mid_attn, mid_block2
    up.block_<i>, up.attn_<i>       up/block, up/attn
    in a block: GroupNorm_0, conv1, cond_proj, GroupNorm_1, conv2, nin_shortcut
                -> norm1, conv1, cond_proj, norm2, conv2, nin_shortcut
    in an attention block: GroupNorm_0, q, k, v, proj_out -> norm, q, k, v, proj_out

Schedules (`GAMMA_TYPES`), each an exact reparameterisation of the official one:
  fixed            -> fixed_linear (no parameters).
  learnable_scalar -> learned_linear: gamma = b + |w| t is gamma_min + softplus(log_range) t with
                      gamma_min = b, log_range = softplus^-1(|w|).
  learnable_nnet   -> monotone_net: the official gamma(t) = l1(t) + l3(2 sigmoid(l2(2t - 1)) - 1)
                      / n (l1, l2, l3 with |weights|) equals the monotone net with the same l2,
                      l3 scaled by 2 / |l1 kernel|, and endpoints gamma(0), gamma(1).
The official `gamma_type="fixed"` cannot build its own model (its decoder gets a Python float
for gamma(0)); its variables are the score network's alone, and they convert here.
"""
from __future__ import annotations

import functools
import math
import re
from pathlib import Path
from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
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

# The official clu checkpoint's file names: <folder>/ckpt-<n>.flax, and the TensorFlow record
# `<folder>/checkpoint` naming the newest complete one.
_CKPT_FILE = re.compile(r"ckpt-(\d+)\.flax")
_CKPT_RECORD = re.compile(r'^model_checkpoint_path:\s*"([^"]*)"', re.M)


# ============================================================================ the config


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


# ============================================================================ weights


def _plain(tree: Any) -> Any:
  """Nested Mappings (dict, FrozenDict) of arrays -> nested dicts of float32 numpy arrays."""
  if hasattr(tree, "keys"):
    return {str(k): _plain(tree[k]) for k in tree.keys()}
  return np.asarray(tree, np.float32)


def _check_layout(flat: Mapping[str, np.ndarray], expected: Mapping[str, tuple]) -> None:
  missing = sorted(set(expected) - set(flat))
  extra = sorted(set(flat) - set(expected))
  wrong = sorted(f"{k} {tuple(flat[k].shape)} (expected {expected[k]})"
                 for k in set(flat) & set(expected) if tuple(flat[k].shape) != expected[k])
  if missing or extra or wrong:
    show = lambda xs: ", ".join(xs[:6]) + (f" and {len(xs) - 6} more" if len(xs) > 6 else "")
    parts = [f"missing {show(missing)}" if missing else "",
             f"unexpected {show(extra)}" if extra else "",
             f"wrong shapes {show(wrong)}" if wrong else ""]
    raise ValueError(
        "the official variables do not fit the official model config: "
        + "; ".join(p for p in parts if p) + ". Check sm_n_embd, sm_n_layer, with_attention, "
        "with_fourier_features and gamma_type against the config the weights were trained with.")


def _inverse_softplus(y: float) -> float:
  """x with softplus(x) = y > 0, in float64."""
  return y + math.log(-math.expm1(-y))


def _block(p: Mapping[str, Any]) -> dict:
  out = {"norm1": p["GroupNorm_0"], "conv1": p["conv1"], "cond_proj": p["cond_proj"],
         "norm2": p["GroupNorm_1"], "conv2": p["conv2"]}
  if "nin_shortcut" in p:
    out["nin_shortcut"] = p["nin_shortcut"]
  return out


def _attn(p: Mapping[str, Any]) -> dict:
  return {"norm": p["GroupNorm_0"], "q": p["q"], "k": p["k"], "v": p["v"],
          "proj_out": p["proj_out"]}


def _stack(trees: list) -> Any:
  return jax.tree_util.tree_map(lambda *xs: np.stack(xs), *trees)


def _network_params(sm: Mapping[str, Any], n_layer: int, with_attention: bool) -> dict:
  """The official score_model's parameters in VDMScoreNet's (scanned) layout."""
  down = {"block": _stack([_block(sm[f"down.block_{i}"]) for i in range(n_layer)])}
  up = {"block": _stack([_block(sm[f"up.block_{i}"]) for i in range(n_layer + 1)])}
  if with_attention:
    down["attn"] = _stack([_attn(sm[f"down.attn_{i}"]) for i in range(n_layer)])
    up["attn"] = _stack([_attn(sm[f"up.attn_{i}"]) for i in range(n_layer + 1)])
  return {"cond_embed": {"dense0": sm["dense0"], "dense1": sm["dense1"]},
          "conv_in": sm["conv_in"], "down": down, "mid_block1": _block(sm["mid.block_1"]),
          "mid_attn": _attn(sm["mid.attn_1"]), "mid_block2": _block(sm["mid.block_2"]),
          "up": up, "norm_out": sm["GroupNorm_0"], "conv_out": sm["conv_out"]}


def _endpoints(gamma_0: float, gamma_1: float) -> dict:
  if not gamma_1 > gamma_0:
    raise ValueError(f"the official schedule is not increasing (gamma(0) = {gamma_0}, gamma(1) "
                     f"= {gamma_1}); vdm_jax schedules need gamma(0) < gamma(1).")
  return {"gamma_min": np.float32(gamma_0),
          "log_range": np.float32(_inverse_softplus(gamma_1 - gamma_0))}


def _official_nnet_gamma(g: Mapping[str, Any], t: np.ndarray) -> np.ndarray:
  """The official learnable_nnet gamma(t), in float64 (numpy)."""
  f = lambda a: np.asarray(a, np.float64)
  t = f(t)[:, None]
  h = t * np.abs(f(g["l1"]["kernel"])) + f(g["l1"]["bias"])
  s = 1.0 / (1.0 + np.exp(-((2.0 * t - 1.0) @ np.abs(f(g["l2"]["kernel"])) + f(g["l2"]["bias"]))))
  h = h + (2.0 * (s - 0.5)) @ np.abs(f(g["l3"]["kernel"])) / NNET_FEATURES
  return h[:, 0]


def _schedule_params(gamma_type: str, g: Mapping[str, Any]) -> dict | None:
  """The official schedule's parameters in the matching vdm_jax schedule's layout (None: the
  schedule has none)."""
  if gamma_type == "fixed":
    return None
  if gamma_type == "learnable_scalar":
    b, w = float(g["b"][0]), abs(float(g["w"][0]))
    return {"endpoints": _endpoints(b, b + w)}
  scale = abs(float(g["l1"]["kernel"][0, 0]))
  if scale == 0.0:
    raise ValueError("the official learnable_nnet schedule has a zero l1 kernel (no linear "
                     "part); vdm_jax's monotone_net always has one and cannot express it.")
  gamma_0, gamma_1 = _official_nnet_gamma(g, np.array([0.0, 1.0]))
  l3 = (2.0 / scale) * np.abs(np.asarray(g["l3"]["kernel"], np.float64))
  return {"endpoints": _endpoints(float(gamma_0), float(gamma_1)),
          "l2": {"kernel": g["l2"]["kernel"], "bias": g["l2"]["bias"]},
          "l3": {"kernel": l3.astype(np.float32)}}


@functools.lru_cache(maxsize=8)
def _abstract_params(model: model_lib.VDM) -> Any:
  """The shapes of the model's parameters (from the two functions that own them, eps and
  gamma: cheaper to trace than the loss)."""
  z = jnp.zeros((1, *model.image_shape), jnp.float32)
  g = jnp.zeros((1,), jnp.float32)
  init = lambda key: model.init(key, z, g, method=lambda m, z, g: (m.eps(z, g), m.gamma(g)))
  shapes = jax.eval_shape(init, jax.random.PRNGKey(0))
  return jax.tree_util.tree_map(lambda s: s.shape, shapes["params"])


def convert(official_variables: Any, official_model_config: Any, *,
            image_shape=None) -> tuple[model_lib.VDM, dict]:
  """(model, variables) computing what the official model with these variables computes.

  Args:
    official_variables: the official `VDM` module's variables, {'params': {'score_model': ...,
      'gamma': ...}} (no 'gamma' for gamma_type 'fixed'); the inner dict alone is accepted too.
      Arrays of any float dtype (cast to float32).
    official_model_config: the official VDMConfig fields (`MODEL_FIELDS`), a dict or an object.
      sample_softmax only chooses how the official sampler turns z_0 into integers; here that is
      the sampler's `decode` argument ("sample" for sample_softmax=True).
    image_shape: (H, W, C) for `model.VDM.image_shape`; default (32, 32, C) with C from the
      weights.

  Returns:
    model: `model.VDM` with `nets.VDMScoreNet(**OFFICIAL_NETWORK, ...)` and the schedule of
      `GAMMA_TYPES`; variables: {'params': ...} of jnp float32 arrays.

  Raises:
    ValueError naming the config field or the parameters that do not fit.
  """
  config = read_model_config(official_model_config)
  params = official_variables.get("params", official_variables) if hasattr(
      official_variables, "get") else None
  if params is None or not hasattr(params, "keys") or "score_model" not in params:
    found = sorted(params.keys()) if hasattr(params, "keys") else type(official_variables)
    raise ValueError("official_variables must be the official VDM module's variables, "
                     f"{{'params': {{'score_model': ..., 'gamma': ...}}}}; found {found}.")
  params = _plain(params)
  flat = {"/".join(k): v for k, v in flax.traverse_util.flatten_dict(params).items()}
  try:
    channels = int(params["score_model"]["conv_out"]["kernel"].shape[-1])
  except (KeyError, TypeError, IndexError):
    raise ValueError("official_variables has no score_model/conv_out/kernel, the layer whose "
                     "shape gives the image channels.") from None
  _check_layout(flat, official_param_shapes(config, channels))

  model = model_from_config(config, channels, image_shape)
  ours = {"network": _network_params(params["score_model"], config["sm_n_layer"],
                                     config["with_attention"])}
  schedule = _schedule_params(config["gamma_type"], params.get("gamma", {}))
  if schedule is not None:
    ours[model_lib.SCHEDULE_SCOPE] = schedule
  got = jax.tree_util.tree_map(lambda x: tuple(np.shape(x)), ours)
  if got != _abstract_params(model):
    raise RuntimeError("the converted parameters do not have the layout of the vdm_jax model "
                       "(a mapping error in vdm_jax.interop.official).")
  return model, {"params": jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), ours)}


# ============================================================================ checkpoints


def find_checkpoint(path: str | Path) -> Path:
  """The official checkpoint file for `path`: the file itself, or in a folder (clu's
  `<workdir>/checkpoints-0`) the ckpt-<n>.flax that its `checkpoint` record names as the newest
  complete one, or without a record the highest <n>."""
  p = Path(path).expanduser()
  if p.is_file():
    return p
  if not p.is_dir():
    raise FileNotFoundError(f"{p}: no such file or folder; expected an official VDM checkpoint "
                            "(ckpt-<n>.flax) or the folder holding it (<workdir>/checkpoints-0).")
  record = p / "checkpoint"
  if record.is_file():
    match = _CKPT_RECORD.search(record.read_text(errors="replace"))
    if match:
      named = p / (Path(match.group(1)).name + ".flax")
      if not named.is_file():
        raise FileNotFoundError(f"{record} names {match.group(1)!r} as the newest checkpoint, "
                                f"but {named} is missing; pass the .flax file to use instead.")
      return named
  numbered = sorted((int(m.group(1)), f) for f in p.iterdir()
                    if (m := _CKPT_FILE.fullmatch(f.name)) and f.is_file())
  if not numbered:
    raise FileNotFoundError(f"{p} holds no ckpt-<n>.flax file: an official VDM checkpoint folder "
                            "(<workdir>/checkpoints-0) holds ckpt-<n>.flax files and a "
                            "'checkpoint' record.")
  return numbered[-1][1]


def read_train_state(path: str | Path) -> tuple[Path, dict]:
  """(file, state dict) of an official checkpoint: the msgpack-serialised train state with
  step, params, ema_params and opt_state (arrays as numpy). Raises ValueError naming the file
  when it is not one (e.g. truncated)."""
  file = find_checkpoint(path)
  raw = file.read_bytes()
  expected = ("expected the msgpack train state (step, params, ema_params, opt_state) that the "
              "official code's clu checkpoint writes as ckpt-<n>.flax")
  try:
    state = flax.serialization.msgpack_restore(raw)
  except Exception as e:  # msgpack raises several types for cut or foreign bytes
    raise ValueError(f"{file} ({len(raw)} bytes) is not a readable checkpoint ({type(e).__name__}:"
                     f" {e}); {expected}. A file cut short (an interrupted copy) reads like "
                     "this.") from None
  if not isinstance(state, dict) or not {"step", "params", "ema_params"} <= set(state):
    found = sorted(state) if isinstance(state, dict) else type(state).__name__
    raise ValueError(f"{file} holds {found}; {expected}.")
  return file, state


def load_checkpoint(path: str | Path, official_model_config: Any, *, ema: bool = True,
                    image_shape=None) -> tuple[model_lib.VDM, dict, dict]:
  """(model, variables, meta) from an official VDM checkpoint.

  Args:
    path: a ckpt-<n>.flax file, or the folder holding them (`find_checkpoint`: the newest).
    official_model_config: the official VDMConfig fields the checkpoint was trained with.
    ema: the EMA parameters (what the official code evaluates and samples) when True, else the
      raw parameters.
    image_shape: as in `convert`.

  Returns:
    model and variables as `convert`; meta: {'path': the file, 'step': optimizer steps,
    'params': 'ema_params' or 'params'}.
  """
  file, state = read_train_state(path)
  which = "ema_params" if ema else "params"
  try:
    model, variables = convert({"params": state[which]}, official_model_config,
                               image_shape=image_shape)
  except ValueError as e:
    raise ValueError(f"{file} ({which}): {e}") from None
  return model, variables, {"path": str(file), "step": int(np.asarray(state["step"])),
                            "params": which}
