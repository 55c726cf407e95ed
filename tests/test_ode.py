"""The probability-flow ODE against the closed-form model: data = three fixed images.

Data: three 2x2x1 images with 16 levels and probabilities (0.5, 0.3, 0.2); the denoiser is the
exact posterior mean (`point_masses.optimal_eps_fn`), so p(z_t) is the Gaussian mixture
sum_k pi_k N(alpha_t x_k, sigma_t^2 I) at every t and the ODE's density is known in closed form.
The log-density tests use gamma in [-6, 30]: at gamma(1) = 30, alpha_1 = 3e-7, so
p(z_1) = N(0, I) to ~1e-6 in log-density, and at gamma(0) = -6 the mixture is smooth enough
(sigma_0 = 0.05) for float32.

Measured (rtol = atol = 1e-5, jax 0.10.2 CPU): exact-trace log_prob within 5.3e-3 nats of the
mixture (1e-6: 3.0e-3) over 48 latents whose log-densities span [-1400, 10]; 160 network
evaluations per example on average (1e-6: 224).
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers_mixture import EPS_FN, POINTS, POINTS_INT, PROBS, SHAPE, V
from vdm_jax import evaluation, ode, sampling, schedules

D = math.prod(SHAPE)
GAMMA_0, GAMMA_1 = -6.0, 30.0


def gamma_fn(t):
  return GAMMA_0 + (GAMMA_1 - GAMMA_0) * jnp.asarray(t, jnp.float32)


def sample_gamma_fn(t):
  """The tests' sampling schedule: the library's default endpoints [-13.3, 5]."""
  return schedules.GAMMA_MIN + (schedules.GAMMA_MAX - schedules.GAMMA_MIN) * t


def mixture_log_prob(z, gamma):
  """log sum_k pi_k N(z; alpha x_k, sigma^2 I) in float64: [B] nats."""
  g = np.float64(gamma)
  a2 = 1.0 / (1.0 + np.exp(g))
  s2 = 1.0 - a2 if g < 0 else 1.0 / (1.0 + np.exp(-g))
  z = np.asarray(z, np.float64).reshape(z.shape[0], 1, -1)
  sq = np.sum((z - np.sqrt(a2) * np.asarray(POINTS, np.float64).reshape(1, 3, -1)) ** 2, -1)
  log_joint = np.log(PROBS)[None] - 0.5 * sq / s2
  top = log_joint.max(-1, keepdims=True)
  return (top[:, 0] + np.log(np.exp(log_joint - top).sum(-1))
          - 0.5 * D * np.log(2 * np.pi * s2))


def which_point(x):
  x = np.asarray(x).reshape(x.shape[0], 1, -1)
  eq = (x == np.asarray(POINTS_INT).reshape(1, 3, -1)).all(-1)
  return np.where(eq.any(1), eq.argmax(1), -1)


def latents(n, seed):
  """z_0 ~ p(z_0) (the mixture at gamma(0)) and, in the last quarter, points off the data."""
  rng = np.random.default_rng(seed)
  k = rng.choice(3, size=n, p=PROBS)
  a, s = (float(f(jnp.float32(GAMMA_0))) for f in (schedules.alpha, schedules.sigma))
  z = a * np.asarray(POINTS)[k] + s * rng.normal(size=(n, *SHAPE))
  z[3 * n // 4:] = rng.normal(size=(n - 3 * n // 4, *SHAPE)) * 0.7
  return jnp.asarray(z, jnp.float32)


# ------------------------------------------------------------------------------------------
# Sampling.


def test_ode_samples_are_data_images_with_the_data_frequencies_and_deterministic():
  n = 1000
  draw = jax.jit(lambda k: sampling.sample(EPS_FN, sample_gamma_fn, k, (n, *SHAPE),
                                           vocab_size=V, sampler="ode", rtol=1e-4, atol=1e-4,
                                           return_info=True))
  key = jax.random.key(0, impl="rbg")
  x, info = draw(key)
  idx = which_point(x)
  assert np.all(idx >= 0)
  freq = np.bincount(idx, minlength=3) / n
  bound = 4 * np.sqrt(PROBS * (1 - PROBS) / n)
  assert np.all(np.abs(freq - PROBS) < bound), (freq, PROBS, bound)
  # Deterministic: the same key gives the same images; z_1 is the only draw.
  x2, info2 = draw(key)
  np.testing.assert_array_equal(x, x2)
  np.testing.assert_array_equal(info.num_evals, info2.num_evals)
  assert info.num_evals.shape == (n,) and info.num_evals.dtype == jnp.int32
  np.testing.assert_array_equal(info.num_evals, 1 + 6 * info.num_steps)
  assert 20 < float(info.num_evals.mean()) < 400, info.num_evals.mean()


def test_flow_counts_its_network_evaluations_and_inverts_itself():
  calls = []

  def counted_eps(z, gamma):
    jax.debug.callback(lambda: calls.append(1))
    return EPS_FN(z, gamma)

  z_1 = jax.random.normal(jax.random.PRNGKey(1), (1, *SHAPE))
  z_0, info = jax.jit(lambda z: ode.flow(counted_eps, z, GAMMA_1, GAMMA_0, rtol=1e-6,
                                         atol=1e-6))(z_1)
  jax.block_until_ready(z_0)
  assert len(calls) == int(info.num_evals[0]) == 1 + 6 * int(info.num_steps[0])
  # Forward again to gamma(1): back to z_1 within the tolerance.
  back, _ = ode.flow(EPS_FN, z_0, GAMMA_0, GAMMA_1, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(back, z_1, atol=2e-3)


# ------------------------------------------------------------------------------------------
# Log-densities.


def test_exact_log_prob_equals_the_mixture_density():
  z = latents(48, seed=0)
  logp = jax.jit(lambda z: ode.log_prob(EPS_FN, gamma_fn, z, trace="exact", rtol=1e-5,
                                        atol=1e-5))(z)
  ref = mixture_log_prob(z, np.float32(GAMMA_0))
  assert logp.shape == (48,) and logp.dtype == jnp.float32
  assert ref.min() < -100 and ref.max() > 5        # on and far off the data
  np.testing.assert_allclose(logp, ref, rtol=1e-5, atol=2e-2)
  # p(z_1) is N(0, I) to 1e-6 here: the mixture at gamma(1) against the standard normal.
  z1 = jax.random.normal(jax.random.PRNGKey(2), (64, *SHAPE))
  np.testing.assert_allclose(mixture_log_prob(z1, np.float32(GAMMA_1)),
                             ode.standard_normal_log_prob(z1), atol=1e-5)


def test_hutchinson_log_prob_is_unbiased_within_its_standard_error():
  z = latents(16, seed=1)[:12]                   # on the data
  ref = mixture_log_prob(z, np.float32(GAMMA_0))
  keys = jax.random.split(jax.random.PRNGKey(3), 32)
  for probe in ("rademacher", "gaussian"):
    est = jax.jit(jax.vmap(lambda k: ode.log_prob(EPS_FN, gamma_fn, z, key=k, trace="hutchinson",
                                                  probe=probe, rtol=1e-5, atol=1e-5)))(keys)
    est = np.asarray(est, np.float64)                                   # [probes, B]
    mean, se = est.mean(0), est.std(0, ddof=1) / math.sqrt(len(keys))
    assert np.all(se > 0), se                        # the probes do vary
    # Per latent, and pooled over the 12 latents (independent probes).
    assert np.all(np.abs(mean - ref) < 4.5 * se + 1e-2), (probe, mean - ref, se)
    pooled_se = math.sqrt(np.sum(se ** 2)) / len(se)
    assert abs(np.mean(mean - ref)) < 4 * pooled_se + 1e-2, (probe, mean - ref, pooled_se)


@pytest.mark.parametrize("kwargs,match", [
    (dict(trace="full"), "Unknown trace"),
    (dict(trace="hutchinson"), "pass a PRNG key"),
    (dict(probe="uniform"), "Unknown probe"),
    (dict(rtol=0.0), r"rtol must be a number in \(0, 1\)"),
    (dict(atol=float("nan")), r"atol must be a number in \(0, 1\)"),
])
def test_log_prob_rejects(kwargs, match):
  with pytest.raises((ValueError, TypeError), match=match):
    ode.log_prob(EPS_FN, gamma_fn, jnp.zeros((2, *SHAPE)), **kwargs)


# ------------------------------------------------------------------------------------------
# The ODE bound on discrete data.


class PointMassModel:
  """The evaluation interface (eps, gamma, attributes) with the closed-form denoiser; hashable
  (a static argument of the compiled evaluation)."""
  vocab_size = V
  num_classes = 0
  T = 0

  def apply(self, variables, *args, method):
    return method(*args)

  def eps(self, z, gamma_t, labels=None):
    return EPS_FN(z, gamma_t)

  def gamma(self, t):
    return sample_gamma_fn(jnp.asarray(t, jnp.float32))


def test_ode_bound_is_at_least_the_data_entropy():
  """E[-log p_ODE(z_0) + log q(z_0 | x) - log p(x | z_0)] >= H(x): a bound on -log P(x).

  With the optimal denoiser p_ODE(z_0) is the mixture, so the bound is H(x) plus the prior's
  mismatch (gamma(1) = 5: ~2e-3 bpd) plus decoder terms that are ~0 (bins ~48 sigma_0 wide).
  """
  rng = np.random.default_rng(0)
  n, bs = 64, 32
  images = np.asarray(POINTS_INT, np.uint8)[rng.choice(3, size=n, p=PROBS)]
  batches = [{"image": images[i:i + bs], "mask": np.ones((bs,), bool)} for i in range(0, n, bs)]
  res = evaluation.evaluate(PointMassModel(), {}, batches, jax.random.PRNGKey(0), method="ode",
                            trace="exact", rtol=1e-5, atol=1e-5)
  entropy_bpd = -np.sum(PROBS * np.log(PROBS)) / (D * math.log(2))
  assert res["num_images"] == n and res["trace"] == "exact"
  np.testing.assert_allclose(res["recon_bpd"] + res["z0_nll_bpd"] + res["dequant_bpd"],
                             res["bpd"], rtol=1e-12)
  se = res["bpd_se"]
  assert 0 < se < 0.2, res
  assert res["bpd"] >= entropy_bpd - 4 * se, (res, entropy_bpd)
  assert res["bpd"] <= entropy_bpd + 4 * se + 5e-3, (res, entropy_bpd)
  assert res["recon_bpd"] < 1e-5 and res["num_evals"] > 10
  with pytest.raises(ValueError, match="takes neither"):
    evaluation.evaluate(PointMassModel(), {}, batches, jax.random.PRNGKey(0), method="ode", T=5)
  with pytest.raises(ValueError, match="Unknown method"):
    evaluation.evaluate(PointMassModel(), {}, batches, jax.random.PRNGKey(0), method="flow")
