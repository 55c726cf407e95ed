"""The VDM loss against closed forms: a data set of a few points has an exact optimal denoiser.

For data uniform over K points, the negative ELBO with the optimal denoiser in continuous time is
H(x) + KL(q(z_1) || N(0, I)) + (recon - H(x | z_0)) = log K up to terms below 1e-4 nats here
(gamma in [-13.3, 12], 16 levels: the decoder is exact and the prior KL is ~5e-6 nats).
"""
import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vdm_jax import likelihood, losses, point_masses, schedules

V = 16
POINTS_INT = jnp.array([[0, 3, 7, 12], [15, 15, 0, 0], [5, 10, 5, 10], [8, 2, 14, 6]],
                       jnp.int32).reshape(4, 2, 2, 1)
ENTROPY = math.log(4)
EPS_FN = point_masses.optimal_eps_fn(likelihood.encode(POINTS_INT, V))


def _expected_loss(gamma_fn, T, *, num_batches=256, batch=1024, seed=0, term="total"):
  """Monte-Carlo mean and standard error of the per-example loss over num_batches * batch draws."""

  @jax.jit
  def batch_mean(key):
    k_data, k_loss = jax.random.split(key)
    x_int = POINTS_INT[jax.random.randint(k_data, (batch,), 0, 4)]
    loss = losses.vdm_loss(EPS_FN, gamma_fn, x_int, k_loss, vocab_size=V, T=T)
    return getattr(loss, term).mean()

  means = np.asarray(jax.lax.map(batch_mean, jax.random.split(jax.random.PRNGKey(seed),
                                                               num_batches)))
  return means.mean(), means.std(ddof=1) / math.sqrt(num_batches)


G_MIN = schedules.GAMMA_MIN
LINEAR = schedules.FixedLinear(G_MIN, 12.0)


def _linear(t):
  return LINEAR.apply({}, t)


def test_continuous_loss_equals_entropy_for_optimal_denoiser():
  mean, se = _expected_loss(_linear, 0)
  assert abs(mean - ENTROPY) < 4 * se, (mean, se, ENTROPY)
  assert se < 0.02


def test_discrete_losses_lie_above_and_decrease_with_T():
  cont, se_c = _expected_loss(_linear, 0, seed=1)
  previous, previous_se = np.inf, 0.0
  for T in (5, 20, 100):
    mean, se = _expected_loss(_linear, T, seed=2 + T)
    assert mean - cont > 4 * math.hypot(se, se_c), (T, mean, cont)
    assert previous - mean > 4 * math.hypot(se, previous_se), (T, mean, previous)
    previous, previous_se = mean, se


def test_continuous_diffusion_loss_invariant_to_schedule_interior():
  """Same endpoints, different interiors: same expected diffusion loss (paper, Eq. 16)."""
  ref, se_ref = _expected_loss(_linear, 0, seed=3, term="diffusion")
  cosine = schedules.Cosine(G_MIN, 12.0)
  net = schedules.MonotoneNet(G_MIN, 12.0)
  params = net.init(jax.random.PRNGKey(1), jnp.zeros(2))
  params = jax.tree_util.tree_map(lambda a: 5.0 * a if a.ndim == 2 else a, params)
  g = net.apply(params, jnp.linspace(0, 1, 11))
  assert np.max(np.abs(g - np.linspace(G_MIN, 12.0, 11))) > 1.0    # genuinely non-linear
  for gamma_fn in (lambda t: cosine.apply({}, t), lambda t: net.apply(params, t)):
    mean, se = _expected_loss(gamma_fn, 0, seed=4, term="diffusion")
    assert abs(mean - ref) < 4 * math.hypot(se, se_ref), (mean, ref, se, se_ref)


def test_loss_terms_are_per_example_and_shape_agnostic():
  for shape in [(6, 3), (6, 2, 2, 1), (6, 4, 4, 3)]:
    x = jax.random.randint(jax.random.PRNGKey(0), shape, 0, 256).astype(jnp.uint8)
    loss = losses.vdm_loss(lambda z, g: jnp.zeros_like(z), _linear, x, jax.random.PRNGKey(1))
    chex.assert_shape(list(loss), (6,))
    chex.assert_tree_all_finite(loss)
    # The prior term per example by hand: sum over dimensions of KL(N(alpha_1 x, sigma_1^2) ||
    # N(0, 1)), x = (2 k + 1) / 256 - 1, with sigma_1^2 = sigmoid(gamma(1)) in float64.
    s2 = 1.0 / (1.0 + math.exp(-12.0))
    xe = (2.0 * np.asarray(x, np.float64) + 1.0) / 256.0 - 1.0
    kl = 0.5 * (s2 + (1.0 - s2) * xe ** 2 - math.log(s2) - 1.0)
    np.testing.assert_allclose(loss.prior, kl.reshape(6, -1).sum(-1), rtol=2e-4, atol=1e-7)


def test_zero_denoiser_has_closed_form_expected_diffusion_loss():
  """eps_hat = 0: E ||eps||^2 = D at every t, so the diffusion term is 0.5 D (gamma_max - gamma_min)."""
  x = jnp.zeros((4096, 3), jnp.int32)
  loss = losses.vdm_loss(lambda z, g: jnp.zeros_like(z), _linear, x, jax.random.PRNGKey(0))
  expected = 0.5 * 3 * (12.0 - G_MIN)
  se = float(loss.diffusion.std() / math.sqrt(x.shape[0]))
  assert abs(float(loss.diffusion.mean()) - expected) < 4 * se


def test_antithetic_times_are_stratified():
  t = losses.sample_times(jax.random.PRNGKey(0), 8, antithetic=True)
  np.testing.assert_allclose(np.sort(np.asarray(t) % (1 / 8)), np.full(8, float(t[0]) % (1 / 8)),
                             atol=1e-6)
  s, t_d = losses.discretise_times(t, 4)
  np.testing.assert_array_equal(np.bincount(np.asarray(t_d * 4).round().astype(int)),
                                [0, 2, 2, 2, 2])
  np.testing.assert_allclose(t_d - s, 0.25)


# --- transformations ---------------------------------------------------------------------

def _smooth_eps_fn(z, gamma):
  """A well-conditioned stand-in network (the optimal one divides by sigma ~ 1e-3 near t = 0)."""
  return jnp.tanh(z) * jax.nn.sigmoid(gamma)[:, None, None, None]


def _small_problem():
  x = jax.random.randint(jax.random.PRNGKey(0), (8, 2, 2, 1), 0, V)
  return x, functools.partial(losses.vdm_loss, _smooth_eps_fn, _linear, vocab_size=V)


class TransformationsTest(chex.TestCase):
  """vdm_loss gives the same numbers eagerly, under jit and under pmap (8 CPU devices)."""

  @chex.variants(with_jit=True, without_jit=True, with_pmap=True)
  def test_vdm_loss(self):
    x, loss_fn = _small_problem()
    key = jax.random.PRNGKey(5)
    got = self.variant(loss_fn)(x, key)
    chex.assert_shape(list(got), (8,))
    chex.assert_trees_all_close(got, loss_fn(x, key), rtol=1e-4, atol=1e-4)


def test_vmap_matches_eager():
  x, loss_fn = _small_problem()
  keys = jax.random.split(jax.random.PRNGKey(5), 3)
  batched = jax.vmap(loss_fn, in_axes=(None, 0))(x, keys)
  for i in range(3):
    for a, b in zip(batched, loss_fn(x, keys[i])):
      np.testing.assert_allclose(a[i], b, rtol=1e-4, atol=1e-4)


def test_pmap_and_shard_map_match_single_device():
  assert jax.device_count() == 8, "tests/conftest.py forces 8 CPU devices"
  x, loss_fn = _small_problem()
  xs = jnp.stack([jnp.roll(x, i, axis=0) for i in range(8)])
  keys = jax.random.split(jax.random.PRNGKey(9), 8)
  reference = [loss_fn(xs[i], keys[i]).total for i in range(8)]
  # Different data on each device (the variant tests above broadcast one input).
  pmapped = jax.pmap(lambda a, k: loss_fn(a, k).total)(xs, keys)
  np.testing.assert_allclose(pmapped, np.stack(reference), rtol=1e-4, atol=1e-4)

  mesh = Mesh(np.array(jax.devices()), ("data",))
  per_shard = jax.shard_map(lambda a, k: loss_fn(a[0], k[0]).total[None], mesh=mesh,
                            in_specs=(P("data"), P("data")), out_specs=P("data"))
  np.testing.assert_allclose(jax.jit(per_shard)(xs, keys), np.stack(reference),
                             rtol=1e-4, atol=1e-4)

  # Data-parallel jit over a batch sharded on the 'data' axis: the global computation, unchanged.
  x_big = xs.reshape(64, 2, 2, 1)
  sharded = jax.device_put(x_big, NamedSharding(mesh, P("data")))
  f = jax.jit(lambda a, k: loss_fn(a, k).total)
  np.testing.assert_allclose(f(sharded, keys[0]), f(x_big, keys[0]), rtol=1e-4, atol=1e-4)


def test_gradients_finite_wrt_schedule_and_network():
  net = schedules.MonotoneNet(n_features=64)     # the default endpoints
  params = net.init(jax.random.PRNGKey(0), jnp.zeros(2))
  x = jax.random.randint(jax.random.PRNGKey(1), (16, 3, 3, 2), 0, 256)

  def objective(sched_params, w):
    loss = losses.vdm_loss(lambda z, g: w * z, lambda t: net.apply(sched_params, t), x,
                           jax.random.PRNGKey(2))
    return loss.total.mean()

  for T in (0, 10):
    grads = jax.grad(objective, argnums=(0, 1))(params, 0.5)
    for leaf in jax.tree_util.tree_leaves(grads):
      assert np.all(np.isfinite(leaf))
    assert float(jnp.abs(grads[1])) > 0


def test_input_errors_raised_at_trace_time():
  eps_fn = lambda z, g: z
  with pytest.raises(TypeError, match="integers"):
    losses.vdm_loss(eps_fn, _linear, jnp.zeros((2, 4)), jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="at least one data dimension"):
    losses.vdm_loss(eps_fn, _linear, jnp.zeros((4,), jnp.int32), jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="vocab_size must be an int >= 2"):
    losses.vdm_loss(eps_fn, _linear, jnp.zeros((2, 4), jnp.int32), jax.random.PRNGKey(0),
                    vocab_size=1)
  with pytest.raises(ValueError, match="T must be an int >= 0"):
    losses.vdm_loss(eps_fn, _linear, jnp.zeros((2, 4), jnp.int32), jax.random.PRNGKey(0), T=-1)


def test_out_of_range_values_are_an_error_when_eager_and_unchecked_under_jit():
  x_bad = POINTS_INT.at[1, 0, 0, 0].set(V).at[2, 1, 1, 0].set(-1)    # values -1 and V = 16
  key = jax.random.PRNGKey(0)
  message = r"data values must lie in \[0, 16\), found min -1 and max 16\. Quantise the data"
  for x in (x_bad, np.asarray(x_bad)):
    with pytest.raises(ValueError, match=message):
      losses.vdm_loss(EPS_FN, _linear, x, key, vocab_size=V)
    with pytest.raises(ValueError, match=message):
      losses.training_loss(EPS_FN, _linear, x, key, vocab_size=V, weighting="simple")
    with pytest.raises(ValueError, match=message):
      losses.diffusion_loss_std(EPS_FN, _linear, x, key, num_draws=2, vocab_size=V)
  # Under jit the values are tracers: nothing is checked (the documented NaN).
  traced = jax.jit(lambda x: losses.vdm_loss(EPS_FN, _linear, x, key, vocab_size=V).total)
  assert np.isnan(np.asarray(traced(x_bad))[1])
  assert np.all(np.isfinite(losses.vdm_loss(EPS_FN, _linear, POINTS_INT, key,
                                            vocab_size=V).total))
