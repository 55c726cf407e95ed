"""Tests of the networks' dropout (vdm_jax.nets.layers.dropout / dropout_bits).

Facts checked:
* The kept fraction is 1 - rate within binomial error; kept values are scaled by 1 / (1 - rate);
  rate 0 is the identity and rate 1 gives zeros.
* Bits are uniform (each bit position has mean 1/2, uniform moments), masks from different keys
  and neighbouring elements are uncorrelated; the same key gives the same mask.
* Works with raw uint32 keys, typed threefry keys and rbg keys, under jit.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm_jax.nets.layers import dropout, dropout_bits

KEYS = {
    "raw": lambda i: jax.random.PRNGKey(i),
    "threefry": lambda i: jax.random.key(i),
    "rbg": lambda i: jax.random.key(i, impl="rbg"),
}


@pytest.mark.parametrize("kind", sorted(KEYS))
def test_keep_fraction_and_scale(kind):
  x = jnp.ones((8, 32, 32, 16), jnp.float32)
  y = np.asarray(jax.jit(lambda k: dropout(x, 0.1, k))(KEYS[kind](0)))
  n = y.size
  kept = np.mean(y > 0)
  assert abs(kept - 0.9) < 5 * np.sqrt(0.09 / n)
  np.testing.assert_allclose(y[y > 0], 1 / 0.9, rtol=1e-6)


def test_edge_rates():
  x = jnp.arange(12.0).reshape(3, 4)
  k = jax.random.PRNGKey(0)
  np.testing.assert_array_equal(np.asarray(dropout(x, 0.0, k)), np.asarray(x))
  np.testing.assert_array_equal(np.asarray(dropout(x, 1.0, k)), np.zeros((3, 4)))


def test_bits_statistics():
  n = 200_000
  b1 = np.asarray(dropout_bits(jax.random.PRNGKey(0), (n,))).astype(np.uint64)
  b2 = np.asarray(dropout_bits(jax.random.PRNGKey(1), (n,))).astype(np.uint64)
  tol = 5 / np.sqrt(n)
  for j in (0, 1, 7, 15, 16, 31):
    assert abs(np.mean((b1 >> j) & 1) - 0.5) < tol
  u = b1 / 2.0 ** 32
  assert abs(u.mean() - 0.5) < tol and abs((u ** 2).mean() - 1 / 3) < tol
  m1, m2 = b1 >= 2 ** 31, b2 >= 2 ** 31
  assert abs(np.corrcoef(m1, m2)[0, 1]) < tol
  assert abs(np.corrcoef(m1[:-1], m1[1:])[0, 1]) < tol
  np.testing.assert_array_equal(
      np.asarray(dropout_bits(jax.random.PRNGKey(0), (n,))).astype(np.uint64), b1)
