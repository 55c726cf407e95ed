"""Noise schedules gamma(t) and the quantities derived from them.

A schedule maps time t in [0, 1] to the negative log signal-to-noise ratio
gamma(t) = log(sigma_t^2 / alpha_t^2), strictly increasing, with gamma(0) = gamma_min and
gamma(1) = gamma_max. The process is variance preserving, so

    alpha_t^2 = sigmoid(-gamma_t),   sigma_t^2 = sigmoid(gamma_t),   SNR(t) = exp(-gamma_t).

Every helper here works from gamma through sigmoid / softplus, never as `1 - small`, so it is
accurate for gamma anywhere in [-20, 20] in float32.

Schedules are Flax linen modules: `gamma = schedule.apply(params, t)` is elementwise in t (any
shape) and differentiable in t and in the parameters. Fixed schedules have no parameters.
"""
from __future__ import annotations

import math
import numbers

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

# The VDM paper's endpoints (Kingma et al., 2021), the default of every schedule with endpoints.
# gamma = log(sigma^2 / alpha^2) is a natural-log variance ratio (dimensionless).
# gamma(0) = -13.3 makes the discrete decoder of 8-bit data near exact: sigma_0 / alpha_0 =
# exp(-6.65) ~ 1.3e-3, a third of half a bin (1/256). gamma(1) = 5 makes q(z_1 | x) close to
# N(0, I): alpha_1^2 = sigmoid(-5) ~ 6.7e-3.
GAMMA_MIN = -13.3
GAMMA_MAX = 5.0


def check_endpoints(gamma_min, gamma_max) -> None:
  """Raises ValueError unless gamma_min < gamma_max, both finite.

  Checks concrete numbers only (Python or numpy scalars); other values (e.g. traced arrays) pass
  unchecked, since their values are unknown until run time. The message names no configuration
  key, so callers can prefix their own.
  """
  values = (gamma_min, gamma_max)
  if not all(isinstance(v, numbers.Real) for v in values):
    return
  if not (math.isfinite(gamma_min) and math.isfinite(gamma_max) and gamma_min < gamma_max):
    raise ValueError(f"gamma_min ({gamma_min}) must be < gamma_max ({gamma_max}), both finite.")


# --------------------------------------------------------------------------------------------
# Helpers: everything derived from gamma.


def alpha_sq(gamma: Array) -> Array:
  """alpha^2 = sigmoid(-gamma): the signal variance."""
  return jax.nn.sigmoid(-gamma)


def sigma_sq(gamma: Array) -> Array:
  """sigma^2 = sigmoid(gamma): the noise variance."""
  return jax.nn.sigmoid(gamma)


def alpha(gamma: Array) -> Array:
  """alpha = sqrt(sigmoid(-gamma))."""
  return jnp.sqrt(jax.nn.sigmoid(-gamma))


def sigma(gamma: Array) -> Array:
  """sigma = sqrt(sigmoid(gamma))."""
  return jnp.sqrt(jax.nn.sigmoid(gamma))


def log_alpha_sq(gamma: Array) -> Array:
  """log alpha^2 = -softplus(gamma)."""
  return -jax.nn.softplus(gamma)


def log_sigma_sq(gamma: Array) -> Array:
  """log sigma^2 = -softplus(-gamma)."""
  return -jax.nn.softplus(-gamma)


def snr(gamma: Array) -> Array:
  """Signal-to-noise ratio alpha^2 / sigma^2 = exp(-gamma)."""
  return jnp.exp(-gamma)


def _inverse_softplus(y: float) -> float:
  return y + math.log(-math.expm1(-y))


# --------------------------------------------------------------------------------------------
# Schedules.


class _EndpointSchedule(nn.Module):
  """A schedule with endpoints gamma(0) = gamma_min < gamma(1) = gamma_max, checked when built."""

  gamma_min: float = GAMMA_MIN
  gamma_max: float = GAMMA_MAX

  def __post_init__(self):
    check_endpoints(self.gamma_min, self.gamma_max)
    super().__post_init__()


class FixedLinear(_EndpointSchedule):
  """gamma(t) = gamma_min + (gamma_max - gamma_min) t, no parameters."""

  @nn.compact
  def __call__(self, t: Array) -> Array:
    t = jnp.asarray(t, jnp.float32)
    return self.gamma_min + (self.gamma_max - self.gamma_min) * t


class _Endpoints(nn.Module):
  """Learnable endpoints with gamma_min < gamma_max by construction.

  Parameters: `gamma_min` (free) and `log_range` with gamma_max = gamma_min + softplus(log_range).
  """

  gamma_min_init: float
  gamma_max_init: float

  def __post_init__(self):
    check_endpoints(self.gamma_min_init, self.gamma_max_init)
    super().__post_init__()

  @nn.compact
  def __call__(self) -> tuple[Array, Array]:
    g0 = self.param("gamma_min", nn.initializers.constant(self.gamma_min_init), (), jnp.float32)
    raw = self.param(
        "log_range",
        nn.initializers.constant(_inverse_softplus(self.gamma_max_init - self.gamma_min_init)),
        (), jnp.float32)
    return g0, g0 + jax.nn.softplus(raw)


class LearnedLinear(_EndpointSchedule):
  """gamma(t) = gamma_min + (gamma_max - gamma_min) t with both endpoints learnable.

  gamma_min / gamma_max are the initial endpoints. Increasing by construction:
  gamma_max - gamma_min = softplus(parameter) > 0.
  """

  @nn.compact
  def __call__(self, t: Array) -> Array:
    t = jnp.asarray(t, jnp.float32)
    g0, g1 = _Endpoints(self.gamma_min, self.gamma_max, name="endpoints")()
    return g0 + (g1 - g0) * t


class _DenseMonotone(nn.Dense):
  """Dense layer with non-negative weights |W|, hence monotone non-decreasing in its input."""

  @nn.compact
  def __call__(self, inputs: Array) -> Array:
    kernel = self.param("kernel", self.kernel_init, (inputs.shape[-1], self.features),
                        jnp.float32)
    y = inputs @ jnp.abs(kernel)
    if self.use_bias:
      y = y + self.param("bias", self.bias_init, (self.features,), jnp.float32)
    return y


class MonotoneNet(_EndpointSchedule):
  """The paper's learnable monotone schedule, with exact learnable endpoints.

      f(t) = t + l3(sigmoid(l2(2t - 1)) - 1/2) / n_features      (l2, l3 with |W|: monotone)
      gamma(t) = gamma_min + (gamma_max - gamma_min) (f(t) - f(0)) / (f(1) - f(0))

  f is strictly increasing (its linear part has slope 1), so gamma is strictly increasing and
  gamma(0) = gamma_min, gamma(1) = gamma_max exactly, where both endpoints are parameters (the
  original formulation adds the non-linear part unnormalised, so its endpoints drift away from
  the learned gamma_min / gamma_max). gamma_min / gamma_max are the initial endpoints.
  """

  n_features: int = 1024

  @nn.compact
  def __call__(self, t: Array) -> Array:
    t = jnp.asarray(t, jnp.float32)
    g0, g1 = _Endpoints(self.gamma_min, self.gamma_max, name="endpoints")()
    l2 = _DenseMonotone(self.n_features, kernel_init=nn.initializers.normal(1.0), name="l2")
    l3 = _DenseMonotone(1, kernel_init=nn.initializers.normal(1.0), use_bias=False, name="l3")

    def f(u):
      h = jax.nn.sigmoid(l2(2.0 * u[..., None] - 1.0)) - 0.5
      return u + l3(h)[..., 0] / self.n_features

    f_ends = f(jnp.array([0.0, 1.0]))
    unit = (f(t) - f_ends[0]) / (f_ends[1] - f_ends[0])
    return g0 + (g1 - g0) * unit


class DDPMLinear(nn.Module):
  """DDPM's linear beta schedule (beta 1e-4 .. 0.02 over 1000 steps) as a continuous gamma(t).

  With the continuous step index n(t) = 1 + (steps - 1) t, the cumulative noise is
  c(n) = sum_{j<=n} beta_j = n beta_1 + (beta_T - beta_1) n (n - 1) / (2 (steps - 1)) and
  alpha^2 = exp(-c), so gamma = log(expm1(c)). gamma(0) = log(expm1(beta_1)) ~ -9.21,
  gamma(1) ~ 10.05. No parameters.
  """

  beta_start: float = 1e-4
  beta_end: float = 0.02
  steps: int = 1000

  @nn.compact
  def __call__(self, t: Array) -> Array:
    t = jnp.asarray(t, jnp.float32)
    n = 1.0 + (self.steps - 1) * t
    c = n * self.beta_start + (self.beta_end - self.beta_start) * n * (n - 1) / (
        2.0 * (self.steps - 1))
    # log(expm1(c)) = c + log(-expm1(-c)), stable for small and large c.
    return c + jnp.log(-jnp.expm1(-c))


class Cosine(_EndpointSchedule):
  """The cosine schedule (alpha = cos theta, sigma = sin theta) truncated to [gamma_min, gamma_max].

  gamma(t) = 2 log tan(theta(t)), theta linear in t from atan(exp(gamma_min / 2)) to
  atan(exp(gamma_max / 2)). No parameters.
  """

  @nn.compact
  def __call__(self, t: Array) -> Array:
    t = jnp.asarray(t, jnp.float32)
    theta_min = math.atan(math.exp(self.gamma_min / 2))
    theta_max = math.atan(math.exp(self.gamma_max / 2))
    theta = theta_min + (theta_max - theta_min) * t
    return 2.0 * jnp.log(jnp.tan(theta))


SCHEDULES = {
    "fixed_linear": FixedLinear,
    "learned_linear": LearnedLinear,
    "monotone_net": MonotoneNet,
    "ddpm_linear": DDPMLinear,
    "cosine": Cosine,
}


def make_schedule(name: str, gamma_min: float = GAMMA_MIN,
                  gamma_max: float = GAMMA_MAX) -> nn.Module:
  """Builds a schedule by name (`SCHEDULES`).

  The endpoints are checked (`check_endpoints`) for every name, so a configuration error shows
  even where DDPMLinear ignores them (its endpoints are fixed by its betas).
  """
  if name not in SCHEDULES:
    raise ValueError(f"Unknown schedule {name!r}; choose one of {sorted(SCHEDULES)}.")
  check_endpoints(gamma_min, gamma_max)
  if name == "ddpm_linear":
    return DDPMLinear()
  return SCHEDULES[name](gamma_min=gamma_min, gamma_max=gamma_max)
