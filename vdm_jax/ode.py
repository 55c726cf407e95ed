"""The probability-flow ODE of a VDM: deterministic sampling and exact log-densities.

Notation as in `vdm_jax.diffusion` (variance preserving, alpha_t^2 = sigmoid(-gamma_t),
sigma_t^2 = sigmoid(gamma_t)). The marginals q(z_t) of the forward process are also those of the
ODE (Song et al. 2021), which with the score -eps/sigma and gamma as the time variable reads

    dz/dgamma = -1/2 (sigma^2 z - sigma eps_hat(z; gamma)).

Why gamma and not t: eps_fn depends on t only through gamma, so in gamma the ODE and its
solution do not depend on the schedule's interior (only on gamma(0) and gamma(1), the paper's
invariance); dz/dt = gamma'(t) dz/dgamma would carry the schedule's speed (18.3 for the linear
[-13.3, 5] schedule, unbounded at the ends of a cosine one) into the solver's step control. In
gamma the right-hand side stays O(|z| + |eps|) everywhere, and the noisy end, where sigma -> 1
and eps_hat(z) -> z, is nearly still (dz/dgamma -> 0), so the adaptive solver crosses it in a
few steps. The state is z itself, O(1) at every gamma under the variance-preserving process, so
one absolute tolerance means the same at both ends.

Each example is solved on its own (`jax.vmap` over the batch: its own step sizes and error
control, results independent of the rest of the batch); eps_fn still sees the whole batch at
once, each row at its own gamma. The solver is diffrax's Tsit5 (5th order, adaptive, PID step
control) in float32.

    z_0, info = ode.flow(eps_fn, z_1, gamma_1, gamma_0, rtol=1e-5, atol=1e-5)   # sampling
    z_1 = ode.encode(eps_fn, gamma_fn, x, data=data)                           # its inverse
    logp = ode.log_prob(eps_fn, gamma_fn, z_0, key=key, trace="hutchinson")    # [B] nats
"""
from __future__ import annotations

import math
import numbers
from typing import Callable, NamedTuple

import diffrax
import jax
import jax.numpy as jnp

from vdm_jax import likelihood, schedules

Array = jax.Array
EpsFn = Callable[[Array, Array], Array]              # (z [B, ...], gamma_t [B]) -> eps_hat
GammaFn = Callable[[Array], Array]                   # t [B] -> gamma [B]

RTOL = 1e-5           # default relative tolerance of the solver
ATOL = 1e-5           # default absolute tolerance (z is O(1) at every gamma)
MAX_STEPS = 4096      # solver steps per example before it gives up with an error
TRACES = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")
# Network evaluations of Tsit5 (first same as last): 6 per attempted step, plus the one at the
# start (tests/test_ode.py counts them).
_EVALS_PER_STEP = 6


class ODEInfo(NamedTuple):
  """What the solver did, per example.

  num_steps: int32 [B], the solver's steps (accepted and rejected).
  num_evals: int32 [B], evaluations of eps_fn for that example (network evaluations; with a
    batch, one call of eps_fn evaluates every example once).
  """
  num_steps: Array
  num_evals: Array


def check_tolerance(name: str, value) -> float:
  """rtol / atol: None -> the default (RTOL / ATOL), else a Python number in (0, 1)."""
  if value is None:
    return {"rtol": RTOL, "atol": ATOL}[name]
  if isinstance(value, jax.core.Tracer):
    raise TypeError(f"{name} must be a Python number (it is static); mark it static under "
                    "jax.jit.")
  if isinstance(value, bool) or not isinstance(value, numbers.Real) or \
      not (math.isfinite(value) and 0.0 < value < 1.0):
    raise ValueError(f"{name} must be a number in (0, 1) (the ODE solver's tolerance), got "
                     f"{value!r}.")
  return float(value)


def velocity(z: Array, eps_hat: Array, gamma: Array) -> Array:
  """dz/dgamma = -1/2 (sigma^2 z - sigma eps_hat): the probability-flow ODE in gamma.

  z, eps_hat: float32 of one shape; gamma: a scalar or broadcastable against z.
  """
  return -0.5 * (schedules.sigma_sq(gamma) * z - schedules.sigma(gamma) * eps_hat)


def _one_example(eps_fn: EpsFn) -> Callable[[Array, Array], Array]:
  """eps_fn for one example: (z [...], gamma ()) -> eps_hat [...] float32. Under the vmap over
  the batch, eps_fn receives the whole batch, with one gamma per row."""
  def eps_one(z, gamma):
    # gamma may come as a Python float (diffrax probes the vector field's output type with one).
    gamma = jnp.asarray(gamma, jnp.float32)
    return jnp.asarray(eps_fn(z[None], gamma[None])[0], jnp.float32)
  return eps_one


def _solve(field, y0, gamma_start, gamma_end, rtol, atol, norm=None):
  """One example's solve from gamma_start to gamma_end (either direction): (y_end, ODEInfo)."""
  controller = diffrax.PIDController(rtol=rtol, atol=atol,
                                     **({} if norm is None else {"norm": norm}))
  sol = diffrax.diffeqsolve(diffrax.ODETerm(field), diffrax.Tsit5(), gamma_start, gamma_end,
                            None, y0, stepsize_controller=controller,
                            saveat=diffrax.SaveAt(t1=True), max_steps=MAX_STEPS)
  steps = jnp.asarray(sol.stats["num_steps"], jnp.int32)
  y_end = jax.tree_util.tree_map(lambda a: a[0], sol.ys)
  return y_end, ODEInfo(num_steps=steps, num_evals=1 + _EVALS_PER_STEP * steps)


def _per_example(gamma: Array, batch: int) -> Array:
  return jnp.broadcast_to(jnp.asarray(gamma, jnp.float32), (batch,))


def flow(eps_fn: EpsFn, z: Array, gamma_start: Array, gamma_end: Array, *,
         rtol: float | None = None, atol: float | None = None) -> tuple[Array, ODEInfo]:
  """Carries z along the probability-flow ODE from gamma_start to gamma_end.

  Args:
    eps_fn: (z [B, ...] float32, gamma [B] float32) -> eps_hat [B, ...].
    z: float32 [B, ...], the states at gamma_start.
    gamma_start, gamma_end: scalars or [B]; gamma_end < gamma_start runs towards the data
      (sampling: gamma(1) -> gamma(0)), gamma_end > gamma_start towards the noise (encoding).
    rtol, atol: the solver's tolerances (None: RTOL, ATOL), static Python numbers.

  Returns:
    (z at gamma_end [B, ...] float32, ODEInfo). Deterministic: no random numbers.
  """
  rtol, atol = check_tolerance("rtol", rtol), check_tolerance("atol", atol)
  z = jnp.asarray(z, jnp.float32)
  batch = z.shape[0]
  eps_one = _one_example(eps_fn)

  def field(gamma, y, args):
    return velocity(y, eps_one(y, gamma), gamma)

  def one(z_b, g0, g1):
    return _solve(field, z_b, g0, g1, rtol, atol)

  return jax.vmap(one)(z, _per_example(gamma_start, batch), _per_example(gamma_end, batch))


def encode(eps_fn: EpsFn, gamma_fn: GammaFn, x: Array, *,
           data: likelihood.DataModel | None = None, key: Array | None = None,
           rtol: float | None = None, atol: float | None = None, return_info: bool = False):
  """Data -> z_1 along the probability-flow ODE: the inverse of sampling with sampler="ode".

  z_0 is q(z_0 | x)'s mean alpha_0 enc(x) (key None: deterministic) or, with a key, a draw of
  q(z_0 | x); `flow` then carries it from gamma(0) to gamma(1). Decoding z_1 (e.g.
  `sampling.sample(..., sampler="ode", z_1=z_1)`) returns x to the solver's tolerance, so
  latents can be encoded, interpolated and decoded.

  Args:
    eps_fn: (z [B, ...] float32, gamma [B] float32) -> eps_hat [B, ...].
    gamma_fn: t [B] -> gamma [B]; used at t = 0 and t = 1 only.
    x: data [B, ...] as the data model takes it (integers for `likelihood.Discrete`).
    data: the data model (None: `likelihood.Discrete(256)`); checks and encodes x.
    key: None, or a PRNG key for the draw of z_0.
    rtol, atol: the solver's tolerances (None: RTOL, ATOL).
    return_info: also return the `ODEInfo`.

  Returns:
    z_1 [B, ...] float32 (and the ODEInfo with return_info=True).
  """
  data = likelihood.resolve(data, None)
  data.check(x, "x")
  rtol, atol = check_tolerance("rtol", rtol), check_tolerance("atol", atol)
  x_enc = jnp.asarray(data.encode(x), jnp.float32)
  batch = x_enc.shape[0]
  gamma_0 = _per_example(gamma_fn(jnp.zeros((batch,), jnp.float32)), batch)
  gamma_1 = _per_example(gamma_fn(jnp.ones((batch,), jnp.float32)), batch)
  g0 = gamma_0.reshape((batch,) + (1,) * (x_enc.ndim - 1))
  z_0 = schedules.alpha(g0) * x_enc
  if key is not None:
    z_0 = z_0 + schedules.sigma(g0) * jax.random.normal(key, x_enc.shape, jnp.float32)
  z_1, info = flow(eps_fn, z_0, gamma_0, gamma_1, rtol=rtol, atol=atol)
  return (z_1, info) if return_info else z_1


def _state_norm(error):
  """The solver's error norm for the state (z, the log-density's integral per dimension): the
  larger of the RMS over z and the integral's own error. Why not one RMS over both: with D
  dimensions the log-density's error would count 1 / (D + 1), and it is the output. Why per
  dimension: an error of atol in every coordinate of z moves log N(z_1; 0, I) by O(D atol)
  nats, so the integral is held to the same O(atol) per dimension (nats/dim, the unit of bpd
  up to ln 2) and neither part sets the step size alone."""
  err_z, err_logp = error
  return jnp.maximum(jnp.sqrt(jnp.mean(jnp.square(err_z))), jnp.abs(err_logp))


def standard_normal_log_prob(z: Array) -> Array:
  """log N(z; 0, I) summed over all but the first axis: [B] nats."""
  d = math.prod(z.shape[1:])
  flat = z.reshape(z.shape[0], -1)
  return -0.5 * jnp.sum(jnp.square(flat), axis=-1) - 0.5 * d * math.log(2.0 * math.pi)


def log_prob(eps_fn: EpsFn, gamma_fn: GammaFn, z_0: Array, *, key: Array | None = None,
             trace: str = "exact", probe: str = "rademacher", rtol: float | None = None,
             atol: float | None = None, return_info: bool = False):
  """log p(z_0) under the model's probability-flow ODE, with p(z_1) = N(0, I): [B] nats.

  The instantaneous change of variables (Chen et al. 2018) along the ODE from gamma(0) to
  gamma(1), dz/dgamma = f(z, gamma) = -1/2 (sigma^2 z - sigma eps_hat(z; gamma)):

      log p_0(z_0) = log N(z_1; 0, I) + integral_{gamma(0)}^{gamma(1)} div f(z, gamma) dgamma,
      div f = -1/2 (sigma^2 D - sigma tr(d eps_hat / d z)).

  Args:
    eps_fn: (z [B, ...] float32, gamma [B] float32) -> eps_hat [B, ...].
    gamma_fn: t [B] -> gamma [B]; only gamma(0) and gamma(1) are used (see the module
      docstring).
    z_0: float32 [B, ...], latents at t = 0 (e.g. a draw of q(z_0 | x)).
    key: PRNG key of the Hutchinson probes (one probe per example, fixed along its path); not
      used (may be None) for trace="exact".
    trace: "exact": tr(d eps_hat / d z) from the full Jacobian, D vector-Jacobian products per
      evaluation (for small D); "hutchinson": v^T (d eps_hat / d z) v with one probe v per
      example, one vector-Jacobian product per evaluation: an unbiased estimate of log p_0
      (its variance adds to the spread over examples).
    probe: Hutchinson's probe distribution, "rademacher" (+-1, lower variance) or "gaussian".
    rtol, atol: solver tolerances (None: RTOL, ATOL); the step control keeps both the state z
      and the log-density's integral per dimension (nats/dim) within them.
    return_info: also return the `ODEInfo`.

  Returns:
    [B] float32 nats (and the ODEInfo with return_info=True).

  Traces use vector-Jacobian products (not forward mode) so that networks with custom VJPs
  (e.g. `nets.conv`'s convolution) work too. On CPU, build a `nets.UNet` for this with
  `fast_conv_grad=True` (`evaluation.ode_per_example` does): the products run inside the
  solver's loop, where XLA:CPU's own backward convolutions are several times slower.
  """
  if trace not in TRACES:
    raise ValueError(f"Unknown trace {trace!r}; choose one of {TRACES}.")
  if probe not in PROBES:
    raise ValueError(f"Unknown probe {probe!r}; choose one of {PROBES}.")
  if trace == "hutchinson" and key is None:
    raise ValueError("trace='hutchinson' draws its probes from `key`: pass a PRNG key.")
  rtol, atol = check_tolerance("rtol", rtol), check_tolerance("atol", atol)
  z_0 = jnp.asarray(z_0, jnp.float32)
  if z_0.ndim < 2:
    raise ValueError(f"z_0 must be [batch, ...] with rank >= 2, got shape {z_0.shape}.")
  batch, event = z_0.shape[0], z_0.shape[1:]
  dims = math.prod(event)
  eps_one = _one_example(eps_fn)
  gamma_0 = _per_example(gamma_fn(jnp.zeros((batch,), jnp.float32)), batch)
  gamma_1 = _per_example(gamma_fn(jnp.ones((batch,), jnp.float32)), batch)

  if trace == "exact":
    probes = jnp.zeros((batch,), jnp.float32)      # unused
    basis = jnp.eye(dims, dtype=jnp.float32).reshape((dims, *event))

    def trace_fn(vjp_fn, v):
      del v
      rows = jax.vmap(lambda e: vjp_fn(e)[0])(basis)             # [D, ...]: rows of J
      return jnp.sum(rows.reshape(dims, dims).diagonal())
  else:
    draw = jax.random.rademacher if probe == "rademacher" else jax.random.normal
    probes = draw(key, z_0.shape, jnp.float32)

    def trace_fn(vjp_fn, v):
      return jnp.vdot(vjp_fn(v)[0], v)

  def field(gamma, y, v):
    z, _ = y
    eps, vjp_fn = jax.vjp(lambda z_: eps_one(z_, gamma), z)
    # The divergence per dimension (see _state_norm); the integral is multiplied back by D.
    div = -0.5 * (schedules.sigma_sq(gamma) - schedules.sigma(gamma) * trace_fn(vjp_fn, v) / dims)
    return velocity(z, eps, gamma), div

  def one(z_b, v, g0, g1):
    field_v = lambda gamma, y, args: field(gamma, y, v)
    return _solve(field_v, (z_b, jnp.float32(0.0)), g0, g1, rtol, atol, norm=_state_norm)

  (z_1, div_integral), info = jax.vmap(one)(z_0, probes, gamma_0, gamma_1)
  logp = standard_normal_log_prob(z_1) + dims * div_integral
  return (logp, info) if return_info else logp
