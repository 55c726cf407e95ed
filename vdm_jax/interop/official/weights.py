"""Official model variables -> `model.VDM` variables (`convert`), layer by layer (see the
package docstring for the map)."""
from __future__ import annotations

import functools
import math
from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np

from vdm_jax import model as model_lib
from vdm_jax.interop.official.layout import (
    NNET_FEATURES, model_from_config, official_param_shapes, read_model_config)


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
