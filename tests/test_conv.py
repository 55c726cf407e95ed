"""Tests of vdm_jax.nets.conv: the convolution with a loop-friendly backward pass.

Facts checked:
* Outputs are bitwise those of lax.conv_general_dilated; gradients (input and kernel) agree with
  JAX's own to float32 rounding, for SAME / VALID / asymmetric padding and 3x3 / 1x1 kernels, and
  in bfloat16 they have JAX's dtypes and the same error against a float32 reference.
* Cases outside the fast path (stride 2) fall through to lax.conv_general_dilated.
* Inside lax.scan, every convolution of the compiled CPU gradient is in the canonical NHWC/HWIO
  form (with lax.conv_general_dilated the backward ones are not: that is what made the scanned
  network's backward pass slow on CPU).
* VDMScoreNet and UNet give the same outputs and gradients with fast_conv_grad on and off.
"""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from vdm_jax.nets import UNet, VDMScoreNet
from vdm_jax.nets.conv import conv_general_dilated

DN = ("NHWC", "HWIO", "NHWC")


def loss(conv, pad, strides=(1, 1)):
  def f(x, w):
    y = conv(x, w, strides, pad, dimension_numbers=DN)
    return jnp.sum(jnp.sin(y.astype(jnp.float32)))
  return f


def rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("pad", ["SAME", "VALID", ((0, 2), (1, 0))])
@pytest.mark.parametrize("k", [3, 1])
def test_matches_lax_float32(pad, k):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 7, 6, 5)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((k, k, 5, 4)), jnp.float32)
  y_ref = lax.conv_general_dilated(x, w, (1, 1), pad, dimension_numbers=DN)
  y = conv_general_dilated(x, w, (1, 1), pad, dimension_numbers=DN)
  np.testing.assert_array_equal(np.asarray(y), np.asarray(y_ref))
  g_ref = jax.grad(loss(lax.conv_general_dilated, pad), (0, 1))(x, w)
  g = jax.jit(jax.grad(loss(conv_general_dilated, pad), (0, 1)))(x, w)
  for a, b in zip(g, g_ref):
    assert a.shape == b.shape and a.dtype == b.dtype
    assert rel(a, b) < 1e-5


def test_bfloat16_same_error_as_lax():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((4, 8, 8, 16)), jnp.bfloat16)
  w = jnp.asarray(0.1 * rng.standard_normal((3, 3, 16, 16)), jnp.bfloat16)
  ref = jax.grad(loss(lax.conv_general_dilated, "SAME"), (0, 1))(
      x.astype(jnp.float32), w.astype(jnp.float32))
  g_lax = jax.jit(jax.grad(loss(lax.conv_general_dilated, "SAME"), (0, 1)))(x, w)
  g = jax.jit(jax.grad(loss(conv_general_dilated, "SAME"), (0, 1)))(x, w)
  for a, b, r in zip(g, g_lax, ref):
    assert a.dtype == b.dtype == jnp.bfloat16
    assert rel(a, r) <= 1.5 * rel(b, r) + 1e-3


def test_strided_falls_through():
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.standard_normal((2, 8, 8, 3)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 3, 3, 4)), jnp.float32)
  g_ref = jax.grad(loss(lax.conv_general_dilated, "SAME", (2, 2)), (0, 1))(x, w)
  g = jax.grad(loss(conv_general_dilated, "SAME", (2, 2)), (0, 1))(x, w)
  for a, b in zip(g, g_ref):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _scanned_grad_hlo(conv):
  def f(ws, x):
    def body(h, w):
      return jnp.tanh(conv(h, w, (1, 1), "SAME", dimension_numbers=DN)) + h, None
    h, _ = lax.scan(body, x, ws)
    return jnp.sum(h ** 2)
  x = jnp.zeros((2, 8, 8, 4), jnp.float32)
  ws = jnp.zeros((3, 3, 3, 4, 4), jnp.float32)
  return jax.jit(jax.grad(f)).lower(ws, x).compile().as_text()


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="checks XLA:CPU's convolution forms")
def test_scanned_backward_convolutions_are_canonical():
  labels = re.findall(r"convolution\(.*?dim_labels=([^,]+)", _scanned_grad_hlo(conv_general_dilated))
  assert labels and all(lab == "b01f_01io->b01f" for lab in labels), labels
  native = re.findall(r"convolution\(.*?dim_labels=([^,]+)", _scanned_grad_hlo(lax.conv_general_dilated))
  assert any(lab != "b01f_01io->b01f" for lab in native)   # what the custom VJP avoids


@pytest.mark.parametrize("net_cls, kw", [
    (VDMScoreNet, dict(n_embd=8, n_layer=2, dropout=0.0)),
    # The U-Net's case compiles four times as much (~40 s): in the heavy tier.
    pytest.param(UNet, dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
                            dropout=0.0, with_fourier_features=True),
                 marks=pytest.mark.heavy)])
def test_networks_same_with_and_without(net_cls, kw):
  rng = np.random.default_rng(3)
  z = jnp.asarray(rng.standard_normal((2, 8, 8, 1)), jnp.float32)
  cond = jnp.asarray([0.2, 0.7], jnp.float32)
  fast, slow = net_cls(**kw), net_cls(**kw, fast_conv_grad=False)
  params = fast.init(jax.random.PRNGKey(0), z, cond)
  params = jax.tree_util.tree_map(lambda p: p + 0.05 * jnp.asarray(
      rng.standard_normal(p.shape), p.dtype), params)
  np.testing.assert_array_equal(np.asarray(fast.apply(params, z, cond)),
                                np.asarray(slow.apply(params, z, cond)))

  def grads(net):
    return jax.jit(jax.grad(lambda p: jnp.sum(net.apply(p, z, cond) ** 2)))(params)
  for a, b in zip(jax.tree_util.tree_leaves(grads(fast)), jax.tree_util.tree_leaves(grads(slow))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
