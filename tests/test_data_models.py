"""Any data: the continuous bound against its closed form for Gaussian data, samples of that
model, the discrete grid, today's numbers for the default, and the data models' errors.

Gaussian data x ~ N(m, s^2) per dimension has the exact denoiser
eps*(z, gamma) = sigma (z - alpha m) / (alpha^2 s^2 + sigma^2), under which, per dimension,

  E[recon]     = 0.5 (1 + gamma_0 + log 2 pi)               (z_0 / alpha_0 = x + exp(gamma_0 / 2) n)
  E[prior]     = 0.5 (alpha_1^2 (m^2 + s^2) + sigma_1^2 - log sigma_1^2 - 1)
  E[diffusion] = 0.5 [log(1 + s^2 SNR_0) - log(1 + s^2 SNR_1)]

(E||eps - eps*||^2 = SNR s^2 / (1 + SNR s^2) at every gamma, integrated against dgamma / 2).
Their sum tends to the differential entropy 0.5 log(2 pi e s^2) as gamma_0 -> -inf, gamma_1 -> inf.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers_mixture import LOG_PROBS, POINTS_INT, PROBS, V
from vdm_jax import likelihood, losses, point_masses, sampling, schedules

M = np.array([0.5, -1.0], np.float32)     # per-dimension means and standard deviations
S = np.array([0.7, 1.5], np.float32)


def linear_gamma(gamma_min, gamma_max):
  return lambda t: gamma_min + (gamma_max - gamma_min) * t


def gaussian_eps_fn(m, s):
  """The exact denoiser of x ~ N(m, s^2) per dimension (m, s broadcast against z [B, ...])."""
  def eps_fn(z, gamma):
    g = gamma.reshape(gamma.shape + (1,) * (z.ndim - gamma.ndim))
    a2, sig = schedules.alpha_sq(g), schedules.sigma(g)
    return sig * (z - jnp.sqrt(a2) * m) / (a2 * jnp.square(s) + jnp.square(sig))
  return eps_fn


def closed_form_terms(m, s, gamma_0, gamma_1):
  """Expected recon, prior, diffusion (nats per example, summed over dimensions), float64."""
  m, s = np.asarray(m, np.float64), np.asarray(s, np.float64)
  a2_1, s2_1 = 1 / (1 + math.exp(gamma_1)), 1 / (1 + math.exp(-gamma_1))
  recon = 0.5 * (1 + gamma_0 + math.log(2 * math.pi)) * m.size
  prior = np.sum(0.5 * (a2_1 * (m ** 2 + s ** 2) + s2_1 - math.log(s2_1) - 1))
  diff = np.sum(0.5 * (np.log1p(s ** 2 * math.exp(-gamma_0)) - np.log1p(s ** 2 * math.exp(-gamma_1))))
  return float(recon), float(prior), float(diff)


def draw_gaussian(key, n, shape=(2,), m=M, s=S):
  return jnp.asarray(m) + jnp.asarray(s) * jax.random.normal(key, (n, *shape), jnp.float32)


@pytest.mark.parametrize("gamma_min", [-13.3, -6.0])
def test_continuous_bound_terms_equal_their_closed_forms_for_gaussian_data(gamma_min):
  gamma_max, n = 5.0, 40_000
  x = draw_gaussian(jax.random.PRNGKey(0), n)
  loss = jax.jit(lambda x, k: losses.vdm_loss(
      gaussian_eps_fn(M, S), linear_gamma(gamma_min, gamma_max), x, k,
      data=likelihood.Continuous(), antithetic=False))(x, jax.random.PRNGKey(1))
  expected = closed_form_terms(M, S, gamma_min, gamma_max)
  for term, want in zip(("recon", "prior", "diffusion"), expected):
    got = np.asarray(getattr(loss, term), np.float64)
    se = got.std(ddof=1) / math.sqrt(n)
    assert abs(got.mean() - want) < 4 * se + 1e-5, (term, got.mean(), want, se)
  # The diffusion term's estimator is informative: its standard error is small next to it.
  assert np.asarray(loss.diffusion).std() / math.sqrt(n) < 0.02 * expected[2]


def test_continuous_bound_approaches_the_differential_entropy():
  entropy = float(np.sum(0.5 * np.log(2 * math.pi * math.e * S.astype(np.float64) ** 2)))
  gaps = []
  for gamma_min, gamma_max in [(-4.0, 5.0), (-8.0, 8.0), (-13.3, 12.0)]:
    total = sum(closed_form_terms(M, S, gamma_min, gamma_max))
    x = draw_gaussian(jax.random.PRNGKey(2), 40_000)
    mc = losses.vdm_loss(gaussian_eps_fn(M, S), linear_gamma(gamma_min, gamma_max), x,
                         jax.random.PRNGKey(3), data=likelihood.Continuous()).total
    mc = np.asarray(mc, np.float64)
    assert abs(mc.mean() - total) < 4 * mc.std(ddof=1) / math.sqrt(mc.size) + 1e-4
    gaps.append(total - entropy)
  # A bound: never below the entropy, and tight in the limit.
  assert all(g > 0 for g in gaps) and gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-3


@pytest.mark.parametrize("shape", [(2,), (3, 5)])
def test_samples_of_the_exact_gaussian_model_have_its_mean_and_std(shape):
  n = 4000
  m = np.linspace(-1.0, 1.0, math.prod(shape)).reshape(shape).astype(np.float32)
  s = np.linspace(0.5, 2.0, math.prod(shape)).reshape(shape).astype(np.float32)
  samples = jax.jit(lambda k: sampling.sample(
      gaussian_eps_fn(m, s), linear_gamma(-13.3, 8.0), k, (n, *shape), T=500,
      data=likelihood.Continuous()))(jax.random.PRNGKey(4))
  assert samples.shape == (n, *shape) and samples.dtype == jnp.float32
  x = np.asarray(samples, np.float64)
  se_mean, se_std = s / math.sqrt(n), s / math.sqrt(2 * n)
  assert np.all(np.abs(x.mean(0) - m) < 4 * se_mean), (x.mean(0), m)
  assert np.all(np.abs(x.std(0, ddof=1) - s) < 4 * se_std + 0.01 * s), (x.std(0), s)


def test_continuous_decode_sample_draws_from_the_gaussian_decoder():
  gamma_0 = jnp.float32(-4.0)
  z_0 = jnp.zeros((20_000, 2), jnp.float32)
  draws = likelihood.Continuous().decode(z_0, gamma_0, key=jax.random.PRNGKey(5), mode="sample")
  np.testing.assert_allclose(np.std(np.asarray(draws)), math.exp(-2.0), rtol=0.03)
  np.testing.assert_array_equal(likelihood.Continuous().decode(z_0 + 1.0, gamma_0),
                                (z_0 + 1.0) / schedules.alpha(gamma_0))


@pytest.mark.parametrize("low,high", [(-1.0, 1.0), (0.0, 1.0), (-3.0, 5.0)])
def test_discrete_bound_of_point_masses_is_their_entropy_on_any_grid(low, high):
  """Three points of 2x2 pixels with 16 levels (helpers_mixture) under their exact denoiser: the
  expected bound is the entropy of the point probabilities wherever the grid lies (the decoder
  resolves the bins at gamma_min, the prior is N(0, I) at gamma_max = 10)."""
  data = likelihood.Discrete(V, low, high)
  eps_fn = point_masses.optimal_eps_fn(data.encode(POINTS_INT), LOG_PROBS)
  n = 8192
  idx = jax.random.choice(jax.random.PRNGKey(6), 3, (n,), p=jnp.asarray(PROBS))
  total = jax.jit(lambda x, k: losses.vdm_loss(eps_fn, linear_gamma(-13.3, 10.0), x, k,
                                               data=data).total)(POINTS_INT[idx],
                                                                 jax.random.PRNGKey(7))
  total = np.asarray(total, np.float64)
  entropy = -float(np.sum(PROBS * np.log(PROBS)))
  assert abs(total.mean() - entropy) < 4 * total.std(ddof=1) / math.sqrt(n) + 2e-3, \
      (total.mean(), entropy)


def _old_loss(eps_fn, gamma_fn, x_int, key, vocab_size):
  """The 8-bit bound as DESIGN.md writes it (bin centres 2 (k + 1/2) / V - 1, categorical
  decoder over the V centres), with the key split of `losses.training_loss`."""
  x = 2.0 * (x_int.astype(jnp.float32) + 0.5) / vocab_size - 1.0
  key_t, key_eps, key_0 = jax.random.split(key, 3)
  gamma_0, gamma_1 = gamma_fn(jnp.array([0.0, 1.0], jnp.float32))
  eps0 = jax.random.normal(key_0, x.shape, jnp.float32)
  z_0 = jnp.sqrt(jax.nn.sigmoid(-gamma_0)) * x + jnp.sqrt(jax.nn.sigmoid(gamma_0)) * eps0
  z0r = z_0 / jnp.sqrt(jax.nn.sigmoid(-gamma_0))
  centres = 2.0 * (jnp.arange(vocab_size).astype(jnp.float32) + 0.5) / vocab_size - 1.0
  logits = -0.5 * jnp.square(z0r[..., None] - centres) * jnp.exp(-gamma_0)
  logp = jax.nn.log_softmax(logits, axis=-1)
  recon = -jnp.take_along_axis(logp, x_int[..., None], -1)[..., 0].sum((1, 2, 3))
  t = losses.sample_times(key_t, x.shape[0], True)
  gamma_t, dgamma = jax.jvp(gamma_fn, (t,), (jnp.ones_like(t),))
  g = gamma_t[:, None, None, None]
  eps = jax.random.normal(key_eps, x.shape, jnp.float32)
  z_t = jnp.sqrt(jax.nn.sigmoid(-g)) * x + jnp.sqrt(jax.nn.sigmoid(g)) * eps
  diffusion = 0.5 * dgamma * jnp.square(eps - eps_fn(z_t, gamma_t)).sum((1, 2, 3))
  return recon, diffusion


def test_default_discrete_data_gives_the_8_bit_numbers_bit_for_bit():
  key = jax.random.PRNGKey(8)
  x_int = jax.random.randint(key, (6, 4, 4, 1), 0, 256)
  eps_fn = lambda z, g: 0.3 * z + 0.1 * g[:, None, None, None]
  gamma_fn = linear_gamma(-13.3, 5.0)
  ref_recon, ref_diffusion = _old_loss(eps_fn, gamma_fn, x_int, key, 256)
  for kwargs in ({}, {"vocab_size": 256}, {"data": likelihood.Discrete(256, -1.0, 1.0)}):
    got = losses.vdm_loss(eps_fn, gamma_fn, x_int, key, **kwargs)
    np.testing.assert_array_equal(got.recon, ref_recon)
    np.testing.assert_array_equal(got.diffusion, ref_diffusion)
  # Sampling: the shorthand and the explicit default are the same program.
  fns = (eps_fn, gamma_fn, jax.random.PRNGKey(9), (3, 4, 4, 1))
  np.testing.assert_array_equal(sampling.sample(*fns, T=4, vocab_size=256, decode="sample"),
                                sampling.sample(*fns, T=4, data=likelihood.Discrete(),
                                                decode="sample"))


def test_discrete_grid_encodes_bin_centres_and_decodes_back():
  data = likelihood.Discrete(10, low=0.0, high=5.0)
  k = jnp.arange(10)
  np.testing.assert_allclose(data.encode(k), 0.25 + 0.5 * np.arange(10), rtol=1e-6)
  np.testing.assert_array_equal(data.nearest(data.encode(k)), k)
  np.testing.assert_array_equal(data.nearest(jnp.array([-1.0, 0.49, 0.51, 9.0])), [0, 0, 1, 9])
  # The decoder's argmax is the nearest centre.
  z0 = jnp.linspace(-0.5, 5.5, 50)[None]
  g = jnp.float32(-2.0)
  np.testing.assert_array_equal(data.decode(z0, g),
                                jnp.argmax(data.decoder_logits(z0, g), -1))


@pytest.mark.parametrize("data,x,error,match", [
    (likelihood.Continuous(), jnp.zeros((2, 3), jnp.int32), TypeError,
     r"Continuous\(\) takes floating-point data, but x has dtype int32\. Convert it"),
    (likelihood.Continuous(), jnp.array([[0.0, jnp.nan]]), ValueError,
     r"x: Continuous\(\) needs finite data, found 1 NaN or infinite values"),
    (likelihood.Continuous(), jnp.array([[0.0, jnp.inf]]), ValueError, r"found 1 NaN or infinite"),
    (likelihood.Continuous(), jnp.zeros((3,)), ValueError, r"shape \[batch, \.\.\.\]"),
    (likelihood.Discrete(), jnp.zeros((2, 3)), TypeError,
     r"Discrete\(vocab_size=256, low=-1\.0, high=1\.0\) takes integers in \[0, 256\).*float32"
     r".*likelihood\.Continuous\(\)"),
    (likelihood.Discrete(16), jnp.array([[0, 16]]), ValueError,
     r"data values must lie in \[0, 16\), found min 0 and max 16"),
    (likelihood.Discrete(16), jnp.array([[-1, 3]]), ValueError, r"found min -1 and max 3"),
])
def test_bad_data_gets_an_error_naming_the_data_model(data, x, error, match):
  with pytest.raises(error, match=match):
    losses.vdm_loss(lambda z, g: z, linear_gamma(-5.0, 5.0), x, jax.random.PRNGKey(0),
                    data=data)


def test_bad_data_model_settings():
  with pytest.raises(ValueError, match="vocab_size must be an int >= 2"):
    likelihood.Discrete(1)
  with pytest.raises(ValueError, match="finite low < high"):
    likelihood.Discrete(16, low=1.0, high=1.0)
  with pytest.raises(ValueError, match="pass one of them"):
    losses.vdm_loss(lambda z, g: z, linear_gamma(-5.0, 5.0), jnp.zeros((2, 3), jnp.int32),
                    jax.random.PRNGKey(0), data=likelihood.Discrete(8), vocab_size=16)
  with pytest.raises(ValueError, match="Unknown data kind 'real'"):
    likelihood.make("real")
