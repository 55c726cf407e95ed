"""The latent model's terms against scipy and hand computations; the pixel bound's parts."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from vdm_jax import latent, likelihood
from vdm_jax.nets.autoencoder import KLAutoencoder


def test_discretized_logistic_matches_scipy_cdf_differences_and_sums_to_one():
  rng = np.random.default_rng(0)
  V, low, high = 16, -1.0, 1.0
  width = (high - low) / V
  x = rng.integers(0, V, size=(3, 5))
  x[0, :3] = (0, V - 1, V // 2)                     # both edge bins
  loc = rng.normal(0, 0.6, size=x.shape)
  log_scale = rng.uniform(-4, 0, size=x.shape)
  got = latent.discretized_logistic_nll(jnp.asarray(x), jnp.asarray(loc, jnp.float32),
                                        jnp.asarray(log_scale, jnp.float32), vocab_size=V)
  centre = low + (x + 0.5) * width
  s = np.exp(log_scale)
  up = np.where(x == V - 1, np.inf, centre + width / 2)
  lo = np.where(x == 0, -np.inf, centre - width / 2)
  p = stats.logistic.cdf(up, loc, s) - stats.logistic.cdf(lo, loc, s)
  np.testing.assert_allclose(np.asarray(got), -np.log(p).sum(axis=1), rtol=2e-5)

  # Every value of one dimension: the probabilities sum to 1.
  all_k = jnp.arange(V)[:, None]
  nll = latent.discretized_logistic_nll(all_k, jnp.full((V, 1), 0.3), jnp.full((V, 1), -1.5),
                                        vocab_size=V)
  np.testing.assert_allclose(float(jnp.sum(jnp.exp(-nll))), 1.0, rtol=1e-5)


def test_discretized_logistic_is_exact_where_the_sigmoids_round_to_one():
  # The bin lies 40 scales above loc: both sigmoids are 1.0 in float32, the log probability is
  # log(e^-b - e^-a) ~ -b + log(1 - e^-(a - b)) to first order.
  V = 256
  x = jnp.array([[200]])
  loc, log_scale = jnp.array([[-1.0]]), jnp.array([[math.log(0.05)]])
  width = 2.0 / V
  centre = -1.0 + 200.5 * width
  a, b = (centre + width / 2 + 1.0) / 0.05, (centre - width / 2 + 1.0) / 0.05
  want = -(-b + math.log1p(-math.exp(-(a - b))))
  got = float(latent.discretized_logistic_nll(x, loc, log_scale, vocab_size=V)[0])
  assert np.isfinite(got)
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_gaussian_terms_match_scipy():
  rng = np.random.default_rng(1)
  mean, log_std = rng.normal(size=(2, 3, 4)), rng.normal(0, 0.5, size=(2, 3, 4))
  z = rng.normal(size=(2, 3, 4))
  std = np.exp(log_std)
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  np.testing.assert_allclose(
      latent.gaussian_log_prob(f32(z), f32(mean), f32(log_std)),
      stats.norm.logpdf(z, mean, std).reshape(2, -1).sum(1), rtol=1e-5)
  np.testing.assert_allclose(latent.gaussian_entropy(f32(log_std)),
                             stats.norm.entropy(mean, std).reshape(2, -1).sum(1), rtol=1e-5)
  kl = np.log(1 / std) + (std ** 2 + mean ** 2) / 2 - 0.5
  np.testing.assert_allclose(latent.kl_to_standard_normal(f32(mean), f32(log_std)),
                             kl.reshape(2, -1).sum(1), rtol=1e-5)
  # A tiny std: the KL keeps its precision (var - 1 via expm1).
  tiny = latent.kl_to_standard_normal(jnp.zeros((1, 1)), jnp.full((1, 1), 1e-4))
  np.testing.assert_allclose(float(tiny[0]), 0.5 * math.expm1(2e-4) - 1e-4, rtol=1e-3)


def test_pixel_bound_parts_against_a_hand_computation():
  """Two latent dimensions, a Gaussian latent 'model' with a known density, a decoder NLL that
  is a known function of z: each part and the scale's change of variables by hand."""
  mean = jnp.array([[0.5, -1.0]])
  log_std = jnp.log(jnp.array([[0.2, 0.5]]))
  key = jax.random.PRNGKey(3)
  s, c = 4.0, 0.7
  decoder_nll_fn = lambda z: jnp.sum(jnp.square(z - 1.0), axis=-1)
  # The latent model: u ~ N(0, c^2 I), its exact -log p(u) (a bound that is tight).
  latent_nll_fn = lambda u, k: -jnp.sum(jax.scipy.stats.norm.logpdf(u, 0.0, c), axis=-1)
  parts = latent.pixel_bound(mean, log_std, decoder_nll_fn, latent_nll_fn, key, scale=s)
  z = np.asarray(mean + jnp.exp(log_std) * jax.random.normal(jax.random.split(key)[0], (1, 2)))
  np.testing.assert_allclose(parts.decoder_nll, [np.sum((z - 1) ** 2)], rtol=1e-6)
  np.testing.assert_allclose(parts.encoder_entropy,
                             [np.sum(stats.norm.entropy(0, [0.2, 0.5]))], rtol=1e-6)
  # z = u / s ~ N(0, (c / s)^2): -log p(z) directly.
  np.testing.assert_allclose(parts.latent_nll, [-stats.norm.logpdf(z, 0, c / s).sum()],
                             rtol=1e-5)


def test_the_pixel_bound_of_an_exact_posterior_is_the_exact_nll_in_expectation():
  """A linear-Gaussian case where -log p(x) is a closed form: x | z ~ N(a z, v_x), z ~ N(0, 1),
  q(z | x) the exact posterior; then the bound equals -log p(x) in expectation over z (and,
  with the entropy in closed form, not per draw). Through pixel_bound with a scale."""
  a, v_x, n = 1.5, 0.3, 20000
  x = jnp.repeat(jnp.array([[0.8], [-2.0]]), n, axis=0)          # [2n, 1]
  v_post = 1.0 / (1.0 + a * a / v_x)
  mean, log_std = v_post * a * x / v_x, jnp.full_like(x, 0.5 * math.log(v_post))
  dec = lambda z: -jnp.sum(jax.scipy.stats.norm.logpdf(x, a * z, math.sqrt(v_x)), axis=-1)
  s = 3.0
  prior_u = lambda u, k: -jnp.sum(jax.scipy.stats.norm.logpdf(u, 0.0, s), axis=-1)
  parts = latent.pixel_bound(mean, log_std, dec, prior_u, jax.random.PRNGKey(0), scale=s)
  total = np.asarray(parts.total).reshape(2, n)
  exact = -stats.norm.logpdf([0.8, -2.0], 0, math.sqrt(a * a + v_x))
  se = total.std(axis=1) / math.sqrt(n)
  assert np.all(np.abs(total.mean(axis=1) - exact) < 4 * se), (total.mean(axis=1), exact, se)
  assert np.all(se > 0)


def test_latent_scale_gives_unit_variance_samples():
  rng = np.random.default_rng(2)
  mean = rng.normal(0.3, 2.0, size=(4000, 3, 3, 2))
  log_std = np.full(mean.shape, math.log(0.5))
  scale = latent.latent_scale(mean, log_std)
  z = mean + 0.5 * rng.normal(size=mean.shape)
  assert abs(np.std(scale * z) - 1.0) < 0.01       # 72,000 draws: s.e. of a std ~ 0.003
  with pytest.raises(ValueError, match="degenerate"):
    latent.latent_scale(np.zeros((2, 2)), np.full((2, 2), -np.inf))


def test_psnr_by_hand():
  x = np.zeros((2, 4), np.int32)
  y = np.array([[0, 0, 0, 2], [0, 0, 0, 0]])
  got = latent.psnr(x, y)
  np.testing.assert_allclose(got[0], 10 * np.log10(255 ** 2 / 1.0))
  assert got[1] == np.inf


def _tiny_model(**kw):
  ae = KLAutoencoder(latent_channels=2, ch=8, ch_mult=(1, 2), num_res_blocks=1,
                     image_shape=(8, 8, 1), **kw)
  return latent.AutoencoderModel(ae, image_shape=(8, 8, 1))


def test_autoencoder_shapes_objective_and_decode():
  model = _tiny_model(kl_weight=0.5)
  apply = jax.jit(model.apply, static_argnames=("method",))
  x = jax.random.randint(jax.random.PRNGKey(0), (3, 8, 8, 1), 0, 256)
  variables = jax.jit(model.init)({"params": jax.random.PRNGKey(1),
                                   "sample": jax.random.PRNGKey(2)}, x)
  assert model.latent_shape == (4, 4, 2)
  mean, log_std = apply(variables, x, method=model.encode)
  assert mean.shape == log_std.shape == (3, 4, 4, 2)
  key = jax.random.PRNGKey(5)
  loss, terms = apply(variables, x, key=key, method=model.objective)
  # The same z by hand: the decoder's NLL and the KL from the encoder's outputs.
  z = latent.sample_latent(key, mean, log_std)
  np.testing.assert_allclose(terms.decoder_nll, apply(variables, x, z, method=model.decoder_nll),
                             rtol=1e-5)
  np.testing.assert_allclose(terms.kl, latent.kl_to_standard_normal(mean, log_std), rtol=1e-5)
  np.testing.assert_allclose(loss, terms.decoder_nll + 0.5 * terms.kl, rtol=1e-6)
  decoded = apply(variables, z, method=model.decode)
  assert decoded.shape == x.shape and decoded.dtype == jnp.int32
  assert int(decoded.min()) >= 0 and int(decoded.max()) <= 255
  # Gradients reach both halves.
  grads = jax.jit(jax.grad(lambda p: jnp.mean(model.apply(
      {"params": p}, x, rngs={"sample": key}, method=model.objective)[0])))(variables["params"])
  for half in ("encoder", "decoder"):
    assert any(float(jnp.max(jnp.abs(g))) > 0
               for g in jax.tree_util.tree_leaves(grads["autoencoder"][half]))


def test_autoencoder_bad_input_is_refused():
  with pytest.raises(ValueError, match="downsampling factor 8"):
    KLAutoencoder(ch_mult=(1, 2, 2, 2))
  with pytest.raises(ValueError, match="discrete pixels"):
    latent.AutoencoderModel(KLAutoencoder(image_shape=(8, 8, 1)), image_shape=(8, 8, 1),
                            data=likelihood.Continuous())
  model = _tiny_model()
  x = jnp.zeros((2, 8, 8, 1), jnp.int32)
  variables = jax.eval_shape(model.init, {"params": jax.random.PRNGKey(1),
                                          "sample": jax.random.PRNGKey(2)}, x)
  with pytest.raises(ValueError, match=r"images must have shape \[B, 8, 8, 1\]"):
    model.apply(variables, jnp.zeros((2, 8, 8, 3), jnp.int32), method=model.encode)
  with pytest.raises(ValueError, match=r"takes latents of spatial size \(4, 4\)"):
    model.apply(variables, jnp.zeros((2, 8, 8, 2)), method=model.decode)
