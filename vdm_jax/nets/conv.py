"""A 2-D convolution whose backward pass stays on XLA:CPU's fast convolution path inside loops.

Why: JAX differentiates `lax.conv_general_dilated` into two more convolutions, the input gradient
(kernel flipped, dimension labels `b01f_01oi->b01f`) and the kernel gradient (batch and feature
roles swapped, `f01b_i01o->01bf`). Outside loops XLA:CPU rewrites both into its canonical
NHWC / HWIO form and runs them with its optimised (Eigen) convolution. Inside a `while` loop
(what `lax.scan`, hence `nn.scan` over the VDM network's blocks, lowers to) it does not: they run
on a generic loop emitter, 25-40x slower, and the backward pass of a scanned network is then
dominated by them.

`conv_general_dilated` below has `lax.conv_general_dilated`'s signature (so it plugs into
`flax.linen.Conv(conv_general_dilated=...)`). For the case the networks use (2-D, NHWC input,
HWIO kernel, stride 1, no dilation, no grouping) it is a `jax.custom_vjp` whose backward pass
writes the input gradient as a convolution already in the canonical form (an explicit, cheap
transpose of the kernel) and the kernel gradient as one matmul over shifted copies of the output
gradient (`_kernel_grad_matmul`; 1.3-1.4x faster train steps of the VDM networks on CPU than
the equivalent canonical convolution). On other platforms (GPU / TPU, chosen when the program
is lowered, `lax.platform_dependent`) the backward pass is JAX's own, so the convolution
rewrites of those compilers (e.g. cuDNN backward-filter) still apply. Every other case falls
through to `lax.conv_general_dilated`.

The forward pass is the same `lax.conv_general_dilated` call, so outputs are bitwise identical;
gradients agree with JAX's to float rounding. Being a `custom_vjp`, it supports reverse-mode
differentiation (grad, vjp, remat) but not forward mode (jvp): networks use it only where it
matters (inside loops: `VDMScoreNet`'s scanned blocks, and the vector-Jacobian products of the
ODE solver, `vdm_jax.ode.log_prob`), switchable with the networks' `fast_conv_grad` attribute.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from jax import lax

_NHWC = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1),
                                 out_spec=(0, 3, 1, 2))


def _conv(x, w, pads, precision):
  """Plain NHWC x HWIO -> NHWC convolution, stride 1, explicit padding."""
  return lax.conv_general_dilated(x, w, (1, 1), pads, dimension_numbers=_NHWC,
                                  precision=precision)


def _canonical_grads(x, w, g, pads, precision):
  """(dx, dw) of `_conv(x, w, pads)` for the output gradient g, as canonical convolutions."""
  kh, kw = w.shape[0], w.shape[1]
  # Input gradient: correlate g with the spatially flipped kernel, in/out channels swapped.
  w_t = jnp.transpose(w[::-1, ::-1], (0, 1, 3, 2))
  dx_pads = tuple((k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip((kh, kw), pads))
  dx = _conv(g, w_t, dx_pads, precision)
  dw = _kernel_grad_matmul(x, g, (kh, kw), pads, precision)
  return dx.astype(x.dtype), dw.astype(w.dtype)


def _kernel_grad_matmul(x, g, kernel_size, pads, precision):
  """dw[a, b, i, o] = sum_{n,y,x} x_pad[n, y + a, x + b, i] g[n, y, x, o] as ONE matmul.

  Substituting u = y + a - lo: dw[a, b] = x^T G_ab, with G_ab[n, u, v] = g[n, u + lo - a, ...]
  (zero outside g). The kh * kw shifted copies of g are concatenated on the channel axis, so
  dw = x^T [I, N*H*W] @ [G_00 | G_01 | ...] [N*H*W, kh*kw*O]. Why not the equivalent
  convolution (x^T [I, H, W, N] with g^T [Ho, Wo, N, O] as an Ho x Wo kernel): XLA:CPU runs that
  huge-kernel, tiny-output convolution 2-4x slower per flop than this matmul plus the copies.
  Memory: the shifted copies take kh * kw times the size of g.
  """
  (kh, kw), ((lo_h, hi_h), (lo_w, hi_w)) = kernel_size, pads
  n, h, w_, c_in = x.shape
  c_out = g.shape[-1]
  # Pad g so that G_ab is the slice starting at (kh - 1 - a, kw - 1 - b); negative pads crop.
  zero = jnp.zeros((), g.dtype)
  g_pad = lax.pad(g, zero, ((0, 0, 0), (kh - 1 - lo_h, kh - 1 - hi_h, 0),
                            (kw - 1 - lo_w, kw - 1 - hi_w, 0), (0, 0, 0)))
  shifted = jnp.concatenate(
      [g_pad[:, kh - 1 - a:kh - 1 - a + h, kw - 1 - b:kw - 1 - b + w_, :]
       for a in range(kh) for b in range(kw)], axis=-1)
  x_t = jnp.transpose(x, (3, 0, 1, 2)).reshape(c_in, n * h * w_)
  dw = jnp.matmul(x_t, shifted.reshape(n * h * w_, kh * kw * c_out), precision=precision)
  return jnp.transpose(dw.reshape(c_in, kh, kw, c_out), (1, 2, 0, 3))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_fast_grad(x, w, pads, precision):
  return _conv(x, w, pads, precision)


def _fwd(x, w, pads, precision):
  return _conv(x, w, pads, precision), (x, w)


def _bwd(pads, precision, res, g):
  x, w = res

  def native(x, w, g):
    _, vjp = jax.vjp(lambda a, b: _conv(a, b, pads, precision), x, w)
    return vjp(g)

  def canonical(x, w, g):
    return _canonical_grads(x, w, g, pads, precision)

  return lax.platform_dependent(x, w, g, cpu=canonical, default=native)


_conv_fast_grad.defvjp(_fwd, _bwd)


def _is_nhwc_hwio(dimension_numbers, ndim: int) -> bool:
  if ndim != 4 or dimension_numbers is None:
    return False
  if isinstance(dimension_numbers, lax.ConvDimensionNumbers):
    dn = dimension_numbers
  elif isinstance(dimension_numbers, tuple) and all(isinstance(s, str)
                                                    for s in dimension_numbers):
    dn = lax.conv_dimension_numbers((1,) * ndim, (1,) * ndim, dimension_numbers)
  else:
    return False
  return (tuple(dn.lhs_spec), tuple(dn.rhs_spec), tuple(dn.out_spec)) == (
      tuple(_NHWC.lhs_spec), tuple(_NHWC.rhs_spec), tuple(_NHWC.out_spec))


def _ones_or_none(v) -> bool:
  return v is None or all(int(d) == 1 for d in v)


def conv_general_dilated(lhs, rhs, window_strides: Sequence[int], padding: Any,
                         lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
                         feature_group_count: int = 1, batch_group_count: int = 1,
                         precision=None, preferred_element_type=None):
  """`lax.conv_general_dilated`, with the loop-friendly backward pass for 2-D NHWC/HWIO
  stride-1 undilated ungrouped convolutions (see the module docstring)."""
  fast = (_is_nhwc_hwio(dimension_numbers, lhs.ndim) and _ones_or_none(window_strides)
          and _ones_or_none(lhs_dilation) and _ones_or_none(rhs_dilation)
          and feature_group_count == 1 and batch_group_count == 1
          and preferred_element_type is None and lhs.dtype == rhs.dtype)
  if not fast:
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count, batch_group_count=batch_group_count,
        precision=precision, preferred_element_type=preferred_element_type)
  if isinstance(padding, str):
    pads = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], (1, 1), padding)
  else:
    pads = padding
  pads = tuple((int(lo), int(hi)) for lo, hi in pads)
  return _conv_fast_grad(lhs, rhs, pads, precision)
