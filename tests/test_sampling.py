"""The reverse chain against the closed-form model: data = three fixed images.

(The probability-flow ODE sampler has its own tests in test_ode.py.)

Data: three 2x2x1 images with 16 levels and probabilities (0.5, 0.3, 0.2); the denoiser is the
exact posterior mean (`point_masses.optimal_eps_fn`), the schedule FixedLinear(-13.3, 5). Then the
chain must return exactly those images, at the right frequencies (ancestral), and the extras
(DDIM, guidance, inpainting, trajectories) have exact statements too.

Measured with 2000 samples, T = 200 (RBG key 0): ancestral frequencies (0.5065, 0.2975, 0.196)
and DDIM eta=0 (0.5175, 0.29, 0.1925) against (0.5, 0.3, 0.2); the 4-sigma binomial bounds are
(0.045, 0.041, 0.036). Every sample equals one of the three images exactly.
"""
import functools
from typing import Tuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers_mixture import EPS_FN, LOG_PROBS, POINTS, POINTS_INT, PROBS, SHAPE, V
from vdm_jax import diffusion, likelihood, losses, point_masses, sampling, schedules
from vdm_jax import model as vdm_model
from vdm_jax import nets

SCHEDULE = schedules.FixedLinear(schedules.GAMMA_MIN, schedules.GAMMA_MAX)


def rkey(i):
  """RBG keys: much cheaper to compile on CPU than threefry inside the sampling scan."""
  return jax.random.key(i, impl="rbg")


def gamma_fn(t):
  return SCHEDULE.apply({}, t)


def which_point(x, points_int=POINTS_INT):
  """Index of the data image each sample equals exactly, -1 if none: [B]."""
  x = np.asarray(x).reshape(x.shape[0], 1, -1)
  eq = (x == np.asarray(points_int).reshape(1, points_int.shape[0], -1)).all(-1)
  return np.where(eq.any(1), eq.argmax(1), -1)


def jit_sample(eps_fn=EPS_FN, **static):
  static.setdefault("vocab_size", V)
  return jax.jit(functools.partial(sampling.sample, eps_fn, gamma_fn, **static))


def test_ancestral_samples_are_data_images_with_the_data_frequencies():
  n = 2000
  x = jit_sample(shape=(n, *SHAPE), T=200)(rkey(0))
  chex.assert_shape(x, (n, *SHAPE))
  chex.assert_type(x, jnp.int32)
  idx = which_point(x)
  assert np.all(idx >= 0)
  freq = np.bincount(idx, minlength=3) / n
  bound = 4 * np.sqrt(PROBS * (1 - PROBS) / n)
  assert np.all(np.abs(freq - PROBS) < bound), (freq, PROBS, bound)


def test_ddim_eta0_deterministic_and_lands_on_data():
  n = 500
  f = jit_sample(shape=(n, *SHAPE), T=100, sampler="ddim")     # eta defaults to 0 for ddim
  x1, x2 = f(rkey(1)), f(rkey(1))
  np.testing.assert_array_equal(x1, x2)
  assert np.all(which_point(x1) >= 0)
  assert len(set(which_point(x1))) == 3
  # Explicit eta=0 is the default; any eta > 0 draws noise and changes the result.
  key = rkey(1)
  ddim = sampling.sample(EPS_FN, gamma_fn, key, (n, *SHAPE), T=100, vocab_size=V,
                         sampler="ddim", eta=0.0)
  np.testing.assert_array_equal(ddim, x1)
  with_noise = sampling.sample(EPS_FN, gamma_fn, key, (n, *SHAPE), T=100, vocab_size=V,
                               sampler="ddim", eta=0.5)
  assert not np.array_equal(with_noise, x1)


def test_ddim_eta0_depends_only_on_initial_noise():
  """The deterministic chain as a function of z_1: re-running it by hand gives the same images."""
  n, T = 64, 20
  key = rkey(3)
  x = sampling.sample(EPS_FN, gamma_fn, key, (n, *SHAPE), T=T, vocab_size=V, sampler="ddim")
  z = jax.random.normal(jax.random.split(key, 4)[0], (n, *SHAPE))
  for i in range(T, 0, -1):
    gt, gs = gamma_fn(jnp.full((n,), i / T)), gamma_fn(jnp.full((n,), (i - 1) / T))
    z = diffusion.reverse_step(None, z, EPS_FN(z, gt), gs, gt, eta=0.0)
  g0 = gamma_fn(jnp.zeros((n,)))
  manual = jnp.argmax(likelihood.decoder_logits(z, g0, V), axis=-1)
  np.testing.assert_array_equal(x, manual)


def test_ddim_eta1_is_the_ancestral_chain():
  def draw(**kw):
    return sampling.sample(EPS_FN, gamma_fn, rkey(0), (2, *SHAPE), T=4, vocab_size=V, **kw)

  np.testing.assert_array_equal(draw(eta=1.0), draw(sampler="ddim", eta=1.0))


def test_decode_sample_and_argmax_agree_with_decoder_logits():
  n = 300
  a = jit_sample(shape=(n, *SHAPE), T=50, decode="sample")(rkey(2))
  assert np.all(which_point(a) >= 0)
  # argmax decoding (nearest bin centre of z_0 / alpha_0) == argmax of the decoder logits,
  # also for a blunt decoder (gamma_0 = 2) and off-grid z_0.
  z0 = 1.5 * jax.random.normal(rkey(0), (4096,))
  for g0 in (schedules.GAMMA_MIN, 2.0):
    from_logits = jnp.argmax(likelihood.decoder_logits(z0, jnp.float32(g0), 256), -1)
    nearest = likelihood.decode(z0 / schedules.alpha(jnp.float32(g0)), 256)
    np.testing.assert_array_equal(from_logits, nearest)


# ------------------------------------------------------------------------------------------
# Classifier-free guidance: class c owns image c; the null label (3) is the mixture.

NUM_CLASSES = 3
CLASS_LOG_PROBS = jnp.concatenate([jnp.where(jnp.eye(3, dtype=bool), 0.0, -jnp.inf),
                                   LOG_PROBS[None]], axis=0)      # [num_classes + 1, K]


def cond_eps(z, gamma_t, labels):
  """Optimal eps for data = image `label` (or the mixture for the null label)."""
  g = jnp.broadcast_to(jnp.asarray(gamma_t, jnp.float32), (z.shape[0],))
  a = schedules.alpha(g).reshape(-1, 1, 1, 1, 1)
  sq = jnp.sum(jnp.square(z[:, None] - a * POINTS[None]), axis=(2, 3, 4))        # [B, K]
  w = jax.nn.softmax(CLASS_LOG_PROBS[labels] - 0.5 * sq / schedules.sigma_sq(g)[:, None], -1)
  x_mean = jnp.tensordot(w, POINTS, axes=1)
  ge = diffusion.expand_to(g, z)
  return (z - schedules.alpha(ge) * x_mean) / schedules.sigma(ge)


def test_guidance_weight_zero_is_the_conditional_model_and_w_positive_hits_the_class():
  n, T = 90, 100
  labels = jnp.arange(n) % 3
  key = rkey(4)
  cond = sampling.sample(lambda z, g: cond_eps(z, g, labels), gamma_fn, key, (n, *SHAPE), T=T,
                         vocab_size=V)
  np.testing.assert_array_equal(which_point(cond), labels)
  w0 = sampling.sample(sampling.guided_eps_fn(cond_eps, labels, NUM_CLASSES, 0.0), gamma_fn,
                       key, (n, *SHAPE), T=T, vocab_size=V)
  np.testing.assert_array_equal(w0, cond)
  # A traced weight evaluates both branches; at w = 0 the arithmetic is exact here too.
  traced = jax.jit(lambda w, k: sampling.sample(
      sampling.guided_eps_fn(cond_eps, labels, NUM_CLASSES, w), gamma_fn, k, (n, *SHAPE), T=T,
      vocab_size=V))
  np.testing.assert_array_equal(traced(jnp.float32(0.0), key), cond)
  for w in (1.0, 4.0):
    guided = traced(jnp.float32(w), key)
    np.testing.assert_array_equal(which_point(guided), labels)
  with pytest.raises(ValueError, match=">= 0"):
    sampling.guided_eps_fn(cond_eps, labels, NUM_CLASSES, -1.0)


def test_guided_eps_fn_formula():
  z = jax.random.normal(rkey(0), (6, *SHAPE))
  g = jnp.full((6,), 0.5)
  labels = jnp.array([0, 1, 2, 0, 1, 2])
  w = 2.5
  expected = (1 + w) * cond_eps(z, g, labels) - w * cond_eps(z, g, jnp.full((6,), 3))
  np.testing.assert_allclose(sampling.guided_eps_fn(cond_eps, labels, 3, w)(z, g), expected,
                             rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------
# Inpainting. The known top row identifies the image, and it separates the images more than the
# unknown bottom row does. (Replacement conditioning is an approximation of p(x_unknown | x_known):
# with only the top-left pixel of the images above known, about a quarter of the unknown rows
# commit to another image at high noise before the known pixel is informative.)

INPAINT_INT = jnp.array([[0, 0, 8, 8], [15, 15, 6, 10], [0, 15, 10, 6]],
                        jnp.int32).reshape(3, *SHAPE)


@pytest.mark.parametrize("sampler", ["ancestral", "ddim"])
def test_inpainting_keeps_known_pixels_and_completes_consistently(sampler):
  n = 300
  eps_fn = point_masses.optimal_eps_fn(likelihood.encode(INPAINT_INT, V), LOG_PROBS)
  target = np.arange(n) % 3
  known = INPAINT_INT[target]
  mask = jnp.zeros((1, *SHAPE), bool).at[0, 0, :, 0].set(True)    # top row known
  # Unknown pixels of `known` are garbage: only the known region may be used.
  known = jnp.where(mask, known, 3)
  x = sampling.sample(eps_fn, gamma_fn, rkey(5), (n, *SHAPE), T=100, vocab_size=V,
                      sampler=sampler, known=known, known_mask=mask)
  np.testing.assert_array_equal(np.asarray(x)[:, 0], np.asarray(known)[:, 0])
  np.testing.assert_array_equal(which_point(x, INPAINT_INT), target)


def test_inpainting_everything_known_returns_known():
  known = jnp.array(np.random.default_rng(0).integers(0, V, (5, *SHAPE)), jnp.int32)
  x = sampling.sample(EPS_FN, gamma_fn, rkey(0), known.shape, T=3, vocab_size=V,
                      known=known, known_mask=jnp.ones((), bool))
  np.testing.assert_array_equal(x, known)


# ------------------------------------------------------------------------------------------
# Trajectories.


def test_trajectory_shapes_and_final_prediction():
  n, T = 16, 100
  key = rkey(6)
  plain = sampling.sample(EPS_FN, gamma_fn, key, (n, *SHAPE), T=T, vocab_size=V)
  x, traj = sampling.sample(EPS_FN, gamma_fn, key, (n, *SHAPE), T=T, vocab_size=V,
                            trajectory_steps=5)
  np.testing.assert_array_equal(x, plain)           # recording does not change the chain
  assert isinstance(traj, sampling.Trajectory)
  np.testing.assert_allclose(traj.t, [1.0, 0.75, 0.5, 0.26, 0.01], rtol=1e-6)
  chex.assert_shape([traj.z, traj.x_hat], (5, n, *SHAPE))
  # At t = 1/T the prediction is the (encoded) image the chain ends on.
  np.testing.assert_allclose(traj.x_hat[-1], likelihood.encode(x, V), atol=1e-4)
  # At t = 1, z is the initial noise N(0, I) and x_hat the exact posterior mean E[x | z_1].
  z1 = jax.random.normal(jax.random.split(key, 4)[0], (n, *SHAPE))
  np.testing.assert_array_equal(traj.z[0], z1)
  post = point_masses.posterior(POINTS, LOG_PROBS, z1, gamma_fn(jnp.float32(1.0)))
  np.testing.assert_allclose(traj.x_hat[0], jnp.tensordot(post, POINTS, axes=1), atol=1e-5)
  # Explicit step indices, any order: recorded in chain order, same values.
  x2, traj2 = sampling.sample(EPS_FN, gamma_fn, key, (n, *SHAPE), T=T, vocab_size=V,
                              trajectory_steps=(1, 100, 50))
  np.testing.assert_array_equal(x2, plain)
  np.testing.assert_allclose(traj2.t, [1.0, 0.5, 0.01], rtol=1e-6)
  np.testing.assert_array_equal(traj2.z[np.array([0, 2])], traj.z[np.array([0, 4])])
  np.testing.assert_array_equal(traj2.x_hat[1], traj.x_hat[2])


# ------------------------------------------------------------------------------------------
# Pinned outputs and transformations.


def smooth_eps(z, gamma_t):
  """A smooth stand-in network: its samples spread over the 16 levels, unlike the optimal one's."""
  return 0.7 * jnp.tanh(z) * jax.nn.sigmoid(gamma_t)[:, None, None, None]


def smooth_cond_eps(z, gamma_t, labels):
  g = jnp.broadcast_to(jnp.asarray(gamma_t, jnp.float32), (z.shape[0],))
  shift = (labels.astype(jnp.float32) - 1.0).reshape(-1, 1, 1, 1)
  return smooth_eps(z + 0.3 * shift, g)


class ClassVDMInterface(nn.Module):
  """What `sampling.sample_model` reads of a class-conditional VDM, on this file's data and
  schedule; subclasses give eps."""
  image_shape: Tuple[int, ...] = SHAPE
  vocab_size: int = V
  num_classes: int = NUM_CLASSES

  def gamma(self, t):
    return gamma_fn(t)


class SmoothClassVDM(ClassVDMInterface):
  """A class-conditional VDM around `smooth_cond_eps`."""

  def eps(self, z, gamma_t, labels=None, *, train=False):
    return smooth_cond_eps(z, gamma_t, labels)


def test_samples_pinned_for_fixed_keys():
  """The chain's arithmetic and key use, pinned: integer images exactly, latents to 1e-6.

  (Latents get a relative tolerance because XLA versions may round fused float32 ops differently.)
  """
  shape = (4, *SHAPE)
  x, traj = sampling.sample(smooth_eps, gamma_fn, rkey(11), shape, T=6, vocab_size=V,
                            trajectory_steps=2)
  np.testing.assert_array_equal(
      np.asarray(x).reshape(4, -1),
      [[15, 15, 15, 15], [15, 15, 0, 15], [0, 0, 12, 0], [15, 0, 15, 15]])
  np.testing.assert_array_equal(traj.t, np.float32([1.0, 1.0 / 6.0]))
  np.testing.assert_allclose(traj.z[1, 0].ravel(),
                             [2.452280044555664, 9.282683372497559, 7.2675299644470215,
                              21.8809757232666], rtol=1e-6)
  ddim = sampling.sample(smooth_eps, gamma_fn, rkey(12), shape, T=6, vocab_size=V,
                         sampler="ddim", eta=0.5, decode="sample")
  np.testing.assert_array_equal(
      np.asarray(ddim).reshape(4, -1),
      [[15, 15, 15, 0], [8, 0, 15, 0], [0, 12, 0, 13], [0, 1, 15, 15]])
  mask = jnp.zeros((1, *SHAPE), bool).at[0, 0].set(True)
  guided = sampling.sample_model(SmoothClassVDM(), {}, rkey(13), 4, T=6,
                                 labels=jnp.array([0, 1, 2, 0]), guidance_weight=1.5,
                                 known=jnp.full(shape, 5, jnp.int32), known_mask=mask)
  np.testing.assert_array_equal(
      np.asarray(guided).reshape(4, -1),
      [[5, 5, 15, 15], [5, 5, 0, 15], [5, 5, 9, 0], [5, 5, 15, 15]])
  ddim0 = sampling.sample(smooth_eps, gamma_fn, rkey(14), shape, T=6, vocab_size=V,
                          sampler="ddim")
  np.testing.assert_array_equal(
      np.asarray(ddim0).reshape(4, -1),
      [[15, 14, 15, 2], [15, 0, 15, 15], [15, 11, 0, 15], [15, 0, 13, 15]])
  # Both wrappers around a noisy DDIM step.
  mask = jnp.zeros((1, *SHAPE), bool).at[0, 1].set(True)
  x, traj = sampling.sample(smooth_eps, gamma_fn, rkey(15), shape, T=6, vocab_size=V,
                            sampler="ddim", eta=0.3, known=jnp.full(shape, 9, jnp.int32),
                            known_mask=mask, trajectory_steps=(6, 3))
  np.testing.assert_array_equal(
      np.asarray(x).reshape(4, -1),
      [[13, 15, 9, 9], [10, 0, 9, 9], [0, 0, 9, 9], [15, 0, 9, 9]])
  np.testing.assert_allclose(traj.z[1, 0].ravel(),
                             [0.6306066513061523, 3.520242214202881, 0.09479354321956635,
                              0.15759918093681335], rtol=1e-6)


# ------------------------------------------------------------------------------------------
# The sampler protocol.


def test_chain_is_its_reverse_step_in_a_scan():
  """`run_chain` over `chain_step` is the loop of the sampler's step, keys fold_in(key, i)."""
  n, T = 8, 5
  step = sampling.ddim_step(0.5)
  key_steps = jax.random.fold_in(rkey(16), 3)
  z_1 = jax.random.normal(rkey(17), (n, *SHAPE))
  g1 = gamma_fn(jnp.ones((n,)))
  z_0, g0, state = sampling.run_chain(smooth_eps, gamma_fn, sampling.chain_step(step), key_steps,
                                      z_1, g1, T)
  assert state == ()
  z = z_1
  for i in range(T, 0, -1):
    gt, gs = gamma_fn(jnp.full((n,), i / T)), gamma_fn(jnp.full((n,), (i - 1) / T))
    z = step(jax.random.fold_in(key_steps, i), z, smooth_eps(z, gt), gs, gt)
  np.testing.assert_allclose(z_0, z, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(g0, gamma_fn(jnp.zeros((n,))))


def test_a_registered_sampler_is_one_step_function():
  """A sampler that jumps to the predicted data: z_s = alpha_s x_hat (DDIM without its noise
  term), registered once, then usable by sample, sample_model and the config checks."""
  def x_hat_step(eta):
    del eta

    def step(key, z_t, eps_hat, gamma_s, gamma_t):
      gs = diffusion.expand_to(gamma_s, z_t)
      return schedules.alpha(gs) * diffusion.predict_x(z_t, eps_hat, gamma_t)
    return step

  sampling.SAMPLERS["x_hat"] = sampling.Sampler(make_step=x_hat_step, default_eta=0.0,
                                                eta_range=(0.0, 0.0))
  try:
    x = sampling.sample(EPS_FN, gamma_fn, rkey(18), (200, *SHAPE), T=20, vocab_size=V,
                        sampler="x_hat", trajectory_steps=2)[0]
    assert np.all(which_point(x) >= 0)          # on the data (it commits early: one image)
    assert sampling.resolve_eta("x_hat", None) == 0.0
    with pytest.raises(ValueError, match="sampler='x_hat' always uses eta=0"):
      sampling.sample_model(PointMassClassVDM(), {}, rkey(0), 2, T=4, sampler="x_hat", eta=0.5)
  finally:
    del sampling.SAMPLERS["x_hat"]


class SampleTransformationsTest(chex.TestCase):
  """`sample` gives the same chain eagerly, under jit and under pmap (8 CPU devices)."""

  @chex.variants(with_jit=True, without_jit=True, with_pmap=True)
  def test_sample(self):
    def draw(key):
      return sampling.sample(smooth_eps, gamma_fn, key, (3, *SHAPE), T=4, vocab_size=V,
                             sampler="ddim", eta=0.5, trajectory_steps=2)

    key = rkey(21)
    images, traj = self.variant(draw)(key)
    expected_images, expected_traj = draw(key)
    chex.assert_shape(images, (3, *SHAPE))
    chex.assert_trees_all_equal(images, expected_images)
    chex.assert_trees_all_close(traj, expected_traj, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------
# Model-level sampling.


class PointMassClassVDM(ClassVDMInterface):
  """A class-conditional VDM with the closed-form denoiser above (and its loss)."""

  def eps(self, z, gamma_t, labels=None, *, train=False):
    if labels is None:
      labels = jnp.full((z.shape[0],), self.num_classes, jnp.int32)
    return cond_eps(z, gamma_t, labels)

  def __call__(self, images, labels=None, *, train=False):
    return losses.vdm_loss(lambda z, g: self.eps(z, g, labels), self.gamma, images,
                           self.make_rng("sample"), vocab_size=self.vocab_size)


def test_sample_model_closed_form_conditional_unconditional_guided():
  model = PointMassClassVDM()
  n, T = 60, 100
  key = rkey(8)
  labels = jnp.arange(n) % 3
  x = sampling.sample_model(model, {}, key, n, T=T, labels=labels)
  chex.assert_shape(x, (n, *SHAPE))
  chex.assert_type(x, jnp.int32)
  np.testing.assert_array_equal(which_point(x), labels)
  direct = sampling.sample(lambda z, g: cond_eps(z, g, labels), gamma_fn, key, (n, *SHAPE), T=T,
                           vocab_size=V)
  np.testing.assert_array_equal(x, direct)
  guided = sampling.sample_model(model, {}, key, n, T=T, labels=labels, guidance_weight=2.0)
  np.testing.assert_array_equal(which_point(guided), labels)
  uncond = sampling.sample_model(model, {}, key, 600, T=T)       # null label: the mixture
  idx = which_point(uncond)
  assert np.all(idx >= 0) and len(set(idx)) == 3
  with pytest.raises(ValueError, match="needs labels"):
    sampling.sample_model(model, {}, key, n, T=T, guidance_weight=1.0)
  with pytest.raises(ValueError, match="labels must be"):
    sampling.sample_model(model, {}, key, n, T=T, labels=labels[:3])


# The checks themselves are tested in test_sampling_args.py; these show both entry points apply
# them.
@pytest.mark.parametrize("kwargs,error,match", [
    (dict(T=0), ValueError, "T must be"),
    (dict(sampler="euler"), ValueError, "Unknown sampler"),
    (dict(eta=0.5), ValueError, "ancestral"),
    (dict(sampler="ddim", eta=1.5), ValueError, r"eta in \[0, 1\]"),
    (dict(decode="mean"), ValueError, "Unknown decode"),
    (dict(trajectory_steps=(0,)), ValueError, "trajectory_steps"),
    (dict(known=jnp.zeros((2, *SHAPE), jnp.int32)), ValueError, "both"),
    (dict(known=jnp.zeros((2, *SHAPE), jnp.int32), known_mask=jnp.ones((3,), bool)),
     ValueError, "does not broadcast"),
    (dict(rtol=1e-3), ValueError, "takes none"),
    (dict(sampler="ode"), ValueError, "pass T=None"),
    (dict(T=None), ValueError, "T must be"),
    (dict(T=None, sampler="ode", eta=0.0), ValueError, "takes no eta"),
    (dict(T=None, sampler="ode", rtol=2.0), ValueError, r"rtol must be a number in \(0, 1\)"),
    (dict(T=None, sampler="ode", trajectory_steps=2), ValueError, "records none"),
    (dict(T=None, sampler="ode", known=jnp.zeros((2, *SHAPE), jnp.int32),
          known_mask=jnp.ones((), bool)), ValueError, "does not support it"),
])
def test_sample_and_sample_model_raise_the_same_errors(kwargs, error, match):
  args = {"T": 4, **kwargs}
  with pytest.raises(error, match=match):
    sampling.sample(EPS_FN, gamma_fn, rkey(0), (2, *SHAPE), vocab_size=V, **args)
  with pytest.raises(error, match=match):
    sampling.sample_model(PointMassClassVDM(), {}, rkey(0), 2, **args)


@pytest.mark.parametrize("eps_fn,returned", [
    (lambda z, g: z.reshape(z.shape[0], -1), r"float32 of shape \(3, 4\)"),
    (lambda z, g: z[:1], r"float32 of shape \(1, 2, 2, 1\)"),
    (lambda z, g: jnp.round(z).astype(jnp.int32), r"int32 of shape \(3, 2, 2, 1\)"),
    (lambda z, g: (z, g), "a tuple"),
])
def test_eps_fn_output_of_the_wrong_shape_or_dtype_is_named(eps_fn, returned):
  match = (r"eps_fn\(z, gamma_t\) must return eps_hat of the shape of z, \[B, \.\.\.\] = "
           r"\(3, 2, 2, 1\), in floating point; for z float32 \(3, 2, 2, 1\) and gamma_t "
           r"float32 \(3,\) it returned " + returned)
  with pytest.raises(ValueError, match=match):
    sampling.sample(eps_fn, gamma_fn, rkey(0), (3, *SHAPE), T=4, vocab_size=V)
  with pytest.raises(ValueError, match=match):
    jit_sample(eps_fn, shape=(3, *SHAPE), T=4)(rkey(0))


def test_gamma_fn_output_that_does_not_broadcast_to_the_batch_is_named():
  match = (r"gamma_fn must map t \[B\] = \(3,\) to gamma of a shape that broadcasts to \[B\], "
           r"e\.g\. \(\) or \(3,\); it returned float32 of shape \(3, 1\)\. Make gamma_fn "
           "elementwise in t")
  with pytest.raises(ValueError, match=match):
    sampling.sample(EPS_FN, lambda t: gamma_fn(t)[:, None], rkey(0), (3, *SHAPE), T=4,
                    vocab_size=V)
  with pytest.raises(ValueError, match=r"it returned float32 of shape \(2,\)"):
    sampling.sample(EPS_FN, lambda t: gamma_fn(t)[:2], rkey(0), (3, *SHAPE), T=4, vocab_size=V)
  # A scalar gamma (one time per call) broadcasts to [B] and samples as the [B] schedule does.
  scalar = sampling.sample(EPS_FN, lambda t: gamma_fn(t[0]), rkey(0), (3, *SHAPE), T=4,
                           vocab_size=V)
  per_example = sampling.sample(EPS_FN, gamma_fn, rkey(0), (3, *SHAPE), T=4, vocab_size=V)
  np.testing.assert_array_equal(scalar, per_example)


def test_sample_model_tiny_vdm_compiles_once():
  net = nets.UNet(ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), dropout=0.0)
  model = vdm_model.VDM(network=net, image_shape=(4, 4, 1), vocab_size=256)
  variables = jax.jit(lambda k: vdm_model.init_variables(model, k))(rkey(0))
  traces = []
  entry = sampling.entry
  real_draw = entry._draw

  def counting_draw(eps_fn, gamma_fn, key, args, *rest):   # runs only when the sampler traces
    traces.append(args.T)
    return real_draw(eps_fn, gamma_fn, key, args, *rest)

  entry._draw = counting_draw
  try:
    kw = dict(T=8, sampler="ddim", trajectory_steps=2)
    x, traj = sampling.sample_model(model, variables, rkey(1), 3, **kw)
    size = entry._sample_model_jit._cache_size()
    x2, _ = sampling.sample_model(model, variables, rkey(2), 3, **kw)
    # A fresh but equal model and new parameter values reuse the compiled chain too.
    same = vdm_model.VDM(network=net, image_shape=(4, 4, 1), vocab_size=256)
    variables2 = jax.tree_util.tree_map(lambda a: a + 0.01, variables)
    sampling.sample_model(same, variables2, rkey(3), 3, **kw)
  finally:
    entry._draw = real_draw
  assert traces == [8]
  assert entry._sample_model_jit._cache_size() == size
  chex.assert_shape(x, (3, 4, 4, 1))
  chex.assert_type(x, jnp.int32)
  assert np.all((np.asarray(x) >= 0) & (np.asarray(x) < 256))
  chex.assert_shape(traj.z, (2, 3, 4, 4, 1))
  chex.assert_tree_all_finite(traj.x_hat)
  assert not np.array_equal(x, x2)
  with pytest.raises(ValueError, match="unconditional"):
    sampling.sample_model(model, variables, rkey(1), 3, T=8,
                          labels=jnp.zeros((3,), jnp.int32))
