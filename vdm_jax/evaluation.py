"""Evaluation: a bound on the test-set bits per dimension, with its standard error.

Two bounds (`evaluate(..., method=...)`): "elbo", the negative ELBO (below), and "ode", the
bound through the probability-flow ODE (`ode_per_example`).

    per-image bpd = (recon + prior + diffusion) / (H W C ln 2),

each term estimated with K = `num_time_samples` independent draws of (t, eps, z_0 noise) per
image and averaged. The reported `bpd` is the mean over the real images of the set, `bpd_se` the
standard error of that mean (sample standard deviation of the per-image bpd / sqrt(N)); it covers
both the spread of the data and the Monte-Carlo noise of the estimator, since each image gets its
own independent draws.

The ODE bound of an image x (Song et al. 2021, with VDM's encoder as the dequantiser):

    -log P(x) <= E_{q(z_0 | x)} [-log p_ODE(z_0) + log q(z_0 | x) - log p(x | z_0)],

q(z_0 | x) = N(alpha_0 x, sigma_0^2 I) (x encoded by the data model), p_ODE the density of the
probability-flow ODE with N(0, I) at t = 1 (`ode.log_prob`), p(x | z_0) the data model's
decoder (as in the ELBO's recon term). It is a bound for the model p_ODE(z_0) p(x | z_0), estimated with K draws of z_0
(and Hutchinson probes) per image.

For continuous data (`likelihood.Continuous`) both are bounds on a density, in bits per
dimension that may be negative; the result's 'bpd_meaning' says which.

Works with `model.VDM` or any linen module with the same interface: attributes `T`,
`data` (a data model; or `vocab_size`, its shorthand), `num_classes` (0 = unconditional), `__call__(images, labels, train=...)` ->
`losses.VDMLoss` using the 'sample' rng, `eps(z, gamma_t, labels)` and `gamma(t)`; the module
must be hashable (linen modules are) since it is a static argument of the compiled function.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from vdm_jax import diffusion, likelihood, losses, ode, schedules
from vdm_jax import model as model_lib

Array = jax.Array

METHODS = ("elbo", "ode")


def _check_int(name: str, value, minimum: int) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}.")
  return int(value)


def _with_T(model, T):
  """The model itself for T=None (or its own T), else `model.clone(T=T)`."""
  if T is None:
    return model
  T = _check_int("T", T, 0)
  return model if T == model.T else model.clone(T=T)


def _labels_for(model, labels):
  return labels if getattr(model, "num_classes", 0) else None


def _model_fns(model, variables: Any, labels: Array | None):
  """The model's eps_hat(z, gamma) for these labels, and gamma(t) (`model.pure_fns`)."""
  eps_fn, gamma_fn = model_lib.pure_fns(model, variables)
  return functools.partial(eps_fn, labels=labels), gamma_fn


def per_example_loss(model, variables: Any, images: Array, labels: Array | None, key: Array, *,
                     T: int | None = None, num_time_samples: int = 1) -> losses.VDMLoss:
  """The negative ELBO per image, each term averaged over K independent draws.

  Args:
    model: a `model.VDM` (or compatible module).
    variables: its variables.
    images: data [B, ...] as the model's data model takes it (integers in [0, vocab_size) for
      discrete data, floats for continuous data).
    labels: int [B] for a class-conditional model (ignored when num_classes == 0); None means the
      null label.
    key: PRNG key; split into K keys, one per draw (times, diffusion noise, z_0 noise).
    T: None for the model's own T; 0 for continuous time; else the number of discrete steps.
    num_time_samples: K >= 1, the number of independent draws (vmapped: memory grows with K).

  Returns:
    `losses.VDMLoss` with recon, prior, diffusion each [B] nats (means over the K draws).
  """
  num_time_samples = _check_int("num_time_samples", num_time_samples, 1)
  model = _with_T(model, T)
  labels = _labels_for(model, labels)

  def one(k):
    return model.apply(variables, images, labels, train=False, rngs={"sample": k})

  draws = jax.vmap(one)(jax.random.split(key, num_time_samples))
  return jax.tree_util.tree_map(lambda a: jnp.mean(a, axis=0), draws)


def diffusion_bin_terms(model, variables: Any, images: Array, labels: Array | None, key: Array,
                        num_bins: int) -> Array:
  """Diffusion integrand at one stratified time per t-bin per image: [B, num_bins] nats.

  Bin j is [j / n, (j + 1) / n); image b gets t_bj = (j + u_bj) / n with u_bj ~ U(0, 1), and the
  value is the diffusion term's integrand weight(t) * ||eps - eps_hat||^2 at that time
  (`losses.diffusion_terms`, in the model's continuous or discrete time). Its mean over images,
  divided by n, estimates E[L_diff; t in bin j] = (1/n) E[L_diff | t in bin j]; the n bins sum to
  the diffusion term. Bins are evaluated one after another (`lax.map`): memory of one pass.
  """
  labels = _labels_for(model, labels)
  x = likelihood.data_model_of(model).encode(images)
  batch = images.shape[0]
  eps_fn, gamma_fn = _model_fns(model, variables, labels)

  key_u, key_eps = jax.random.split(key)
  u = jax.random.uniform(key_u, (num_bins, batch), jnp.float32)
  t = (jnp.arange(num_bins, dtype=jnp.float32)[:, None] + u) / num_bins

  def one_bin(args):
    t_j, k_j = args
    return losses.diffusion_terms(eps_fn, gamma_fn, x, t_j, k_j, T=model.T).loss

  values = jax.lax.map(one_bin, (t, jax.random.split(key_eps, num_bins)))   # [n, B]
  return values.T


@functools.partial(jax.jit, static_argnames=("model", "num_time_samples", "diffusion_t_bins"))
def _eval_batch(variables, images, labels, key, *, model, num_time_samples, diffusion_t_bins):
  key_loss, key_bins = jax.random.split(key)
  loss = per_example_loss(model, variables, images, labels, key_loss,
                          num_time_samples=num_time_samples)
  out = {"recon": loss.recon, "prior": loss.prior, "diffusion": loss.diffusion}
  if diffusion_t_bins:
    out["bins"] = diffusion_bin_terms(model, variables, images, labels, key_bins,
                                      diffusion_t_bins)
  return out


def _with_fast_conv_grad(model):
  """`model` with its network's `fast_conv_grad` on, when the network has that switch: the ODE
  bound's vector-Jacobian products run inside the solver's loop, where XLA:CPU runs JAX's own
  backward convolutions 5-6x slower than those of `nets.conv` (same parameters and outputs)."""
  network = getattr(model, "network", None)
  if getattr(network, "fast_conv_grad", True):
    return model
  return model.clone(network=network.clone(fast_conv_grad=True))


def ode_per_example(model, variables: Any, images: Array, labels: Array | None, key: Array, *,
                    trace: str = "hutchinson", rtol: float | None = None,
                    atol: float | None = None) -> dict[str, Array]:
  """The ODE bound's terms per image, for one draw z_0 ~ q(z_0 | x) (and one probe).

  Args:
    model, variables, images, labels: as in `per_example_loss`.
    key: PRNG key of the z_0 draw and the Hutchinson probe.
    trace, rtol, atol: as in `ode.log_prob`.

  Returns:
    dict of [B] arrays: 'z0_nll' = -log p_ODE(z_0), 'dequant' = log q(z_0 | x), 'recon' =
    -log p(x | z_0) (nats; their sum is the bound) and 'num_evals' (int32, network evaluations
    of the solve).
  """
  model = _with_fast_conv_grad(model)
  labels = _labels_for(model, labels)
  data = likelihood.data_model_of(model)
  x = data.encode(images)
  batch = images.shape[0]
  eps_fn, gamma_fn = _model_fns(model, variables, labels)

  gamma_0 = jnp.broadcast_to(jnp.asarray(gamma_fn(jnp.zeros((batch,), jnp.float32)),
                                         jnp.float32), (batch,))
  key_z, key_probe = jax.random.split(key)
  z_0, noise = diffusion.sample_marginal(key_z, x, gamma_0)
  g = gamma_0.reshape((batch,) + (1,) * (x.ndim - 1))
  log_q = -0.5 * (jnp.square(noise) + schedules.log_sigma_sq(g) + jnp.log(2.0 * jnp.pi))
  logp, info = ode.log_prob(eps_fn, gamma_fn, z_0, key=key_probe, trace=trace, rtol=rtol,
                            atol=atol, return_info=True)
  return {"z0_nll": -logp, "dequant": jnp.sum(log_q.reshape(batch, -1), axis=-1),
          "recon": data.recon_loss(images, z_0, gamma_0),
          "num_evals": info.num_evals}


@functools.partial(jax.jit, static_argnames=("model", "num_time_samples", "trace", "rtol",
                                             "atol"))
def _ode_batch(variables, images, labels, key, *, model, num_time_samples, trace, rtol, atol):
  def one(k):
    return ode_per_example(model, variables, images, labels, k, trace=trace, rtol=rtol,
                           atol=atol)

  draws = jax.lax.map(one, jax.random.split(key, num_time_samples))   # one solve at a time
  out = {k: jnp.mean(v, axis=0) for k, v in draws.items() if k != "num_evals"}
  out["num_evals"] = jnp.sum(draws["num_evals"], axis=0)
  return out


def gather_batch(out: Mapping[str, Array], mask: np.ndarray) -> tuple[dict, np.ndarray]:
  """Per-example results and the real-row mask of one batch, for the whole global batch on
  every process: with several processes, each holds only its rows (of a batch sharded over
  every device, or computed on its own devices), so both are gathered in process order, the
  order `vdm_jax.data.eval_batches` gives the rows."""
  if jax.process_count() == 1:
    return jax.device_get(out), mask
  from jax.experimental import multihost_utils
  return (multihost_utils.process_allgather(dict(out), tiled=True),
          np.asarray(multihost_utils.process_allgather(mask, tiled=True), bool))


def evaluate(model, variables: Any, batches: Iterable[Mapping[str, Any]], key: Array, *,
             T: int | None = None, num_time_samples: int = 1, diffusion_t_bins: int = 0,
             put_batch: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None,
             method: str = "elbo", trace: str = "hutchinson", rtol: float | None = None,
             atol: float | None = None) -> dict[str, Any]:
  """A bound on the bits per dimension (the negative ELBO, or the ODE bound) over a one-pass
  set of batches.

  Args:
    model: a `model.VDM` (or compatible module); `variables` its variables (e.g. EMA params).
    batches: iterable of dicts 'image' [B, ...] (the model's data), 'label' int32 [B] (used by
      class-conditional models), 'mask' bool [B] (True = real row; absent = all real), as from
      `vdm_jax.data.get_dataset(name, "test", ...)`.
    key: PRNG key; batch number n uses `fold_in(key, n)`.
    T: None for the model's T, 0 for continuous time, else discrete steps (`model.clone(T=T)`).
    num_time_samples: K independent (t, noise) draws per image, averaged.
    diffusion_t_bins: n > 0 adds 'diffusion_share' (n fractions summing to 1: the share of the
      diffusion term coming from t in [j/n, (j+1)/n), estimated with one stratified time per bin
      per image, see `diffusion_bin_terms`) and 'diffusion_bin_bpd' (the same n contributions in
      bpd; their sum is a second, independent estimate of diffusion_bpd).
    put_batch: optional callable applied to each batch dict before the compiled call (e.g. to
      shard it over devices). The mask is read from the batch before it.
    method: "elbo" (the negative ELBO) or "ode" (the ODE bound of the module docstring; K =
      num_time_samples draws of z_0 per image; T and diffusion_t_bins do not apply).
    trace, rtol, atol: method="ode" only: the divergence's trace ("hutchinson" or "exact",
      `ode.log_prob`) and the solver's tolerances (None: `ode.RTOL`, `ode.ATOL`).

  Returns:
    dict with 'bpd', 'bpd_se', 'num_images' (real images counted), 'num_time_samples',
    'bpd_meaning' (the data model's: a probability's bits, or a density's, which may be < 0) and
    method="elbo": 'recon_bpd', 'prior_bpd', 'diffusion_bpd' (floats; the three terms sum to
      'bpd'), 'T';
    method="ode": 'recon_bpd', 'z0_nll_bpd' (E[-log p_ODE(z_0)]), 'dequant_bpd'
      (E[log q(z_0 | x)]; the three sum to 'bpd'), 'num_evals' (network evaluations per image
      and draw, mean), 'trace', 'rtol', 'atol'.

  The per-batch function is compiled once per (model, batch shape, K, n) and cached across
  calls; per-image results are fetched one batch behind the dispatch (device and host overlap)
  and accumulated on the host in float64, padding rows dropped. With several processes (each
  passing its own rows of every batch), the results are gathered across them, so every process
  returns the same numbers: each image of the split counted once.
  """
  num_time_samples = _check_int("num_time_samples", num_time_samples, 1)
  diffusion_t_bins = _check_int("diffusion_t_bins", diffusion_t_bins, 0)
  if method not in METHODS:
    raise ValueError(f"Unknown method {method!r}; choose one of {METHODS}.")
  if method == "ode":
    if T is not None or diffusion_t_bins:
      raise ValueError("T and diffusion_t_bins belong to the ELBO's diffusion term: "
                       "method='ode' takes neither.")
    if trace not in ode.TRACES:
      raise ValueError(f"Unknown trace {trace!r}; choose one of {ode.TRACES}.")
    rtol, atol = ode.check_tolerance("rtol", rtol), ode.check_tolerance("atol", atol)
    batch_fn = functools.partial(_ode_batch, model=model, num_time_samples=num_time_samples,
                                 trace=trace, rtol=rtol, atol=atol)
    names = ("recon", "z0_nll", "dequant", "num_evals")
  else:
    model = _with_T(model, T)
    batch_fn = functools.partial(_eval_batch, model=model, num_time_samples=num_time_samples,
                                 diffusion_t_bins=diffusion_t_bins)
    names = ("recon", "prior", "diffusion")
  num_classes = getattr(model, "num_classes", 0)
  data = likelihood.data_model_of(model)

  sums = {name: [] for name in names}
  bins = []
  num_dims = None

  def collect(pending):
    out, mask = gather_batch(*pending)
    for name in sums:
      sums[name].append(np.asarray(out[name], np.float64).reshape(-1)[mask])
    if diffusion_t_bins:
      bins.append(np.asarray(out["bins"], np.float64).reshape(mask.shape[0], -1)[mask])

  pending = None
  for n, batch in enumerate(batches):
    images = batch["image"]
    size = images.shape[0]
    mask = np.asarray(batch["mask"], bool).reshape(size) if "mask" in batch else \
        np.ones((size,), bool)
    dims = math.prod(images.shape[1:])
    if num_dims is None:
      num_dims = dims
    elif dims != num_dims:
      raise ValueError(f"batch {n} has images of shape {tuple(images.shape[1:])}, earlier "
                       "batches had another shape.")
    labels = batch.get("label") if num_classes else None
    if num_classes and labels is None:
      raise ValueError("the model is class-conditional: eval batches need a 'label' entry.")
    device_batch = put_batch(batch) if put_batch is not None else batch
    images = device_batch["image"]
    labels = device_batch["label"] if num_classes else None
    out = batch_fn(variables, images, labels, jax.random.fold_in(key, n))
    if pending is not None:
      collect(pending)
    pending = (out, mask)
  if pending is not None:
    collect(pending)

  terms = {name: np.concatenate(v) if v else np.zeros((0,)) for name, v in sums.items()}
  num_images = terms["recon"].shape[0]
  if num_images == 0:
    raise ValueError("evaluate got no real images (empty iterator or every row masked out).")
  def to_bpd(nats):   # host float64
    return data.bits_per_dim(nats, num_dims)

  parts = [name for name in names if name != "num_evals"]
  bpd = to_bpd(sum(terms[name] for name in parts))
  result = {
      "bpd": float(bpd.mean()),
      "bpd_se": float(bpd.std(ddof=1) / math.sqrt(num_images)) if num_images > 1 else float("nan"),
      **{f"{name}_bpd": float(to_bpd(terms[name].mean())) for name in parts},
      "num_images": int(num_images),
      "num_time_samples": num_time_samples,
      "bpd_meaning": data.bpd_meaning,
  }
  if method == "ode":
    result.update(num_evals=float(terms["num_evals"].mean() / num_time_samples), trace=trace,
                  rtol=rtol, atol=atol)
  else:
    result["T"] = int(model.T)
  if diffusion_t_bins:
    contrib = np.concatenate(bins).mean(axis=0) / diffusion_t_bins       # [n] nats
    total = contrib.sum()
    result["diffusion_share"] = [float(c / total) for c in contrib] if total > 0 else \
        [float("nan")] * diffusion_t_bins
    result["diffusion_bin_bpd"] = [float(to_bpd(c)) for c in contrib]
  return result
