"""Latent diffusion with a likelihood bound: the autoencoder's terms and the pixel-space bound.

With an encoder q(z | x), a decoder p(x | z) that is a likelihood over the 8-bit pixels, and a
latent model whose bound L(z) >= -log p(z) (VDM's continuous bound on the latents, Vahdat et
al. 2021 for latent score models), for every x

    -log p(x) <= E_q(z|x)[ -log p(x | z) ] - H(q(z | x)) + E_q(z|x)[ L(z) ]       (nats)

`pixel_bound` estimates it per example from one z ~ q(z | x), with the entropy term in closed
form. The latent model sees the latents scaled by a constant (`latent_scale`, computed from
the training data so that they have unit variance); its bound on the scaled latents u = s z
becomes one on z by the change of variables -log p(z) = -log p(u) - d log s (d latent
dimensions), which `pixel_bound` adds.

`AutoencoderModel` is the training loop's model for stage 1 (config.model.network =
"autoencoder"): a `nets.KLAutoencoder` on discrete data, trained on -log p(x | z) + beta KL.
`LatentVDM` is its model for stage 2 (config.model.autoencoder_workdir set): a VDM on the
scaled latents, trained on fresh draws from q(z | x).
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vdm_jax import likelihood, losses
from vdm_jax import model as model_lib
from vdm_jax.nets import autoencoder as autoencoder_nets

Array = jax.Array

_LOG_2PI = math.log(2.0 * math.pi)


def _sum_dims(v: Array) -> Array:
  return jnp.sum(v.reshape(v.shape[0], -1), axis=-1)


def discretized_logistic_nll(x_int: Array, loc: Array, log_scale: Array, *,
                             vocab_size: int = 256, low: float = -1.0,
                             high: float = 1.0) -> Array:
  """-log P(x_int) under a logistic(loc, exp(log_scale)) per dimension, discretised to the bins
  of `likelihood.Discrete(vocab_size, low, high)` (width (high - low) / V around the bin
  centres; the first and last bins extend to -inf and +inf, so the V probabilities sum to 1).

  x_int int [B, ...] in [0, V); loc, log_scale float [B, ...] on the data scale.
  Returns [B] nats, summed over the data dimensions.

  log(sigmoid(a) - sigmoid(b)) is computed as -softplus(-a) - softplus(b) + log(-expm1(b - a))
  (a, b the standardised upper and lower edges), exact where the difference of sigmoids
  would round to 0.
  """
  if vocab_size < 2:
    raise ValueError(f"a discretised logistic needs vocab_size >= 2, got {vocab_size}.")
  width = (high - low) / vocab_size
  x = x_int.astype(jnp.float32)
  centre = low + (x + 0.5) * width
  inv_scale = jnp.exp(-log_scale.astype(jnp.float32))
  upper = (centre + 0.5 * width - loc) * inv_scale
  lower = (centre - 0.5 * width - loc) * inv_scale
  inner = (-jax.nn.softplus(-upper) - jax.nn.softplus(lower)
           + jnp.log(-jnp.expm1(-width * inv_scale)))
  log_p = jnp.where(x_int == vocab_size - 1, -jax.nn.softplus(lower),
                    jnp.where(x_int == 0, -jax.nn.softplus(-upper), inner))
  return -_sum_dims(log_p)


def gaussian_log_prob(z: Array, mean: Array, log_std: Array) -> Array:
  """log N(z; mean, exp(log_std)^2) of a diagonal Gaussian, [B] nats summed over dimensions."""
  eps = (z - mean) * jnp.exp(-log_std)
  return _sum_dims(-0.5 * jnp.square(eps) - log_std - 0.5 * _LOG_2PI)


def gaussian_entropy(log_std: Array) -> Array:
  """H(N(mean, exp(log_std)^2)) of a diagonal Gaussian, [B] nats."""
  return _sum_dims(log_std + 0.5 * (1.0 + _LOG_2PI))


def kl_to_standard_normal(mean: Array, log_std: Array) -> Array:
  """KL(N(mean, exp(log_std)^2) || N(0, I)), [B] nats: 0.5 sum(mean^2 + var - 1) - sum(log_std),
  with var - 1 as expm1(2 log_std)."""
  return _sum_dims(0.5 * (jnp.square(mean) + jnp.expm1(2.0 * log_std)) - log_std)


def sample_latent(key: Array, mean: Array, log_std: Array) -> Array:
  """z ~ q(z | x) = N(mean, exp(log_std)^2), reparameterised."""
  return mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape, mean.dtype)


class PixelBound(NamedTuple):
  """The parts of the pixel-space bound, each [B] nats per example.

  decoder_nll: -log p(x | z) at z ~ q(z | x).
  encoder_entropy: H(q(z | x)) (closed form).
  latent_nll: the latent model's bound on -log p(z) at the same z (in z's units: the scale's
    change of variables included).
  """
  decoder_nll: Array
  encoder_entropy: Array
  latent_nll: Array

  @property
  def total(self) -> Array:
    """The bound on -log p(x): decoder_nll - encoder_entropy + latent_nll, [B] nats."""
    return self.decoder_nll - self.encoder_entropy + self.latent_nll


def pixel_bound(mean: Array, log_std: Array, decoder_nll_fn: Callable[[Array], Array],
                latent_nll_fn: Callable[[Array, Array], Array], key: Array, *,
                scale: float | Array = 1.0) -> PixelBound:
  """One-sample estimate of the bound on -log p(x) from q(z | x) = N(mean, exp(log_std)^2).

  Args:
    mean, log_std: the encoder's q(z | x) for a batch, [B, *latent_shape].
    decoder_nll_fn: z [B, ...] -> -log p(x | z) [B] nats (of the batch's x).
    latent_nll_fn: (u [B, ...], key) -> a bound on -log p(u) [B] nats, for u = scale * z (e.g.
      the VDM loss's total on u with `likelihood.Continuous()`).
    key: PRNG key (split for z and for the latent model).
    scale: the latent scale factor s (`latent_scale`); the latent model's bound gets the
      change of variables -d log s.

  Returns `PixelBound` (`.total` is the bound); an unbiased estimate of the bound of
  the docstring above, whose mean over x is >= the data's cross-entropy.
  """
  key_z, key_latent = jax.random.split(key)
  z = sample_latent(key_z, mean, log_std)
  num_dims = math.prod(mean.shape[1:])
  log_scale = jnp.log(jnp.asarray(scale, jnp.float32))
  latent_nll = latent_nll_fn(scale * z, key_latent) - num_dims * log_scale
  return PixelBound(decoder_nll_fn(z), gaussian_entropy(log_std), latent_nll)


def latent_scale(mean: np.ndarray, log_std: np.ndarray) -> float:
  """1 / std of z ~ q(z | x) over a dataset and every latent dimension, from the encoder's
  moments (no sampling): Var z = E[mean^2 + std^2] - E[mean]^2. The latent model trains on
  scale * z, which then has unit variance (latent diffusion's scale factor)."""
  m = np.asarray(mean, np.float64)
  second = np.mean(np.square(m) + np.exp(2.0 * np.asarray(log_std, np.float64)))
  var = second - np.square(np.mean(m))
  if not np.isfinite(var) or var <= 0:
    raise ValueError(f"the latents' variance is {var}; the encoder's outputs are degenerate.")
  return float(1.0 / np.sqrt(var))


def psnr(x_int: np.ndarray, x_hat_int: np.ndarray, vocab_size: int = 256) -> np.ndarray:
  """Peak signal-to-noise ratio per example, dB: 10 log10((V - 1)^2 / MSE) in pixel units
  (inf for an exact reconstruction)."""
  diff = np.asarray(x_int, np.float64) - np.asarray(x_hat_int, np.float64)
  mse = np.mean(np.square(diff).reshape(diff.shape[0], -1), axis=-1)
  with np.errstate(divide="ignore"):
    return 10.0 * np.log10((vocab_size - 1) ** 2 / mse)


class AutoencoderTerms(NamedTuple):
  """decoder_nll: -log p(x | z) at z ~ q(z | x); kl: KL(q(z | x) || N(0, I)); each [B] nats.
  decoder_nll + kl is the evidence bound of the autoencoder alone (a standard normal prior)."""
  decoder_nll: Array
  kl: Array


class AutoencoderModel(nn.Module):
  """Stage 1 of latent diffusion: a `nets.KLAutoencoder` on discrete data [B, *image_shape].

  Methods (`apply(..., method=...)`):
    encode(x_int) -> (mean, log_std) of q(z | x) [B, *latent_shape];
    decoder_nll(x_int, z) -> -log p(x | z) [B] nats;
    decode(z, mode="mean" | "sample") -> integers [B, *image_shape] (mean: the logistic's
      location rounded to its bin; sample: a draw, with rngs={'sample': key});
    objective(x_int, train, key=None) -> (loss [B] = decoder_nll + kl_weight * kl,
      AutoencoderTerms), z = `sample_latent(key, ...)` (key None: the 'sample' rng).
  """
  autoencoder: autoencoder_nets.KLAutoencoder
  image_shape: Sequence[int] = (28, 28, 1)
  vocab_size: int | None = None
  data: likelihood.DataModel | None = None

  def __post_init__(self):
    data = likelihood.resolve(self.data, self.vocab_size)
    if not isinstance(data, likelihood.Discrete):
      raise ValueError(f"the autoencoder's decoder is a likelihood over discrete pixels; got "
                       f"{data.describe()}: set config.model.data = 'discrete'.")
    object.__setattr__(self, "data", data)
    object.__setattr__(self, "vocab_size", data.vocab_size)
    if tuple(self.autoencoder.image_shape) != tuple(self.image_shape):
      raise ValueError(f"the autoencoder is built for images {tuple(self.autoencoder.image_shape)}"
                       f", the model for {tuple(self.image_shape)}.")
    super().__post_init__()

  num_classes = 0   # labels are not used

  @property
  def latent_shape(self) -> tuple[int, int, int]:
    return self.autoencoder.latent_shape

  def _check(self, x_int: Array) -> None:
    self.data.check(x_int, "images")
    if tuple(x_int.shape[1:]) != tuple(self.image_shape):
      raise ValueError(f"images must have shape [B, {', '.join(map(str, self.image_shape))}], "
                       f"got {x_int.shape}.")

  def encode(self, x_int: Array) -> tuple[Array, Array]:
    self._check(x_int)
    return self.autoencoder.encode(self.data.encode(x_int))

  def decoder_nll(self, x_int: Array, z: Array) -> Array:
    loc, log_scale = self.autoencoder.decode(z)
    return discretized_logistic_nll(x_int, loc, log_scale, vocab_size=self.data.vocab_size,
                                    low=self.data.low, high=self.data.high)

  def decode(self, z: Array, mode: str = "mean") -> Array:
    loc, log_scale = self.autoencoder.decode(z)
    if mode == "sample":
      loc = loc + jnp.exp(log_scale) * jax.random.logistic(self.make_rng("sample"), loc.shape)
    elif mode != "mean":
      raise ValueError(f"decode mode must be 'mean' or 'sample', got {mode!r}.")
    d = self.data
    k = jnp.floor((loc - d.low) / ((d.high - d.low) / d.vocab_size))
    return jnp.clip(k, 0, d.vocab_size - 1).astype(jnp.int32)

  def objective(self, x_int: Array, labels=None, train: bool = False, key: Array | None = None):
    del labels, train   # unconditional; no dropout
    mean, log_std = self.encode(x_int)
    z = sample_latent(self.make_rng("sample") if key is None else key, mean, log_std)
    terms = AutoencoderTerms(self.decoder_nll(x_int, z), kl_to_standard_normal(mean, log_std))
    return terms.decoder_nll + self.autoencoder.kl_weight * terms.kl, terms

  def __call__(self, x_int: Array, labels=None):
    """For init (`model.init_variables`): the objective's computation, every parameter."""
    return self.objective(x_int)


def split_moments(moments: Array) -> tuple[Array, Array]:
  """[B, ..., 2c] -> (mean, log_std), each [B, ..., c]: the posterior moments as a latent
  dataset stores them (`training.latent_runs`), concatenated on the last axis."""
  if moments.shape[-1] % 2:
    raise ValueError(f"posterior moments have 2 * c channels (mean, log-std), got shape "
                     f"{moments.shape}.")
  return jnp.split(moments, 2, axis=-1)


class LatentVDM(model_lib.VDM):
  """Stage 2 of latent diffusion: a VDM on the scaled latents u = s z, z ~ q(z | x), of an
  autoencoder run (`autoencoder_workdir`), with continuous data of shape image_shape = the
  latent shape [h, w, c].

  Everything of `model.VDM` applies to u (eps, gamma, the samplers, classifier-free guidance,
  cross-attention networks); what differs is what it trains on: `objective` takes the
  posterior moments of u per image, [B, h, w, 2c] (mean and log-std concatenated; the training
  system computes them once per split with the autoencoder, `training.latent_runs`), and draws
  a fresh u ~ q(u | x) each time (the 'sample' rng), so the latent model learns the aggregate
  posterior that the pixel bound (`pixel_bound`) integrates over. `__call__` is the VDM bound on
  latents u themselves.

  Attributes (beyond VDM's):
    autoencoder_workdir: the stage-1 run (config.model.autoencoder_workdir).
    autoencoder_step: its checkpoint (None: the latest when stage 2 first started).
  """
  autoencoder_workdir: str = ""
  autoencoder_step: int | None = None

  def __post_init__(self):
    if not isinstance(likelihood.resolve(self.data, self.vocab_size), likelihood.Continuous):
      raise ValueError("a latent VDM models continuous latents: data=likelihood.Continuous().")
    super().__post_init__()

  def objective(self, moments: Array, labels: Array | None = None, *,
                train: bool = False) -> tuple[Array, losses.VDMLoss]:
    """(training objective [B], VDM bound [B] nats on u) at u ~ N(mean, exp(log_std)^2) from
    `moments` [B, *image_shape[:-1], 2 c]."""
    want = (*self.image_shape[:-1], 2 * self.image_shape[-1])
    if tuple(moments.shape[1:]) != want:
      raise ValueError(f"a latent VDM trains on posterior moments [B, {', '.join(map(str, want))}]"
                       f" (mean and log-std of latents {tuple(self.image_shape)}), got "
                       f"{tuple(moments.shape)}.")
    mean, log_std = split_moments(moments)
    u = sample_latent(self.make_rng("sample"), mean, log_std)
    return model_lib.VDM.objective(self, u, labels, train=train)

  def __call__(self, latents: Array, labels: Array | None = None, *,
               train: bool = False) -> losses.VDMLoss:
    """The VDM bound on latents u [B, *image_shape]: `losses.VDMLoss` of [B] nats."""
    return model_lib.VDM.objective(self, latents, labels, train=train)[1]
