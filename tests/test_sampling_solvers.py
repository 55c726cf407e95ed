"""The solvers against closed forms: their order of convergence, landing on point masses, and
the arguments they refuse.

Order. Data x ~ N(m, S^2) per dimension has the exact denoiser
eps_hat(z; gamma) = sigma (z - alpha m) / (alpha^2 S^2 + sigma^2), and the probability-flow ODE
keeps u = (z_t - alpha_t m) / sqrt(alpha_t^2 S^2 + sigma_t^2) fixed, so the end point from a
given z_1 is z_0* = alpha_0 m + sqrt(alpha_0^2 S^2 + sigma_0^2) u (in float64 here). With
Continuous data decoded to the mean z_0 / alpha_0, the error of each solver falls as T^-p; the
slope of log error against log T over T = 16, 24, 36 is fitted on the linear schedule with the
log-SNR spacing (equal steps in lambda) and on a learned-like schedule (a `MonotoneNet` at its
initialisation, gamma non-linear in t) with the uniform-t spacing (unequal steps in lambda, so
the multistep formulas' step ratios are not 1). S = 0.05 puts the data's transition at lambda ~
log(1 / S) = 3, inside the chain; the float32 floor (about 1e-6, measured at T = 256) stays below
the errors at T = 36.

Measured (CPU, float32; max |error| over 64 x 4 values at T = 16 / 24 / 36, fitted slope):
  linear, logsnr:        ddim 1.7e-2 / 1.2e-2 / 7.9e-3, 0.95; dpmpp_2m 2.3e-3 / 1.1e-3 / 5.0e-4,
                         1.84; dpmpp_3m 6.6e-4 / 1.5e-4 / 3.0e-5, 3.80; unipc (order 3)
                         2.5e-4 / 1.9e-5 / 1.0e-5, 3.94; unipc order 2: 2.5e-3 / 7.6e-4 /
                         2.3e-4, 2.95
  MonotoneNet, uniform:  ddim 0.95; dpmpp_2m 1.80; dpmpp_3m 3.65; unipc 4.1e-4 / 7.0e-6 /
                         6.4e-6, 5.14
UniPC's corrector raises the predictor's order by one, so its error falls faster than T^-3 at
first; it then flattens where the warm-up's first-order first step dominates (a local error
O(h^2) at t = 1, where x_hat barely moves, which in the end limits every multistep solver). The
test asserts the lower bound of each order and a loose upper one.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers_mixture import EPS_FN, LOG_PROBS, POINTS, POINTS_INT, PROBS, SHAPE, V
from vdm_jax import likelihood, point_masses, sampling, schedules

M, S = 0.5, 0.05
STEPS = (16, 24, 36)
LINEAR = schedules.FixedLinear(schedules.GAMMA_MIN, schedules.GAMMA_MAX)
MONOTONE = schedules.MonotoneNet(n_features=16)
MONOTONE_PARAMS = MONOTONE.init(jax.random.key(3), jnp.zeros((1,)))
CHAIN_SOLVERS = ("ancestral", "ddim", "dpmpp_2m", "dpmpp_3m", "unipc")


def rkey(i):
  return jax.random.key(i, impl="rbg")


def linear_gamma(t):
  return LINEAR.apply({}, t)


def monotone_gamma(t):
  return MONOTONE.apply(MONOTONE_PARAMS, t)


def gaussian_eps(z, gamma):
  g = gamma.reshape(-1, *([1] * (z.ndim - 1)))
  a2, s2 = schedules.alpha_sq(g), schedules.sigma_sq(g)
  return jnp.sqrt(s2) * (z - jnp.sqrt(a2) * M) / (a2 * S * S + s2)


def flow_end(z_1, gamma_0, gamma_1):
  """x_0* = z_0* / alpha_0 of the exact probability-flow ODE from z_1, float64."""
  a_sq = lambda g: 1.0 / (1.0 + np.exp(g))
  scale = lambda g: np.sqrt(a_sq(g) * S * S + 1.0 - a_sq(g))
  u = (np.asarray(z_1, np.float64) - np.sqrt(a_sq(gamma_1)) * M) / scale(gamma_1)
  return (np.sqrt(a_sq(gamma_0)) * M + scale(gamma_0) * u) / np.sqrt(a_sq(gamma_0))


_SOLVER_ORDERS = [("ddim", None, 0.85, 1.15), ("dpmpp_2m", None, 1.75, 2.3),
                  ("dpmpp_3m", None, 2.8, 4.5), ("unipc", 3, 2.8, 6.5)]
_SCHEDULES = [(linear_gamma, "logsnr", "linear-logsnr"),
              (monotone_gamma, "uniform_t", "monotone_net-uniform_t")]
# Every solver on both schedules; unipc of order 2 on the linear one (the other adds nothing).
_ORDER_CASES = [pytest.param(g, sp, *solver, id=f"{sid}-{solver[0]}{solver[1] or ''}")
                for g, sp, sid in _SCHEDULES for solver in _SOLVER_ORDERS] + [
    pytest.param(linear_gamma, "logsnr", "unipc", 2, 1.9, 4.0, id="linear-logsnr-unipc2")]


@pytest.mark.parametrize("gamma_fn,spacing,sampler,order,low,high", _ORDER_CASES)
def test_error_falls_at_the_solvers_order(gamma_fn, spacing, sampler, order, low, high):
  z_1 = jax.random.normal(rkey(0), (64, 4), jnp.float32)
  g0, g1 = (float(gamma_fn(jnp.full((1,), t, jnp.float32))[0]) for t in (0.0, 1.0))
  exact = flow_end(z_1, g0, g1)
  errors = []
  for T in STEPS:
    x = sampling.sample(gaussian_eps, gamma_fn, rkey(1), z_1.shape, T=T,
                        data=likelihood.Continuous(), sampler=sampler, order=order,
                        spacing=spacing, z_1=z_1)
    errors.append(np.max(np.abs(np.asarray(x, np.float64) - exact)))
  slope = -np.polyfit(np.log(STEPS), np.log(errors), 1)[0]
  assert low < slope < high, (errors, slope)
  assert errors[-1] > 3e-6           # above the float32 floor: the slope is the solver's


def test_log_snr_spacing_makes_the_chain_independent_of_the_schedules_interior():
  """With steps fixed in gamma, the chain sees only gamma's values: the cosine and the linear
  schedule (same ends) give the same end point, to the bisection's and float32's accuracy."""
  cosine = schedules.Cosine(schedules.GAMMA_MIN, schedules.GAMMA_MAX)
  z_1 = jax.random.normal(rkey(0), (64, 4), jnp.float32)
  for sampler in ("dpmpp_3m", "unipc"):
    a, b = (sampling.sample(gaussian_eps, g, rkey(1), z_1.shape, T=16,
                            data=likelihood.Continuous(), sampler=sampler, z_1=z_1)
            for g in (linear_gamma, lambda t: cosine.apply({}, t)))
    np.testing.assert_allclose(a, b, atol=2e-5)


def which_point(x):
  x = np.asarray(x).reshape(x.shape[0], 1, -1)
  eq = (x == np.asarray(POINTS_INT).reshape(1, 3, -1)).all(-1)
  return np.where(eq.any(1), eq.argmax(1), -1)


@pytest.mark.parametrize("sampler", CHAIN_SOLVERS)
def test_twenty_evaluations_land_on_the_data_points(sampler):
  n = 400
  x, info = sampling.sample(EPS_FN, linear_gamma, rkey(2), (n, *SHAPE), T=20, vocab_size=V,
                            sampler=sampler, return_info=True)
  idx = which_point(x)
  assert np.all(idx >= 0)
  np.testing.assert_array_equal(info.num_evals, 20)
  # Every point is reached, at about its probability (deterministic solvers: the ODE's
  # mass per point; 5-sigma binomial bounds).
  freq = np.bincount(idx, minlength=3) / n
  assert np.all(np.abs(freq - PROBS) < 5 * np.sqrt(PROBS * (1 - PROBS) / n)), freq


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "unipc"])
def test_guidance_and_trajectories_compose_with_multistep_solvers(sampler):
  """Class c owns image c (the null label is the mixture); guided samples hit their class and
  the trajectory's last prediction is the image the chain ends on."""
  log_probs = jnp.concatenate([jnp.where(jnp.eye(3, dtype=bool), 0.0, -jnp.inf),
                               LOG_PROBS[None]], axis=0)

  per_label = [point_masses.optimal_eps_fn(POINTS, log_probs[c]) for c in range(4)]

  def cond_eps(z, gamma_t, labels):
    outs = jnp.stack([f(z, gamma_t) for f in per_label])                # [4, B, ...]
    return jnp.take_along_axis(outs, labels[None, :, None, None, None], axis=0)[0]

  n = 30
  labels = jnp.arange(n) % 3
  eps_fn = sampling.guided_eps_fn(cond_eps, labels, 3, 2.0)
  x, traj = sampling.sample(eps_fn, linear_gamma, rkey(4), (n, *SHAPE), T=20, vocab_size=V,
                            sampler=sampler, trajectory_steps=(20, 1))
  np.testing.assert_array_equal(which_point(x), labels)
  np.testing.assert_allclose(traj.x_hat[-1], likelihood.encode(x, V), atol=1e-4)
  assert traj.t[0] == 1.0 and 0.0 < traj.t[1] < 0.05      # log-SNR spacing: t_1 near 0


BAD = [
    (dict(sampler="euler"), "Unknown sampler"),
    (dict(T=0), "T must be"),
    (dict(spacing="cosine"), "Unknown spacing"),
    (dict(sampler="ode", T=None, spacing="logsnr"), "chooses its own steps"),
    (dict(order=3), "takes no order"),
    (dict(sampler="dpmpp_2m", order=2), "takes no order"),
    (dict(sampler="unipc", order=4), r"order in \(2, 3\)"),
    (dict(sampler="dpmpp_2m", eta=0.5), "takes no eta"),
    (dict(z_1=jnp.zeros((3, *SHAPE))), "z_1 must be"),
    (dict(z_1=jnp.zeros((2, *SHAPE), jnp.int32)), "z_1 must be"),
    (dict(sampler="dpmpp_3m", known=jnp.zeros((2, *SHAPE), jnp.int32),
          known_mask=jnp.ones((), bool)), "fresh noise"),
    (dict(sampler="unipc", known=jnp.zeros((2, *SHAPE), jnp.int32),
          known_mask=jnp.ones((), bool)), "multistep solver"),
]


@pytest.mark.parametrize("kwargs,match", BAD)
def test_bad_arguments_are_refused_before_any_compute(kwargs, match):
  calls = []

  def counting_eps(z, g):
    calls.append(1)
    return EPS_FN(z, g)

  args = {"T": 4, **kwargs}
  with pytest.raises(ValueError, match=match):
    sampling.sample(counting_eps, linear_gamma, rkey(0), (2, *SHAPE), vocab_size=V, **args)
  assert not calls


def test_a_schedule_that_cannot_give_the_spacing_is_refused():
  decreasing = lambda t: 5.0 - 18.3 * t
  with pytest.raises(ValueError, match="needs an increasing schedule"):
    sampling.sample(EPS_FN, decreasing, rkey(0), (2, *SHAPE), T=4, vocab_size=V,
                    sampler="dpmpp_2m")
  jumping = lambda t: jnp.where(t < 0.5, -13.3 + 2.0 * t, 3.0 + 2.0 * t)
  with pytest.raises(ValueError, match="cannot give gamma"):
    sampling.sample(EPS_FN, jumping, rkey(0), (2, *SHAPE), T=8, vocab_size=V,
                    sampler="unipc")
  flat = lambda t: jnp.minimum(-13.3 + 36.6 * t, 5.0)
  with pytest.raises(ValueError, match="does not increase"):
    sampling.sample(EPS_FN, flat, rkey(0), (2, *SHAPE), T=8, vocab_size=V, sampler="ddim")


@functools.lru_cache(maxsize=None)
def _jit_solver(sampler):
  return jax.jit(functools.partial(sampling.sample, EPS_FN, linear_gamma, shape=(4, *SHAPE),
                                   T=6, vocab_size=V, sampler=sampler))


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "dpmpp_3m", "unipc"])
def test_multistep_solvers_are_deterministic_functions_of_z_1(sampler):
  f = _jit_solver(sampler)
  np.testing.assert_array_equal(f(rkey(5)), f(rkey(5)))
  # Keys that differ only in the per-step and decoder streams give the same images.
  z_1 = jax.random.normal(jax.random.split(rkey(5), 4)[0], (4, *SHAPE))
  other = sampling.sample(EPS_FN, linear_gamma, rkey(6), (4, *SHAPE), T=6, vocab_size=V,
                          sampler=sampler, z_1=z_1)
  np.testing.assert_array_equal(other, f(rkey(5)))
