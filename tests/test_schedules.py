"""Schedules: endpoints, monotonicity, derived quantities, stability over gamma in [-20, 20]."""
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm_jax import schedules

T_GRID = jnp.linspace(0.0, 1.0, 1001)
G_MIN, G_MAX = schedules.GAMMA_MIN, schedules.GAMMA_MAX


def _init(name, **kw):
  module = schedules.make_schedule(name, **kw)
  params = module.init(jax.random.PRNGKey(0), jnp.zeros((2,)))
  return module, params


@pytest.mark.parametrize("name", ["fixed_linear", "learned_linear", "monotone_net", "cosine"])
def test_endpoints_and_monotone(name):
  module, params = _init(name)                      # the default endpoints
  g = np.asarray(module.apply(params, T_GRID))
  chex.assert_shape(g, T_GRID.shape)
  np.testing.assert_allclose([g[0], g[-1]], [G_MIN, G_MAX], atol=2e-5)
  assert np.all(np.diff(g) > 0)


def test_monotone_net_endpoints_exact_after_training_like_perturbation():
  """The normalised non-linear part keeps gamma(0), gamma(1) equal to the endpoint parameters."""
  module, params = _init("monotone_net", gamma_min=-10.0, gamma_max=8.0)
  leaves, treedef = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(3), len(leaves))
  params = jax.tree_util.tree_unflatten(
      treedef, [l + 3.0 * jax.random.normal(k, l.shape) for l, k in zip(leaves, keys)])
  g = np.asarray(module.apply(params, T_GRID))
  ends = params["params"]["endpoints"]
  g0 = float(ends["gamma_min"])
  g1 = g0 + float(jax.nn.softplus(ends["log_range"]))
  np.testing.assert_allclose([g[0], g[-1]], [g0, g1], rtol=1e-5, atol=1e-5)
  assert np.all(np.diff(g) > 0)
  # It is genuinely non-linear after the perturbation.
  assert np.max(np.abs(g - np.linspace(g0, g1, g.size))) > 0.1


def test_ddpm_linear_matches_discrete_ddpm():
  module, params = _init("ddpm_linear")
  betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
  cum = np.cumsum(betas)                          # -log alpha_bar to first order in beta
  n = np.array([1, 10, 500, 1000])
  gamma_ref = np.log(np.expm1(cum[n - 1]))
  g = module.apply(params, jnp.asarray((n - 1) / 999.0, jnp.float32))
  np.testing.assert_allclose(g, gamma_ref, rtol=1e-4, atol=1e-4)
  # The exact DDPM log alpha_bar = sum log(1 - beta) differs by the second-order sum of beta^2/2.
  log_alpha_bar = np.cumsum(np.log1p(-betas))[n - 1]
  second_order = 0.5 * np.cumsum(betas ** 2)[n - 1]
  err = np.abs(schedules.log_alpha_sq(g) - log_alpha_bar)
  assert np.all(err <= 1.05 * second_order + 1e-5), (err, second_order)


def test_cosine_is_cos_sin_parametrisation():
  module, params = _init("cosine", gamma_min=G_MIN, gamma_max=G_MAX)
  t = jnp.linspace(0, 1, 7)
  g = module.apply(params, t)
  th0, th1 = np.arctan(np.exp(G_MIN / 2)), np.arctan(np.exp(G_MAX / 2))
  theta = th0 + (th1 - th0) * np.asarray(t, np.float64)
  np.testing.assert_allclose(schedules.alpha(g), np.cos(theta), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(schedules.sigma(g), np.sin(theta), rtol=1e-4, atol=1e-6)


def test_derived_quantities_stable_and_exact():
  g = jnp.linspace(-20.0, 20.0, 4001)
  g64 = np.asarray(g, np.float64)
  a2, s2 = schedules.alpha_sq(g), schedules.sigma_sq(g)
  np.testing.assert_allclose(a2, 1 / (1 + np.exp(g64)), rtol=1e-5)
  np.testing.assert_allclose(s2, 1 / (1 + np.exp(-g64)), rtol=1e-5)
  np.testing.assert_allclose(schedules.snr(g), np.exp(-g64), rtol=1e-5)
  np.testing.assert_allclose(schedules.log_alpha_sq(g), -np.log1p(np.exp(g64)), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(schedules.log_sigma_sq(g), -np.log1p(np.exp(-g64)), rtol=1e-5, atol=1e-7)
  for v in (a2, s2, schedules.alpha(g), schedules.sigma(g)):
    assert np.all(np.isfinite(v)) and np.all(np.asarray(v) > 0)


def test_schedule_errors():
  with pytest.raises(ValueError, match="gamma_min .* must be < gamma_max"):
    schedules.make_schedule("fixed_linear", gamma_min=5.0, gamma_max=-1.0)
  # DDPMLinear ignores the endpoints, but a misordered pair is still a configuration error.
  with pytest.raises(ValueError, match="gamma_min .* must be < gamma_max"):
    schedules.make_schedule("ddpm_linear", gamma_min=1.0, gamma_max=0.0)
  with pytest.raises(ValueError, match="Unknown schedule 'linear'"):
    schedules.make_schedule("linear")
  with pytest.raises(ValueError, match="must be <"):
    schedules.LearnedLinear(3.0, 1.0).init(jax.random.PRNGKey(0), jnp.zeros(2))


def test_default_endpoints_are_the_papers():
  assert (schedules.GAMMA_MIN, schedules.GAMMA_MAX) == (-13.3, 5.0)
  for cls in (schedules.FixedLinear, schedules.LearnedLinear, schedules.MonotoneNet,
              schedules.Cosine):
    module = cls()
    assert (module.gamma_min, module.gamma_max) == (G_MIN, G_MAX), cls


@pytest.mark.parametrize("gamma_min,gamma_max", [
    (5.0, -13.3), (1.0, 1.0), (math.nan, 5.0), (-13.3, math.inf), (-math.inf, 5.0),
    (np.float32(2.0), np.float32(1.0))])
def test_check_endpoints_rejects(gamma_min, gamma_max):
  with pytest.raises(ValueError, match=r"^gamma_min \(.*\) must be < gamma_max \(.*\)"):
    schedules.check_endpoints(gamma_min, gamma_max)


def test_check_endpoints_accepts_ordered_and_skips_traced_values():
  schedules.check_endpoints(-13.3, 5)
  schedules.check_endpoints(np.float32(-1.0), np.float64(1.0))
  # Values known only at run time are the caller's to check.
  jax.jit(lambda a, b: schedules.check_endpoints(a, b) or a)(5.0, -13.3)


@pytest.mark.parametrize("cls", [schedules.FixedLinear, schedules.LearnedLinear,
                                 schedules.MonotoneNet, schedules.Cosine])
def test_schedules_check_their_endpoints_when_built(cls):
  with pytest.raises(ValueError, match=r"gamma_min \(5\) must be < gamma_max \(-13.3\)"):
    cls(gamma_min=5, gamma_max=-13.3)
  with pytest.raises(ValueError, match="must be <"):
    cls(gamma_min=0.0, gamma_max=math.nan)
