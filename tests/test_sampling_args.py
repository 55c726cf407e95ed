"""The reverse chain's argument checks (`vdm_jax.sampling_args`), called directly: no chain runs."""
import jax.numpy as jnp
import numpy as np
import pytest

from vdm_jax import likelihood, ode, sampling, sampling_args

V = 16
SHAPE = (2, 2, 2, 1)
KNOWN = jnp.zeros(SHAPE, jnp.int32)


def check(**kw):
  args = dict(shape=SHAPE, vocab_size=V, T=4, sampler="ancestral", eta=None, decode="argmax",
              trajectory_steps=(), known=None, known_mask=None)
  args.update(kw)
  return sampling_args.check_chain_args(args.pop("shape"), **args)


def test_check_chain_args_resolves_static_arguments():
  args = sampling_args.check_chain_args([2, 2, 2, 1], vocab_size=np.int64(16), T=np.int32(5),
                                        sampler="ddim", eta=None, decode=None,
                                        trajectory_steps=2, known=None, known_mask=None)
  assert args == sampling_args.ChainArgs(shape=(2, 2, 2, 1), data=likelihood.Discrete(16), T=5,
                                         sampler="ddim", eta=0.0, decode="argmax",
                                         trajectory_steps=(5, 1), known=None, known_mask=None,
                                         rtol=None, atol=None, spacing="uniform_t", order=None,
                                         z_1=None)
  hash(args)      # static: usable as jit static arguments
  # The data model decides the decoders: continuous data decode to the decoder's mean.
  args = sampling_args.check_chain_args([2, 3], likelihood.Continuous(), T=2, sampler="ddim",
                                        eta=None, decode=None, trajectory_steps=(),
                                        known=None, known_mask=None)
  assert (args.data, args.decode) == (likelihood.Continuous(), "mean")


def test_check_chain_args_ode_takes_tolerances_not_steps():
  args = check(sampler="ode", T=None)
  assert (args.T, args.eta, args.rtol, args.atol) == (None, None, ode.RTOL, ode.ATOL)
  args = check(sampler="ode", T=None, rtol=1e-3, atol=np.float32(1e-4), trajectory_steps=0)
  assert args.rtol == 1e-3 and type(args.atol) is float and args.trajectory_steps == ()
  hash(args)
  assert sampling_args.is_chain("ddim") and not sampling_args.is_chain("ode")


def test_check_chain_args_inpainting_inputs():
  mask = jnp.array([True, False]).reshape(1, 1, 2, 1)
  args = check(known=KNOWN.astype(jnp.int16), known_mask=mask)
  assert args.known.dtype == jnp.int32
  np.testing.assert_array_equal(args.known_mask, jnp.broadcast_to(mask, SHAPE))


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(T=0), ValueError, "T must be"),
    (dict(T=2.0), ValueError, "T must be"),
    (dict(T=True), ValueError, "T must be"),
    (dict(vocab_size=1), ValueError, "vocab_size"),
    (dict(data=likelihood.Discrete(8)), ValueError, "pass one of them"),
    (dict(data=16, vocab_size=None), TypeError, "data must be a likelihood data model"),
    (dict(data=likelihood.Continuous(), vocab_size=None, decode="argmax"), ValueError,
     r"Unknown decode 'argmax' for Continuous\(\)"),
    (dict(data=likelihood.Continuous(), vocab_size=None, decode=None, known=KNOWN,
          known_mask=jnp.ones(SHAPE, bool)), TypeError, r"Continuous\(\) takes floating-point"),
    (dict(data=likelihood.Continuous(), vocab_size=None, decode=None,
          known=jnp.full(SHAPE, jnp.nan), known_mask=jnp.ones(SHAPE, bool)), ValueError,
     r"known: Continuous\(\) needs finite data, found 8 NaN"),
    (dict(sampler="euler"), ValueError, "Unknown sampler"),
    (dict(eta=0.5), ValueError, "ancestral"),
    (dict(sampler="ddim", eta=1.5), ValueError, r"eta in \[0, 1\]"),
    (dict(sampler="ddim", eta=float("nan")), ValueError, r"number in \[0, 1\]"),
    (dict(decode="mean"), ValueError, "Unknown decode"),
    (dict(shape=(4,)), ValueError, "rank >= 2"),
    (dict(trajectory_steps=(0,)), ValueError, "trajectory_steps"),
    (dict(trajectory_steps=9), ValueError, "trajectory_steps"),
    (dict(trajectory_steps=(2, 2)), ValueError, "repeated"),
    (dict(trajectory_steps="ab"), ValueError, "trajectory_steps"),
    (dict(trajectory_steps=1.5), TypeError, "trajectory_steps"),
    (dict(known=KNOWN), ValueError, "both"),
    (dict(known=KNOWN[:1], known_mask=jnp.ones((), bool)), ValueError, "sample shape"),
    (dict(known=KNOWN, known_mask=jnp.ones((3,), bool)), ValueError, "does not broadcast"),
    (dict(known=KNOWN, known_mask=jnp.ones(SHAPE, jnp.int32)), TypeError, "bool"),
    (dict(known=KNOWN.astype(jnp.float32), known_mask=jnp.ones(SHAPE, bool)), TypeError,
     "integers"),
    (dict(known=KNOWN + 16, known_mask=jnp.ones(SHAPE, bool)), ValueError, r"\[0, 16\)"),
    (dict(atol=1e-3), ValueError, "takes none"),
    (dict(sampler="ode"), ValueError, "pass T=None"),
    (dict(sampler="ode", T=None, eta=1.0), ValueError, "takes no eta"),
    (dict(sampler="ode", T=None, rtol=0.0), ValueError, r"rtol must be a number in \(0, 1\)"),
    (dict(sampler="ode", T=None, atol=True), ValueError, r"atol must be a number in \(0, 1\)"),
    (dict(sampler="ode", T=None, trajectory_steps=(1,)), ValueError, "records none"),
    (dict(sampler="ode", T=None, known=KNOWN, known_mask=jnp.ones(SHAPE, bool)), ValueError,
     "does not support it"),
])
def test_check_chain_args_rejects(kwargs, error, match):
  with pytest.raises(error, match=match):
    check(**kwargs)


@pytest.mark.parametrize("sampler,eta,expected", [
    ("ancestral", None, 1.0), ("ancestral", 1, 1.0), ("ddim", None, 0.0), ("ddim", 0.25, 0.25),
    ("ddim", 1.0, 1.0), ("ddim", np.float32(0.5), 0.5),
])
def test_resolve_eta(sampler, eta, expected):
  out = sampling_args.resolve_eta(sampler, eta)
  assert out == expected and type(out) is float
  assert sampling_args.resolve_eta("ode", None) is None


def test_resolve_trajectory_steps():
  resolve = sampling_args.resolve_trajectory_steps
  assert resolve(None, 10) == resolve((), 10) == resolve(0, 10) == ()
  assert resolve(1, 10) == (10,)
  assert resolve(2, 10) == (10, 1)
  assert resolve(5, 100) == (100, 75, 50, 26, 1)
  assert resolve(10, 10) == tuple(range(10, 0, -1))
  assert resolve([1, np.int64(7), 3], 10) == (7, 3, 1)


def test_sampling_re_exports_the_same_objects():
  for name in ("SAMPLERS", "ChainArgs", "check_chain_args", "resolve_eta",
               "resolve_trajectory_steps", "resolve_tolerances", "Sampler", "ReverseStep",
               "ancestral_step", "ddim_step", "is_chain"):
    assert getattr(sampling, name) is getattr(sampling_args, name)
