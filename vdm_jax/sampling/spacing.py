"""Step spacings: the T + 1 times 0 = t_0 < t_1 < ... < t_T = 1 of a chain, for any schedule.

  * "uniform_t": t_i = i / T.
  * "logsnr": uniform in log-SNR = -gamma: gamma(t_i) = gamma(0) + (i / T) (gamma(1) - gamma(0)).
    The steps of the multistep solvers are then equal in lambda = -gamma / 2, the variable they
    are exact in (DPM-Solver's choice).
  * "karras": Karras et al. (2022, eq. 5) with rho = 7 in the noise level sigma_VE = sigma/alpha
    = exp(gamma / 2): sigma_VE(t_i)^(1/rho) linear in i from sigma_VE(0)^(1/rho) to
    sigma_VE(1)^(1/rho). Their grid ends at sigma = 0; a VDM chain ends at gamma(0), so it is
    their formula between the schedule's own endpoints.

The last two fix gamma at the grid; the times come from inverting gamma numerically
(`invert_gamma`: bisection on [0, 1], gamma increasing in t), so they work for every schedule,
learned ones included, under jit. The network is then fed gamma_fn(t_i), the schedule's own
value, as in training.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from vdm_jax.sampling.protocol import Array, GammaFn

SPACINGS = ("uniform_t", "logsnr", "karras")
KARRAS_RHO = 7.0
# Bisection halvings: the bracket is then 2^-24 ~ 6e-8 wide, the float32 spacing near t = 1.
BISECTION_STEPS = 24


def gamma_at(gamma_fn: GammaFn, t: Array) -> Array:
  """gamma_fn at each time of t [K]: [K] float32. Called as gamma_fn(t_k [1]) under vmap, so a
  gamma_fn that returns () or [B] of the batch's one time works too."""
  def one(tk):
    return jnp.reshape(jnp.asarray(gamma_fn(tk[None]), jnp.float32), (-1,))[0]
  return jax.vmap(one)(jnp.asarray(t, jnp.float32))


def invert_gamma(gamma_fn: GammaFn, targets: Array, steps: int = BISECTION_STEPS) -> Array:
  """t [K] in [0, 1] with gamma_fn(t) = targets [K], by bisection (gamma increasing in t).

  After `steps` halvings the bracket is 2^-steps wide; the midpoint is returned, so |t - t*| <=
  2^-(steps + 1) for a continuous increasing gamma. Vectorised over the targets; jit-safe (a
  fixed number of iterations); monotone in the targets.
  """
  targets = jnp.asarray(targets, jnp.float32)

  def body(_, bracket):
    lo, hi = bracket
    mid = 0.5 * (lo + hi)
    below = gamma_at(gamma_fn, mid) < targets
    return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

  lo, hi = jax.lax.fori_loop(0, steps, body, (jnp.zeros_like(targets), jnp.ones_like(targets)))
  return 0.5 * (lo + hi)


def target_gammas(gamma_0: Array, gamma_1: Array, T: int, spacing: str) -> Array:
  """The gammas a spacing puts at t_0..t_T: [T + 1] float32 ("logsnr", "karras")."""
  u = jnp.arange(T + 1, dtype=jnp.float32) / T
  if spacing == "logsnr":
    return gamma_0 + u * (gamma_1 - gamma_0)
  if spacing == "karras":
    lo, hi = jnp.exp(gamma_0 / (2 * KARRAS_RHO)), jnp.exp(gamma_1 / (2 * KARRAS_RHO))
    return 2 * KARRAS_RHO * jnp.log(lo + u * (hi - lo))
  raise ValueError(f"Unknown spacing {spacing!r}; choose one of {SPACINGS}.")


def step_times(gamma_fn: GammaFn, T: int, spacing: str) -> Array:
  """The times t_0 = 0 < ... < t_T = 1 of a chain of T steps: float32 [T + 1].

  spacing: one of `SPACINGS` (module docstring). The ends are exactly 0 and 1. "uniform_t"
  gives a host (numpy) array, i / T correctly rounded; the others a jax array.
  """
  if spacing not in SPACINGS:
    raise ValueError(f"Unknown spacing {spacing!r}; choose one of {SPACINGS}.")
  if spacing == "uniform_t":
    return np.arange(T + 1, dtype=np.float32) / np.float32(T)
  ends = gamma_at(gamma_fn, jnp.array([0.0, 1.0], jnp.float32))
  times = invert_gamma(gamma_fn, target_gammas(ends[0], ends[1], T, spacing))
  return times.at[0].set(0.0).at[T].set(1.0)


def check_times(gamma_fn: GammaFn, times: Array, spacing: str) -> None:
  """ValueError unless the schedule gives the spacing: gamma strictly increasing along the
  times, and (for the spacings that fix gamma) gamma_fn(t_i) within a tenth of a step of its
  target. Runs only on concrete values (an eager call); under a trace it does nothing."""
  if isinstance(times, jax.core.Tracer):
    return
  try:
    gammas = np.asarray(gamma_at(gamma_fn, times), np.float64)
  except jax.errors.TracerArrayConversionError:
    return                          # gamma_fn closes over traced values (e.g. params)
  T = len(gammas) - 1
  if not gammas[T] > gammas[0]:
    raise ValueError(
        f"spacing={spacing!r} needs an increasing schedule, gamma(0) < gamma(1); this gamma_fn "
        f"gives gamma(0) = {gammas[0]:.6g}, gamma(1) = {gammas[T]:.6g}.")
  if spacing != "uniform_t":
    targets = np.asarray(target_gammas(jnp.float32(gammas[0]), jnp.float32(gammas[T]), T,
                                       spacing), np.float64)
    miss = np.abs(gammas - targets)
    tol = 0.1 * np.min(np.abs(np.diff(targets)))
    if np.max(miss) > tol:
      k = int(np.argmax(miss))
      raise ValueError(
          f"spacing={spacing!r} with T={T}: the schedule cannot give gamma = {targets[k]:.6g} "
          f"(its nearest value, at t = {float(times[k]):.6g}, is {gammas[k]:.6g}): gamma "
          "jumps there. Use spacing='uniform_t'.")
  steps = np.diff(gammas)
  if not np.all(steps > 0):
    k = int(np.argmin(steps > 0))
    raise ValueError(
        f"spacing={spacing!r} with T={T}: the schedule does not increase between t = "
        f"{float(times[k]):.6g} and {float(times[k + 1]):.6g} (gamma {gammas[k]:.6g} -> "
        f"{gammas[k + 1]:.6g}); the solvers step in gamma and need gamma strictly increasing "
        "in t.")
