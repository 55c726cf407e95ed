"""The solver protocol: ancestral and DDIM as `Solver`s are bit for bit the one-step chain.

`reference_sample` below is the one-step chain written out directly (the form the sampler had
before it carried a solver state): a `lax.scan` over i = T..1 with s = (i - 1) / T computed in
the loop, `diffusion.reverse_step` with key fold_in(key_steps, i), the replacement draws of
inpainting at fold_in(key_known, j) and the keys split 4 ways (z_1, steps, inpainting,
decoder). The library's chain must give exactly its samples and trajectories, with
`np.testing.assert_array_equal`, for every one-step setting; the one exception is noted where
it is made (latents of inpainting under an outer jit, to 1 ULP).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers_mixture import EPS_FN, SHAPE, V
from vdm_jax import diffusion, likelihood, sampling, schedules

LINEAR = schedules.FixedLinear(schedules.GAMMA_MIN, schedules.GAMMA_MAX)
COSINE = schedules.Cosine(schedules.GAMMA_MIN, schedules.GAMMA_MAX)


def rkey(i):
  return jax.random.key(i, impl="rbg")


def linear_gamma(t):
  return LINEAR.apply({}, t)


def cosine_gamma(t):
  return COSINE.apply({}, t)


def smooth_eps(z, gamma_t):
  return 0.7 * jnp.tanh(z) * jax.nn.sigmoid(gamma_t)[:, None, None, None]


def reference_sample(eps_fn, gamma_fn, key, shape, *, T, data, eta, decode=None, known=None,
                     known_mask=None, record=()):
  """The one-step chain, written out: (samples, recorded z, recorded x_hat)."""
  batch = shape[0]
  key_init, key_steps, key_known, key_decode = jax.random.split(key, 4)
  gamma_1 = jnp.asarray(gamma_fn(jnp.ones((batch,), jnp.float32)), jnp.float32)
  z = jax.random.normal(key_init, shape, jnp.float32)
  x_known = None if known is None else data.encode(known)
  known_mask = None if known is None else jnp.broadcast_to(known_mask, shape)

  def replace(j, z, gamma):
    if known is None:
      return z
    z_known, _ = diffusion.sample_marginal(jax.random.fold_in(key_known, j), x_known, gamma)
    return jnp.where(known_mask, z_known, z)

  # Recorded steps go to their slot of two buffers, the others to a spare last slot.
  slot_of = np.full((T + 1,), len(record), np.int32)
  slot_of[list(record)] = np.arange(len(record), dtype=np.int32)
  slot_of = jnp.asarray(slot_of)
  # (No buffers at all without recording: the program is then the plain chain.)
  buffers = (jnp.zeros((len(record) + 1, *shape), jnp.float32),) * 2 if record else ()

  def body(carry, i):
    z_t, gamma_t, bufs = carry
    s = (i - 1).astype(jnp.float32) / T
    gamma_s = jnp.asarray(gamma_fn(jnp.full((batch,), s, jnp.float32)), jnp.float32)
    eps_hat = jnp.asarray(eps_fn(z_t, gamma_t), jnp.float32)
    step_key = None if eta == 0.0 else jax.random.fold_in(key_steps, i)
    z_s = replace(i - 1, diffusion.reverse_step(step_key, z_t, eps_hat, gamma_s, gamma_t, eta),
                  gamma_s)
    if record:
      x_hat = diffusion.predict_x(z_t, eps_hat, gamma_t)
      bufs = (jax.lax.dynamic_update_index_in_dim(bufs[0], z_t, slot_of[i], 0),
              jax.lax.dynamic_update_index_in_dim(bufs[1], x_hat, slot_of[i], 0))
    return (z_s, gamma_s, bufs), None

  (z_0, gamma_0, bufs), _ = jax.lax.scan(
      body, (replace(T, z, gamma_1), gamma_1, buffers), jnp.arange(T, 0, -1, dtype=jnp.int32))
  samples = data.decode(z_0, gamma_0, key=key_decode, mode=data.check_decode(decode))
  if known is not None:
    samples = jnp.where(known_mask, known, samples)
  if not record:
    return samples, None, None
  return samples, bufs[0][:len(record)], bufs[1][:len(record)]


MASK = jnp.zeros((1, *SHAPE), bool).at[0, 0].set(True)
CASES = [
    dict(sampler="ancestral", eta=1.0),
    dict(sampler="ddim", eta=0.0),
    dict(sampler="ddim", eta=0.5, decode="sample"),
    dict(sampler="ddim", eta=0.3, inpaint=True, record=(6, 3)),
    dict(sampler="ancestral", eta=1.0, inpaint=True, record=(6, 5, 1)),
    dict(sampler="ddim", eta=0.0, schedule=cosine_gamma, data=likelihood.Continuous()),
    dict(sampler="ancestral", eta=1.0, schedule=cosine_gamma, eps_fn=EPS_FN, T=11),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()
                                                              if k in ("sampler", "eta")))
@pytest.mark.parametrize("jit", [False, True])
def test_one_step_solvers_are_bit_identical_to_the_one_step_chain(case, jit):
  T = case.get("T", 6)
  eps_fn = case.get("eps_fn", smooth_eps)
  gamma_fn = case.get("schedule", linear_gamma)
  data = case.get("data", likelihood.Discrete(V))
  shape = (5, *SHAPE)
  record = case.get("record", ())
  known = None
  if case.get("inpaint"):
    known = jnp.full(shape, 9, jnp.int32)
  kw = dict(known=known, known_mask=None if known is None else MASK)
  key = rkey(7)
  expected, z_rec, x_rec = reference_sample(eps_fn, gamma_fn, key, shape, T=T, data=data,
                                            eta=case["eta"], decode=case.get("decode"),
                                            record=record, **kw)
  eta = None if case["sampler"] == "ancestral" else case["eta"]
  draw = functools.partial(sampling.sample, eps_fn, gamma_fn, shape=shape, T=T, data=data,
                           sampler=case["sampler"], eta=eta, decode=case.get("decode"),
                           trajectory_steps=record, **kw)
  out = (jax.jit(draw) if jit else draw)(key)
  if record:
    out, traj = out
    if jit and known is not None:
      # Under one jit of the whole program XLA fuses the replacement draw alpha x + sigma eps
      # into its neighbours, and two differently written programs may round it 1 ULP apart.
      np.testing.assert_allclose(traj.z, z_rec, rtol=2.5e-7, atol=0)
      np.testing.assert_allclose(traj.x_hat, x_rec, rtol=2.5e-7, atol=1e-7)
    else:
      np.testing.assert_array_equal(traj.z, z_rec)
      np.testing.assert_array_equal(traj.x_hat, x_rec)
    np.testing.assert_array_equal(traj.t, np.float32(record) / np.float32(T))
  np.testing.assert_array_equal(out, expected)


def test_a_given_z_1_equal_to_the_keys_draw_gives_the_same_samples():
  shape, key = (4, *SHAPE), rkey(3)
  z_1 = jax.random.normal(jax.random.split(key, 4)[0], shape, jnp.float32)
  for sampler in ("ancestral", "dpmpp_2m"):
    drawn = sampling.sample(smooth_eps, linear_gamma, key, shape, T=5, vocab_size=V,
                            sampler=sampler)
    given = sampling.sample(smooth_eps, linear_gamma, key, shape, T=5, vocab_size=V,
                            sampler=sampler, z_1=np.asarray(z_1, np.float64))
    np.testing.assert_array_equal(given, drawn)
  other = sampling.sample(smooth_eps, linear_gamma, key, shape, T=5, vocab_size=V,
                          sampler="ddim", z_1=-z_1, trajectory_steps=(5,))[1]
  np.testing.assert_array_equal(other.z[0], -z_1)


def test_solver_state_is_one_scan_carry():
  """A multistep solver's state rides in the one lax.scan: the chain's jaxpr has one scan
  whatever T, and its carry holds the history buffers."""
  shape = (3, *SHAPE)
  for T in (4, 40):
    jaxpr = jax.make_jaxpr(lambda k: sampling.sample(
        smooth_eps, linear_gamma, k, shape, T=T, vocab_size=V, sampler="dpmpp_3m",
        spacing="uniform_t"))(rkey(0))
    scans = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "scan"]
    assert len(scans) == 1 and scans[0].params["length"] == T
    carry_shapes = [v.aval.shape for v in scans[0].outvars]
    assert (2, *shape) in carry_shapes           # the two earlier data predictions
