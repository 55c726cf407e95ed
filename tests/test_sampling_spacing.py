"""Step spacings against closed forms: the cosine schedule has an exact inverse,
t(gamma) = (atan(exp(gamma / 2)) - theta_min) / (theta_max - theta_min), so the bisection's times
can be checked to 1e-6; the spacings' gammas have their own formulas; sample_model takes
spacing / order / z_1 and checks the model's schedule before the chain runs."""
import math
from typing import Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers_mixture import EPS_FN, POINTS_INT, SHAPE, V
from vdm_jax import sampling, schedules

G0, G1 = schedules.GAMMA_MIN, schedules.GAMMA_MAX
COSINE = schedules.Cosine(G0, G1)
MONOTONE = schedules.MonotoneNet(n_features=16)
MONOTONE_PARAMS = MONOTONE.init(jax.random.key(3), jnp.zeros((1,)))


def cosine_gamma(t):
  return COSINE.apply({}, t)


def cosine_inverse(gamma):
  th0, th1 = math.atan(math.exp(G0 / 2)), math.atan(math.exp(G1 / 2))
  return (np.arctan(np.exp(np.asarray(gamma, np.float64) / 2)) - th0) / (th1 - th0)


@pytest.mark.parametrize("T", [1, 7, 50])
def test_logsnr_times_invert_the_cosine_schedule_to_1e6(T):
  times = np.asarray(sampling.step_times(cosine_gamma, T, "logsnr"), np.float64)
  targets = G0 + np.arange(T + 1) / T * (G1 - G0)
  assert times[0] == 0.0 and times[-1] == 1.0
  assert np.all(np.diff(times) > 0)
  np.testing.assert_allclose(times, cosine_inverse(targets), rtol=0, atol=1e-6)


def test_karras_gammas_and_uniform_times():
  T, rho = 10, 7.0
  times = sampling.step_times(cosine_gamma, T, "karras")
  gammas = np.asarray(cosine_gamma(jnp.asarray(times)), np.float64)
  # sigma / alpha = exp(gamma / 2): its 1/rho-th power is linear in the step index.
  root = np.exp(gammas / (2 * rho))
  np.testing.assert_allclose(np.diff(root), (root[-1] - root[0]) / T, rtol=2e-4)
  np.testing.assert_allclose(root[[0, -1]], np.exp(np.array([G0, G1]) / (2 * rho)), rtol=1e-5)
  np.testing.assert_array_equal(sampling.step_times(None, 4, "uniform_t"),
                                np.float32([0, 1, 2, 3, 4]) / np.float32(4))


def test_bisection_on_a_learned_schedule_is_monotone_and_hits_its_targets():
  gamma_fn = lambda t: MONOTONE.apply(MONOTONE_PARAMS, t)
  targets = jnp.linspace(G0 + 0.01, G1 - 0.01, 200)
  t = np.asarray(sampling.invert_gamma(gamma_fn, targets), np.float64)
  assert np.all(np.diff(t) > 0)
  # The true inverse lies within the final bracket, 2^-25 of the midpoint; the slope of gamma
  # bounds the miss in gamma.
  slope = np.max(np.abs(np.asarray(jax.vmap(jax.grad(lambda s: gamma_fn(s[None])[0]))(
      jnp.asarray(t, jnp.float32)))))
  miss = np.abs(np.asarray(gamma_fn(jnp.asarray(t, jnp.float32))) - np.asarray(targets))
  assert np.max(miss) < slope * 2.0 ** -24 + 1e-5, (np.max(miss), slope)
  # Jit-safe: the same times under jit.
  np.testing.assert_array_equal(jax.jit(lambda g: sampling.invert_gamma(gamma_fn, g))(targets),
                                t.astype(np.float32))


class PointMassVDM(nn.Module):
  """What `sampling.sample_model` reads of a VDM: the closed-form denoiser of the test data."""
  image_shape: Tuple[int, ...] = SHAPE
  vocab_size: int = V
  num_classes: int = 0
  decreasing: bool = False

  def gamma(self, t):
    g = cosine_gamma(t)
    return -g if self.decreasing else g

  def eps(self, z, gamma_t, labels=None, *, train=False):
    return EPS_FN(z, gamma_t)


def test_sample_model_takes_spacing_order_and_z_1():
  model = PointMassVDM()
  key = jax.random.key(0, impl="rbg")
  z_1 = jax.random.normal(jax.random.key(1), (8, *SHAPE))
  x = sampling.sample_model(model, {}, key, 8, T=20, sampler="unipc", order=2,
                            spacing="karras", z_1=z_1)
  direct = sampling.sample(EPS_FN, cosine_gamma, key, (8, *SHAPE), T=20, vocab_size=V,
                           sampler="unipc", order=2, spacing="karras", z_1=z_1)
  np.testing.assert_array_equal(x, direct)
  eq = (np.asarray(x).reshape(8, 1, -1) == np.asarray(POINTS_INT).reshape(1, 3, -1)).all(-1)
  assert eq.any(1).all()
  with pytest.raises(ValueError, match="needs an increasing schedule"):
    sampling.sample_model(PointMassVDM(decreasing=True), {}, key, 8, T=20, sampler="dpmpp_2m")
  with pytest.raises(ValueError, match="Unknown spacing"):
    sampling.sample_model(model, {}, key, 8, T=20, spacing="quadratic")
