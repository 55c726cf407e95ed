"""Multistep solvers of the probability-flow ODE in data-prediction form: DPM-Solver++ and UniPC.

Notation: lambda = log(alpha / sigma) = -gamma / 2 (half the log-SNR), increasing towards the
data; x_hat = (z - sigma eps_hat) / alpha, the data prediction. In lambda the ODE's exact
solution from t to s (s < t, h = lambda_s - lambda_t > 0) is

    z_s = (sigma_s / sigma_t) z_t + sigma_s integral_{lambda_t}^{lambda_s} e^lambda x_hat dlambda,

and the solvers differ in how they approximate x_hat(lambda) on the step: by the current
prediction (DDIM, first order) or by a polynomial through the current and earlier predictions,
which the state carries (one network evaluation per step). With u = lambda - lambda_t,
integral e^{u-h} u^k / k! du over [0, h] gives the coefficients

    c0 = -expm1(-h),   c1 = h + expm1(-h),   c2 = h^2 / 2 - h - expm1(-h)

of x_hat, x_hat' and x_hat'' (never formed as 1 - small).

* DPM-Solver++(2M) (Lu et al. 2022, Alg. 2): z_s = (sigma_s/sigma_t) z_t + alpha_s c0 D with
  D = (1 + 1/(2r)) x_t - 1/(2r) x_prev, r = h_prev / h.
* DPM-Solver++(3M): the quadratic through the last three predictions (Newton divided
  differences in lambda), integrated exactly with c0, c1, c2.
* UniPC (Zhao et al. 2023), B(h) = expm1(-h) (their "bh2"): the predictor UniP-p uses p
  predictions; the corrector UniC then recomputes the same step with the prediction at its end
  point, one order higher, at no extra evaluation (that prediction is the one the next step
  needs anyway). The last step is not corrected (its end point is never evaluated).

Order schedule: step n of the chain (n earlier predictions available) runs at order
min(order, n + 1) (warm-up from one point); when T < `LOWER_ORDER_FINAL_BELOW` the last steps
also drop order, min(order, i) for step i of T..1, as the reference implementations do: with
few steps the last, longest steps in t are the least stable ones at high order.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax.numpy as jnp

from vdm_jax import diffusion, schedules
from vdm_jax.sampling.protocol import Array, Solver, Step

LOWER_ORDER_FINAL_BELOW = 15      # chains shorter than this lower the order of their last steps


def order_at(order: int, n: Array, i: Array, T: int) -> Array:
  """The order of step i (T..1) with n earlier predictions: int32 scalar (see the module
  docstring)."""
  p = jnp.minimum(order, n + 1)
  if T < LOWER_ORDER_FINAL_BELOW:
    p = jnp.minimum(p, i)
  return p.astype(jnp.int32)


class MultistepState(NamedTuple):
  """What a multistep solver carries between steps (most recent first).

  x_hat: [K, B, ...] float32, earlier data predictions.
  gamma: [K, B] float32, the gamma each was made at.
  n: int32 scalar, how many predictions have been made.
  z_start: [B, ...] float32, where the last step started (UniPC's corrector recomputes that step
    from there); unused (zeros of size 0) by DPM-Solver++.
  """
  x_hat: Array
  gamma: Array
  n: Array
  z_start: Array


def _push(buf: Array, new: Array) -> Array:
  return jnp.concatenate([new[None], buf[:-1]], axis=0)


def _init_state(z_1: Array, gamma_1: Array, size: int, with_start: bool) -> MultistepState:
  batch = z_1.shape[0]
  g1 = jnp.broadcast_to(jnp.asarray(gamma_1, jnp.float32), (batch,))
  # Placeholders for predictions not made yet: never selected (the order schedule excludes
  # them), spaced apart in gamma so that their unselected arithmetic stays finite.
  gammas = g1[None] + jnp.arange(1, size + 1, dtype=jnp.float32)[:, None]
  return MultistepState(x_hat=jnp.zeros((size, *z_1.shape), jnp.float32), gamma=gammas,
                        n=jnp.zeros((), jnp.int32),
                        z_start=jnp.zeros(z_1.shape if with_start else (0,), jnp.float32))


def _per_example(gamma: Array, batch: int) -> Array:
  return jnp.broadcast_to(jnp.asarray(gamma, jnp.float32), (batch,))


def _exp_coefficients(h: Array) -> tuple[Array, Array, Array]:
  """c0, c1, c2 of the module docstring; series where the closed forms cancel (h -> 0)."""
  em = jnp.expm1(-h)
  c0 = -em
  c1 = jnp.where(h < 1e-3, 0.5 * h * h * (1.0 - h / 3.0), h + em)
  c2 = jnp.where(h < 1e-2, h ** 3 / 6.0 * (1.0 - h / 4.0 + h * h / 20.0), 0.5 * h * h - h - em)
  return c0, c1, c2


def dpmpp_solver(order: int, T: int) -> Solver:
  """DPM-Solver++ multistep of `order` 2 ("dpmpp_2m") or 3 ("dpmpp_3m"); deterministic.

  T: the chain's number of steps (static), for the order schedule. State: the last order - 1
  data predictions and their gammas.
  """
  if order not in (2, 3):
    raise ValueError(f"DPM-Solver++ multistep has order 2 or 3, got {order!r}.")
  size = order - 1

  def init(z_1, gamma_1):
    return z_1, _init_state(z_1, gamma_1, size, with_start=False)

  def update(key, z_t, eps_hat, state, step: Step):
    del key
    batch = z_t.shape[0]
    e = lambda v: diffusion.expand_to(v, z_t)
    gt, gs = _per_example(step.gamma_t, batch), _per_example(step.gamma_s, batch)
    x_t = diffusion.predict_x(z_t, eps_hat, gt)
    lam_t, lam_s = -0.5 * gt, -0.5 * gs
    h = lam_s - lam_t
    ratio = jnp.exp(0.5 * (schedules.log_sigma_sq(gs) - schedules.log_sigma_sq(gt)))
    a_s = schedules.alpha(gs)
    c0, c1, c2 = _exp_coefficients(h)
    p = order_at(order, state.n, step.i, T)

    z_s = e(ratio) * z_t + e(a_s * c0) * x_t                  # first order (DDIM)
    lam_1, x_1 = -0.5 * state.gamma[0], state.x_hat[0]
    r = (lam_t - lam_1) / h
    z_2 = z_s + e(a_s * c0 * 0.5 / r) * (x_t - x_1)
    out = jnp.where(p >= 2, z_2, z_s)
    if order == 3:
      lam_2, x_2 = -0.5 * state.gamma[1], state.x_hat[1]
      d01, d12 = lam_t - lam_1, lam_1 - lam_2
      f01 = (x_t - x_1) / e(d01)
      f12 = (x_1 - x_2) / e(d12)
      f012 = (f01 - f12) / e(d01 + d12)
      slope = f01 + f012 * e(d01)                             # x_hat'(lambda_t)
      z_3 = z_s + e(a_s * c1) * slope + e(a_s * c2) * (2.0 * f012)
      out = jnp.where(p >= 3, z_3, out)
    state = state._replace(x_hat=_push(state.x_hat, x_t), gamma=_push(state.gamma, gt),
                           n=state.n + 1)
    return out, state

  return Solver(init=init, update=update, one_step=False)


def _masked_solve(R: Array, b: Array, size: Array) -> Array:
  """Solves the leading size x size block of R [B, P, P] rho = b [B, P]; the other entries of
  rho are 0 (a static shape for every traced size, 0 <= size <= P)."""
  P = R.shape[-1]
  keep = jnp.arange(P) < size
  M = jnp.where(keep[:, None] & keep[None, :], R, jnp.eye(P, dtype=R.dtype))
  rhs = jnp.where(keep, b, 0.0)
  return jnp.linalg.solve(M, rhs[..., None])[..., 0]


def _unipc_step(z_start: Array, g_start: Array, g_end: Array, x_start: Array,
                g_old: Array, x_old: Array, p: Array, x_end: Array | None) -> Array:
  """UniPC's step of order p from z_start (gamma g_start, prediction x_start) to g_end, with
  earlier predictions x_old [P - 1, B, ...] at g_old [P - 1, B] (most recent first).

  x_end None: the predictor UniP-p. x_end given (the prediction at the predictor's end point):
  the corrector UniC, order p + 1. All gammas [B]; returns z at g_end [z_start.shape].
  """
  P = g_old.shape[0] + 1
  e = lambda v: diffusion.expand_to(v, z_start)
  lam_0, lam_1 = -0.5 * g_start, -0.5 * g_end
  h = lam_1 - lam_0                                            # [B], > 0
  hh = -h
  h_phi_1 = jnp.expm1(hh)
  b_h = jnp.expm1(hh)                                          # B(h), the "bh2" variant
  # b_k = k! phi_{k+1}(h) / B(h), k = 1..P, by the recursion of the phi functions.
  h_phi_k = h_phi_1 / hh - 1.0
  b = []
  for k in range(1, P + 1):
    b.append(h_phi_k * math.factorial(k) / b_h)
    h_phi_k = h_phi_k / hh - 1.0 / math.factorial(k + 1)
  b = jnp.stack(b, axis=-1)                                    # [B, P]
  # r_k = (lambda_{-k} - lambda_0) / h < 0 for the earlier predictions; the P-vector of nodes
  # is (r_1, ..., r_{p-1}, 1, unused...).
  r_old = (-0.5 * g_old - lam_0[None]) / h[None]               # [P - 1, B]
  d1 = (x_old - x_start[None]) / r_old.reshape(r_old.shape + (1,) * (z_start.ndim - 1))
  k = jnp.arange(P)[:, None]
  r_pad = jnp.concatenate([r_old, jnp.ones_like(r_old[:1])], axis=0)   # [P, B]
  nodes = jnp.where(k < p - 1, r_pad, jnp.where(k == p - 1, 1.0, 0.0))
  R = jnp.moveaxis(nodes[None] ** jnp.arange(P, dtype=jnp.float32)[:, None, None], -1, 0)
  base = e(jnp.exp(0.5 * (schedules.log_sigma_sq(g_end) - schedules.log_sigma_sq(g_start))))
  z_end = base * z_start - e(schedules.alpha(g_end) * h_phi_1) * x_start
  scale = e(schedules.alpha(g_end) * b_h)
  if x_end is None:
    rho = _masked_solve(R, b, p - 1)                           # [B, P]
    res = jnp.einsum("bk,kb...->b...", rho[:, :P - 1], d1)
  else:
    rho = _masked_solve(R, b, p)
    rho_end = jnp.sum(jnp.where(jnp.arange(P) == p - 1, rho, 0.0), axis=-1)
    rho_old = jnp.where(jnp.arange(P - 1) < p - 1, rho[:, :P - 1], 0.0)
    res = jnp.einsum("bk,kb...->b...", rho_old, d1) + e(rho_end) * (x_end - x_start)
  return z_end - scale * res


def unipc_solver(order: int, T: int) -> Solver:
  """UniPC of `order` 2 or 3 (predictor order; see the module docstring); deterministic.

  T: the chain's number of steps (static), for the order schedule. State: the last `order`
  data predictions, their gammas and the last step's start point.
  """
  if order not in (2, 3):
    raise ValueError(f"UniPC takes order 2 or 3, got {order!r}.")

  def init(z_1, gamma_1):
    return z_1, _init_state(z_1, gamma_1, order, with_start=True)

  def update(key, z_t, eps_hat, state, step: Step):
    del key
    batch = z_t.shape[0]
    gt, gs = _per_example(step.gamma_t, batch), _per_example(step.gamma_s, batch)
    x_t = diffusion.predict_x(z_t, eps_hat, gt)
    # The corrector of the previous step (none before the first): its order was that of
    # step i + 1 with n - 1 earlier predictions.
    p_prev = jnp.maximum(order_at(order, state.n - 1, step.i + 1, T), 1)
    z_corr = _unipc_step(state.z_start, state.gamma[0], gt, state.x_hat[0], state.gamma[1:],
                         state.x_hat[1:], p_prev, x_end=x_t)
    z_t = jnp.where(state.n >= 1, z_corr, z_t)
    x_hat, gamma = _push(state.x_hat, x_t), _push(state.gamma, gt)
    p = order_at(order, state.n, step.i, T)
    z_s = _unipc_step(z_t, gt, gs, x_t, gamma[1:], x_hat[1:], p, x_end=None)
    return z_s, MultistepState(x_hat=x_hat, gamma=gamma, n=state.n + 1, z_start=z_t)

  return Solver(init=init, update=update, one_step=False)
