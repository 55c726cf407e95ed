"""Model FLOPs of a VDM's score network, counted from its configuration, and MFU.

    flops = network_flops_per_image(model)       # {"forward": F, "train": 3 F}
    mfu(flops["train"] * images_per_s, "NVIDIA H100 80GB HBM3", "bfloat16")

The count is the matrix products of one forward pass for one image: every `dot_general` (dense
layers, attention's q k^T and weights v) and every convolution, at 2 FLOPs per multiply-add,
read off the network's jaxpr (traced abstractly: no compilation, no device memory). Scanned
blocks count `length` times and the custom-VJP convolutions once, so unlike XLA's cost
analysis (which counts a loop body once) the number does not depend on scan, remat or
fast_conv_grad. Elementwise work (norms, swish, softmax) is left out, as in the usual MFU
convention; the train figure is 3x forward (forward + a backward pass of twice its cost) and does
not count rematerialised recomputation.

MFU = achieved model FLOP/s / the device's dense peak for the compute dtype (`PEAK_TFLOPS`, the
vendors' dense figures, no sparsity). float32 matrix products on NVIDIA GPUs run as TF32 under
JAX's default precision, so float32 is measured against the TF32 peak. Devices not in the table
report FLOPs only.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

# Dense peak TFLOP/s per device kind (jax.Device.device_kind) and compute dtype.
PEAK_TFLOPS = {
    "NVIDIA H100 80GB HBM3": {"bfloat16": 989.4, "float32": 494.7},      # SXM
    "NVIDIA H100 PCIe": {"bfloat16": 756.0, "float32": 378.0},
    "NVIDIA H200": {"bfloat16": 989.4, "float32": 494.7},
    "NVIDIA A100-SXM4-80GB": {"bfloat16": 312.0, "float32": 156.0},
    "NVIDIA A100-SXM4-40GB": {"bfloat16": 312.0, "float32": 156.0},
    "NVIDIA A100 80GB PCIe": {"bfloat16": 312.0, "float32": 156.0},
    "NVIDIA L4": {"bfloat16": 121.0, "float32": 60.0},
    "TPU v4": {"bfloat16": 275.0},
    "TPU v5 lite": {"bfloat16": 197.0},
    "TPU v5": {"bfloat16": 459.0},
    "TPU v6 lite": {"bfloat16": 918.0},
}


def _dot_flops(eqn) -> int:
  (lhs_contract, _), (lhs_batch, _) = eqn.params["dimension_numbers"]
  lhs, rhs = (v.aval.shape for v in eqn.invars)
  out = eqn.outvars[0].aval.shape
  contracted = math.prod(lhs[d] for d in lhs_contract)
  return 2 * math.prod(out) * contracted


def _conv_flops(eqn) -> int:
  lhs, rhs = (v.aval.shape for v in eqn.invars)
  out = eqn.outvars[0].aval.shape
  dn = eqn.params["dimension_numbers"]
  # Per output element: kernel window x input features per group.
  spatial = math.prod(rhs[d] for d in dn.rhs_spec[2:])
  in_per_group = rhs[dn.rhs_spec[1]]
  return 2 * math.prod(out) * spatial * in_per_group


def _sub_jaxprs(eqn):
  """(jaxpr, multiplicity) of the computations an equation runs once per call of it."""
  p = eqn.params
  if eqn.primitive.name == "scan":
    yield p["jaxpr"].jaxpr, p["length"]
    return
  if eqn.primitive.name == "while":
    raise ValueError("a while loop's trip count is unknown: cannot count its FLOPs")
  if eqn.primitive.name == "cond":
    # The most expensive branch (dropout on/off, etc.).
    yield max(p["branches"], key=lambda b: jaxpr_flops(b.jaxpr)).jaxpr, 1
    return
  for name in ("jaxpr", "call_jaxpr", "fun_jaxpr"):   # pjit, remat, custom_vjp / custom_jvp
    if name in p:
      sub = p[name]
      yield getattr(sub, "jaxpr", sub), 1
      return


def jaxpr_flops(jaxpr) -> int:
  """Matrix-product FLOPs of one evaluation of `jaxpr` (see the module docstring)."""
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      total += _dot_flops(eqn)
    elif name == "conv_general_dilated":
      total += _conv_flops(eqn)
    else:
      for sub, times in _sub_jaxprs(eqn):
        total += times * jaxpr_flops(sub)
  return total


def network_flops_per_image(model) -> dict[str, int]:
  """{"forward": F, "train": 3 F}: the score network's matrix-product FLOPs per image of
  `model.image_shape` (a `vdm_jax.model.VDM`), for the network as configured (attention,
  Fourier features, classes)."""
  from vdm_jax import model as model_lib
  variables = jax.eval_shape(lambda k: model_lib.init_variables(model, k),
                             jax.random.PRNGKey(0))
  z = jax.ShapeDtypeStruct((1, *model.image_shape), jnp.float32)
  g = jax.ShapeDtypeStruct((1,), jnp.float32)
  closed = jax.make_jaxpr(lambda v, z, g: model.apply(v, z, g, method=model.eps))(
      variables, z, g)
  forward = jaxpr_flops(closed.jaxpr)
  return {"forward": int(forward), "train": int(3 * forward)}


def peak_flops(device_kind: str, dtype: str) -> float | None:
  """The dense peak in FLOP/s of `device_kind` for `dtype`, or None when not tabulated."""
  peak = PEAK_TFLOPS.get(device_kind, {}).get(str(np.dtype(dtype)) if dtype != "bfloat16"
                                              else "bfloat16")
  return None if peak is None else peak * 1e12


def mfu(achieved_flops_per_s: float, device_kind: str, dtype: str) -> float | None:
  """Achieved model FLOP/s over the device's dense peak; None for an untabulated device."""
  peak = peak_flops(device_kind, dtype)
  return None if peak is None else achieved_flops_per_s / peak
