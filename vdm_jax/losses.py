"""The VDM loss: the negative ELBO as recon + prior + diffusion, in nats per example.

    recon     = E_q(z_0|x) [-log p(x | z_0)]                    (one z_0 sample; the data model's
                                                                 decoder, `vdm_jax.likelihood`)
    prior     = KL(q(z_1 | x) || N(0, I))                       (closed form; x encoded)
    diffusion = continuous time (T = 0):  0.5 gamma'(t) ||eps - eps_hat(z_t; gamma_t)||^2, t ~ U(0, 1)
                discrete time T:          0.5 T expm1(gamma_t - gamma_s) ||eps - eps_hat||^2,
                                          t = i / T, s = (i - 1) / T, i ~ U{1..T}

One time per example; with `antithetic=True` the batch shares one uniform u and uses the
low-discrepancy times t_b = (u + b / B) mod 1 (for discrete time this puts exactly B / T examples
on each step when T divides B). gamma'(t) is the exact derivative of `gamma_fn` (a jvp).

The data x enter through a data model (`data=`): `likelihood.Discrete` (integers, the default;
`vocab_size=` is its shorthand) or `likelihood.Continuous` (floats of any shape), which checks
and encodes x and gives the recon term.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from vdm_jax import diffusion, likelihood

Array = jax.Array
EpsFn = Callable[[Array, Array], Array]     # (z_t [B, ...], gamma_t [B]) -> eps_hat [B, ...]
GammaFn = Callable[[Array], Array]          # t [B] -> gamma [B], elementwise and differentiable


class VDMLoss(NamedTuple):
  """Per-example terms of the negative ELBO, each [B] in nats."""
  recon: Array
  prior: Array
  diffusion: Array

  @property
  def total(self) -> Array:
    """recon + prior + diffusion: [B] nats."""
    return self.recon + self.prior + self.diffusion


def sample_times(key: Array, batch_size: int, antithetic: bool = True) -> Array:
  """t [B] in [0, 1): i.i.d. uniform, or (u + b/B) mod 1 with a single u when antithetic."""
  if antithetic:
    u = jax.random.uniform(key, (), jnp.float32)
    return jnp.mod(u + jnp.arange(batch_size, dtype=jnp.float32) / batch_size, 1.0)
  return jax.random.uniform(key, (batch_size,), jnp.float32)


def discretise_times(t: Array, T: int) -> tuple[Array, Array]:
  """Maps t in [0, 1) to the step i = floor(t T) + 1 in {1..T}; returns (s, t) = ((i-1)/T, i/T)."""
  i = jnp.clip(jnp.floor(t * T) + 1.0, 1.0, float(T))
  return (i - 1.0) / T, i / T


class DiffusionTerms(NamedTuple):
  """What the diffusion integrand is made of, per example ([B] each)."""
  t: Array          # time in [0, 1]
  gamma_t: Array    # gamma(t)
  weight: Array     # 0.5 gamma'(t) (continuous) or 0.5 T expm1(gamma_t - gamma_s) (discrete)
  mse: Array        # ||eps - eps_hat||^2 summed over data dimensions

  @property
  def loss(self) -> Array:
    """The diffusion term of the bound: weight * mse, [B] nats."""
    return self.weight * self.mse


def diffusion_terms(eps_fn: EpsFn, gamma_fn: GammaFn, x: Array, t: Array, key: Array, *,
                    T: int = 0, variance_tap: bool = False) -> DiffusionTerms:
  """The diffusion term's parts at times t [B] for encoded data x [B, ...].

  With `variance_tap=True`, gamma_t and the weight pass through `_variance_tap`, and the loss
  must then be read with `tapped_loss` for the schedule to receive the gradient of L_diff^2.
  """
  if T > 0:
    s, t = discretise_times(t, T)
    gamma_s, gamma_t = gamma_fn(s), gamma_fn(t)
    weight = 0.5 * T * jnp.expm1(gamma_t - gamma_s)
  else:
    gamma_t, dgamma_dt = jax.jvp(gamma_fn, (t,), (jnp.ones_like(t),))
    weight = 0.5 * dgamma_dt
  carriers = None
  if variance_tap:
    zeros = jnp.zeros_like(gamma_t)
    (gamma_t, weight), carriers = _variance_tap((gamma_t, weight), (zeros, zeros))
  z_t, eps = diffusion.sample_marginal(key, x, gamma_t)
  eps_hat = eps_fn(z_t, gamma_t)
  mse = diffusion.sum_data_axes(jnp.square(eps - eps_hat.astype(jnp.float32)))
  terms = DiffusionTerms(t=t, gamma_t=gamma_t, weight=weight, mse=mse)
  return (terms, carriers) if variance_tap else terms


# --- Variance minimisation of the schedule -------------------------------------------------
#
# In continuous time E[L_diff] depends on the schedule only through its endpoints, so the
# schedule's interior can instead minimise the estimator's variance, i.e. E[L_diff^2]
# (paper, Sec. 5.2). Per example, grad_eta L_diff^2 = 2 L_diff grad_eta L_diff, and the schedule
# parameters eta reach L_diff only through gamma_t and the weight. `_variance_tap` is an identity
# on (gamma_t, weight) whose backward pass scales their cotangents by 2 L_diff, so one backward
# pass gives the score network the bound's gradient and the schedule the variance gradient.
# L_diff reaches the backward pass through two zero-valued carriers added to the loss:
#   out = L + stop_gradient(L) * c_loss + c_one  ->  cotangents ct * L and ct, whose ratio is L.


@jax.custom_vjp
def _variance_tap(gammas, carriers):
  return gammas, carriers


def _variance_tap_fwd(gammas, carriers):
  return (gammas, carriers), None


def _variance_tap_bwd(_, cotangents):
  ct_gammas, (ct_loss, ct_one) = cotangents
  nonzero = ct_one != 0
  l_diff = jnp.where(nonzero, ct_loss / jnp.where(nonzero, ct_one, 1.0), 0.0)
  scaled = jax.tree_util.tree_map(lambda c: c * 2.0 * l_diff, ct_gammas)
  return scaled, (jnp.zeros_like(ct_loss), jnp.zeros_like(ct_one))


_variance_tap.defvjp(_variance_tap_fwd, _variance_tap_bwd)


def tapped_loss(loss: Array, carriers: tuple[Array, Array]) -> Array:
  """loss (value unchanged) wired to the carriers of `_variance_tap`."""
  c_loss, c_one = carriers
  return loss + jax.lax.stop_gradient(loss) * c_loss + c_one


# --- Training weightings (for sample quality; the reported bound is always unweighted) ------

WEIGHTINGS = ("elbo", "simple", "sigmoid")
SCHEDULE_OBJECTIVES = ("elbo", "variance")


def weighted_diffusion(terms: DiffusionTerms, weighting: str = "elbo",
                       sigmoid_bias: float = 2.0) -> Array:
  """The diffusion integrand under a weight w(lambda) of the log-SNR lambda = -gamma_t: [B].

    elbo:    w = 1                               -> the bound's term, weight * mse
    simple:  w = 1 / weight                      -> mse, DDPM's unweighted eps-MSE (summed over
                                                    dimensions) with uniform t
    sigmoid: w = sigmoid(sigmoid_bias - lambda)  -> VDM++ (Kingma & Gao, 2023)

  The weight is held constant (stop_gradient) so it does not train the schedule.
  """
  if weighting == "elbo":
    return terms.loss
  if weighting == "simple":
    return terms.mse
  if weighting == "sigmoid":
    w = jax.nn.sigmoid(sigmoid_bias + jax.lax.stop_gradient(terms.gamma_t))
    return w * terms.loss
  raise ValueError(f"Unknown weighting {weighting!r}; choose one of {WEIGHTINGS}.")


def check_T(T) -> None:
  """Raises ValueError unless T is an int >= 0 (0: continuous time; else T discrete steps)."""
  if not isinstance(T, int) or isinstance(T, bool) or T < 0:
    raise ValueError(f"T must be an int >= 0 (0 = continuous time), got {T!r}.")


def check_objective(weighting: str, schedule_objective: str = "elbo") -> None:
  """Raises ValueError for an unknown weighting or schedule objective, or the variance objective
  with a weighting other than the bound's."""
  if weighting not in WEIGHTINGS:
    raise ValueError(f"Unknown weighting {weighting!r}; choose one of {WEIGHTINGS}.")
  if schedule_objective not in SCHEDULE_OBJECTIVES:
    raise ValueError(f"Unknown schedule_objective {schedule_objective!r}; choose one of "
                     f"{SCHEDULE_OBJECTIVES}.")
  if schedule_objective == "variance" and weighting != "elbo":
    raise ValueError("schedule_objective='variance' minimises the variance of the bound's "
                     "estimator and needs weighting='elbo'.")


def training_loss(eps_fn: EpsFn, gamma_fn: GammaFn, x: Array, key: Array, *,
                  data: likelihood.DataModel | None = None, vocab_size: int | None = None,
                  T: int = 0, antithetic: bool = True, weighting: str = "elbo",
                  sigmoid_bias: float = 2.0,
                  schedule_objective: str = "elbo") -> tuple[Array, VDMLoss]:
  """The per-example training objective [B] and, from the same draws, the bound `VDMLoss`.

  objective = recon + prior + weighted diffusion (`weighted_diffusion`). With
  schedule_objective="variance" the schedule's parameters receive, instead of the bound's
  gradient of the diffusion term, the gradient of E[L_diff^2] (the variance of the estimator up to
  a constant), while recon and prior still give the endpoints the bound's gradient; every other
  parameter's gradient is unchanged. Arguments as `vdm_loss`.
  """
  check_objective(weighting, schedule_objective)
  data = likelihood.resolve(data, vocab_size)
  data.check(x)
  check_T(T)
  batch_size = x.shape[0]
  x_enc = data.encode(x)
  key_t, key_eps, key_0 = jax.random.split(key, 3)

  gamma_ends = gamma_fn(jnp.array([0.0, 1.0], jnp.float32))
  gamma_0, gamma_1 = gamma_ends[0], gamma_ends[1]

  z_0, _ = diffusion.sample_marginal(key_0, x_enc, gamma_0)
  recon = data.recon_loss(x, z_0, gamma_0)
  prior = jnp.broadcast_to(likelihood.prior_kl(x_enc, gamma_1), (batch_size,))

  t = sample_times(key_t, batch_size, antithetic)
  if schedule_objective == "variance":
    terms, carriers = diffusion_terms(eps_fn, gamma_fn, x_enc, t, key_eps, T=T,
                                      variance_tap=True)
    trained = tapped_loss(terms.loss, carriers)
  else:
    terms = diffusion_terms(eps_fn, gamma_fn, x_enc, t, key_eps, T=T)
    trained = weighted_diffusion(terms, weighting, sigmoid_bias)
  bound = VDMLoss(recon=recon, prior=prior, diffusion=terms.loss)
  return recon + prior + trained, bound


def vdm_loss(eps_fn: EpsFn, gamma_fn: GammaFn, x: Array, key: Array, *,
             data: likelihood.DataModel | None = None, vocab_size: int | None = None,
             T: int = 0, antithetic: bool = True) -> VDMLoss:
  """The VDM negative ELBO per example, split into its three terms (nats).

  Args:
    eps_fn: (z_t [B, ...] float32, gamma_t [B]) -> eps_hat [B, ...], the noise prediction.
    gamma_fn: t [B] -> gamma [B]; must be elementwise in t and differentiable (its jvp gives
      gamma'(t)). gamma_fn(0) and gamma_fn(1) are the schedule's endpoints.
    x: data [B, ...] of any shape, as the data model takes it: integers in [0, vocab_size) for
      `likelihood.Discrete` (the default), floats for `likelihood.Continuous`. Dtype and rank
      are checked always, the values when the call is eager (a ValueError naming what was
      found); under jit they are not (out-of-range integers give NaN): check them in the data
      pipeline (`data.check_values`).
    key: PRNG key; the times, the diffusion noise and the z_0 noise all come from it.
    data: the data model (`likelihood.Discrete(...)` or `likelihood.Continuous()`); it encodes
      x and gives the recon term -log p(x | z_0). None: `Discrete(vocab_size)`.
    vocab_size: shorthand for data=likelihood.Discrete(vocab_size) (256 when neither is given).
    T: 0 for the continuous-time loss, else the number of discrete steps.
    antithetic: low-discrepancy times across the batch (lower variance, same expectation).

  Returns:
    VDMLoss(recon, prior, diffusion), each [B] in nats; `.total` is their sum. For continuous
    data the bound is on a density (`likelihood.Continuous`): its bits per dimension may be
    negative.
  """
  return training_loss(eps_fn, gamma_fn, x, key, data=data, vocab_size=vocab_size, T=T,
                       antithetic=antithetic)[1]


def diffusion_loss_std(eps_fn: EpsFn, gamma_fn: GammaFn, x: Array, key: Array, *,
                       num_draws: int = 64, data: likelihood.DataModel | None = None,
                       vocab_size: int | None = None, T: int = 0) -> Array:
  """The estimator's spread: per example, the std of the one-sample diffusion-loss estimate.

  For each example of x [B, ...], `num_draws` independent (t, eps) draws (t i.i.d. uniform, as
  one example of a batch sees it); returns the standard deviation across draws, [B] nats.
  x and data as in `vdm_loss` (values checked only when the call is eager).
  """
  data = likelihood.resolve(data, vocab_size)
  data.check(x)
  x_enc = data.encode(x)

  def one_draw(k):
    k_t, k_eps = jax.random.split(k)
    t = jax.random.uniform(k_t, (x_enc.shape[0],), jnp.float32)
    return diffusion_terms(eps_fn, gamma_fn, x_enc, t, k_eps, T=T).loss

  draws = jax.lax.map(one_draw, jax.random.split(key, num_draws))     # [num_draws, B]
  return jnp.std(draws, axis=0, ddof=1)


LogitsFn = Callable[[Array, Array], Array]   # (z_t [B, ...], gamma_t [B]) -> logits [B, K]


def noisy_classifier_loss(logits_fn: LogitsFn, gamma_fn: GammaFn, x: Array, labels: Array,
                          key: Array, *, data: likelihood.DataModel | None = None,
                          antithetic: bool = True) -> tuple[Array, Array]:
  """Cross-entropy of a classifier of noisy inputs on the forward marginals, per example.

  t is drawn as the VDM loss draws it (`sample_times`), z_t = alpha_t enc(x) + sigma_t eps
  (`diffusion.sample_marginal` at gamma_t = gamma_fn(t)), and the loss is
  -log softmax(logits_fn(z_t, gamma_t))[label], so that the classifier learns p(y | z_t) at
  every noise level the sampler visits. gamma_t is held fixed (stop_gradient): the loss trains
  the classifier, never the diffusion model's schedule.

  Args:
    logits_fn: (z_t [B, ...] float32, gamma_t [B]) -> logits [B, K].
    gamma_fn: the diffusion model's schedule, t [B] -> gamma [B].
    x: data [B, ...] as the data model takes it; labels: int [B] in [0, K).
    key: PRNG key of the times and the noise.
    data: the data model (None: `likelihood.Discrete(256)`).
    antithetic: low-discrepancy times across the batch.

  Returns:
    (loss [B] nats, t [B]): each example's cross-entropy and its time.
  """
  data = likelihood.resolve(data, None)
  data.check(x, "x")
  x_enc = data.encode(x)
  labels = jnp.asarray(labels)
  if labels.shape != (x_enc.shape[0],) or not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f"labels must be int [B] = ({x_enc.shape[0]},), got {labels.dtype} "
                     f"{labels.shape}.")
  key_t, key_z = jax.random.split(key)
  t = sample_times(key_t, x_enc.shape[0], antithetic)
  gamma_t = jax.lax.stop_gradient(gamma_fn(t))
  z_t, _ = diffusion.sample_marginal(key_z, x_enc, gamma_t)
  log_p = jax.nn.log_softmax(logits_fn(z_t, gamma_t).astype(jnp.float32), axis=-1)
  return -jnp.take_along_axis(log_p, labels[:, None].astype(jnp.int32), axis=-1)[:, 0], t
