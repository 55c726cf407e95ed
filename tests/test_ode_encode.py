"""`ode.encode` is the inverse of the ODE sampler: encode, then decode from z_1, returns the data.

Continuous data under the exact denoiser of x ~ N(m, S^2): the flow keeps
u = (z - alpha m) / sqrt(alpha^2 S^2 + sigma^2) fixed, so z_1 itself has a closed form; discrete
data on the three-image mixture: decoding z_1 gives back the integers exactly.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers_mixture import EPS_FN, POINTS_INT, SHAPE, V
from vdm_jax import likelihood, ode, sampling, schedules

M, S = 0.3, 0.5
LINEAR = schedules.FixedLinear(schedules.GAMMA_MIN, schedules.GAMMA_MAX)


def gamma_fn(t):
  return LINEAR.apply({}, t)


def gaussian_eps(z, gamma):
  g = gamma.reshape(-1, *([1] * (z.ndim - 1)))
  a2, s2 = schedules.alpha_sq(g), schedules.sigma_sq(g)
  return jnp.sqrt(s2) * (z - jnp.sqrt(a2) * M) / (a2 * S * S + s2)


def test_encode_continuous_matches_the_closed_form_and_decodes_back():
  x = M + S * jax.random.normal(jax.random.key(0), (16, 3))
  data = likelihood.Continuous()
  z_1 = ode.encode(gaussian_eps, gamma_fn, x, data=data, rtol=1e-6, atol=1e-6)
  a_sq = lambda g: 1.0 / (1.0 + np.exp(g))
  scale = lambda g: np.sqrt(a_sq(g) * S * S + 1.0 - a_sq(g))
  g0, g1 = schedules.GAMMA_MIN, schedules.GAMMA_MAX
  u = (np.sqrt(a_sq(g0)) * (np.asarray(x, np.float64) - M)) / scale(g0)
  np.testing.assert_allclose(z_1, np.sqrt(a_sq(g1)) * M + scale(g1) * u, atol=2e-5)
  np.testing.assert_array_equal(z_1, ode.encode(gaussian_eps, gamma_fn, x, data=data,
                                                rtol=1e-6, atol=1e-6))
  back = sampling.sample(gaussian_eps, gamma_fn, jax.random.key(9), x.shape, sampler="ode",
                         data=data, z_1=z_1, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(back, x, atol=1e-4)
  # A fast solver from the same z_1 decodes it too, to its own accuracy at 50 evaluations.
  fast = sampling.sample(gaussian_eps, gamma_fn, jax.random.key(9), x.shape, T=50,
                         sampler="dpmpp_3m", data=data, z_1=z_1)
  np.testing.assert_allclose(fast, x, atol=1e-3)


def test_encode_discrete_then_decode_returns_the_images_and_is_deterministic_for_a_key():
  x = jnp.tile(POINTS_INT, (2, 1, 1, 1))
  data = likelihood.Discrete(V)
  key = jax.random.key(4)
  z_1, info = ode.encode(EPS_FN, gamma_fn, x, data=data, key=key, return_info=True)
  assert z_1.shape == x.shape and z_1.dtype == jnp.float32 and np.all(info.num_evals > 0)
  np.testing.assert_array_equal(z_1, ode.encode(EPS_FN, gamma_fn, x, data=data, key=key))
  assert not np.array_equal(z_1, ode.encode(EPS_FN, gamma_fn, x, data=data))
  back = sampling.sample(EPS_FN, gamma_fn, jax.random.key(1), x.shape, sampler="ode",
                         data=data, z_1=z_1)
  np.testing.assert_array_equal(back, x)


def test_encode_checks_the_data():
  with pytest.raises(ValueError, match=r"\[0, 16\)"):
    ode.encode(EPS_FN, gamma_fn, jnp.full((2, *SHAPE), 16, jnp.int32),
               data=likelihood.Discrete(V))
  with pytest.raises(ValueError, match=r"rtol must be a number in \(0, 1\)"):
    ode.encode(EPS_FN, gamma_fn, jnp.zeros((2, *SHAPE), jnp.int32),
               data=likelihood.Discrete(V), rtol=2.0)
