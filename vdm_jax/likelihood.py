"""Data encoding, the discrete decoder p(x | z_0), the prior term, and unit conversion.

Data are integers x_int in {0, ..., V-1} (V = vocab_size), encoded to bin centres
x = 2 (x_int + 1/2) / V - 1 in (-1, 1). All losses here are in nats per example; `nats_to_bpd`
converts to bits per dimension.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from vdm_jax import diffusion, schedules

Array = jax.Array


def check_inputs(x_int, vocab_size: int) -> None:
  """Checks the integer data x_int [B, ...] given to a loss; raises ValueError / TypeError.

  vocab_size, dtype and rank are checked always (they are known at trace time). The values are
  checked (`check_range`) only when x_int is concrete, i.e. when the call is eager; under jit,
  vmap or pmap they are not, since reading them would need a host round trip per step.
  """
  if not isinstance(vocab_size, (int, np.integer)) or vocab_size < 2:
    raise ValueError(f"vocab_size must be an int >= 2, got {vocab_size!r}.")
  dtype = jnp.asarray(x_int).dtype if not hasattr(x_int, "dtype") else x_int.dtype
  if not jnp.issubdtype(dtype, jnp.integer):
    raise TypeError(
        f"x_int must hold integers in [0, {vocab_size}) (e.g. uint8 pixels), got dtype {dtype}. "
        "Pass the raw integer data; the loss encodes it itself.")
  if jnp.ndim(x_int) < 2:
    raise ValueError(
        f"x_int must have shape [batch, ...] with at least one data dimension, got shape "
        f"{jnp.shape(x_int)}.")
  if not isinstance(x_int, jax.core.Tracer):
    check_range(x_int, vocab_size)


def check_range(x_int, vocab_size: int) -> None:
  """Host-side value check for data pipelines: every value in [0, vocab_size) (numpy, not traced)."""
  x = np.asarray(x_int)
  if x.size and (x.min() < 0 or x.max() >= vocab_size):
    raise ValueError(
        f"data values must lie in [0, {vocab_size}), found min {x.min()} and max {x.max()}. "
        "Quantise the data to vocab_size levels or set vocab_size to match it.")


def encode(x_int: Array, vocab_size: int = 256) -> Array:
  """Integers in [0, V) -> bin centres in (-1, 1), float32, same shape."""
  return 2.0 * (x_int.astype(jnp.float32) + 0.5) / vocab_size - 1.0


def decode(x: Array, vocab_size: int = 256) -> Array:
  """Continuous x -> nearest bin index in [0, V), int32, same shape (inverse of `encode`)."""
  idx = jnp.floor((x + 1.0) * vocab_size / 2.0)
  return jnp.clip(idx, 0, vocab_size - 1).astype(jnp.int32)


def decoder_logits(z_0: Array, gamma_0: Array, vocab_size: int = 256) -> Array:
  """Logits of the factorised discrete decoder p(x | z_0): shape z_0.shape + (V,).

  With z0r = z_0 / alpha_0, logit_k = -(z0r - enc(k))^2 / 2 * exp(-gamma_0), for any channel count.
  """
  g = diffusion.expand_to(gamma_0, z_0)
  z0r = z_0 / schedules.alpha(g)
  centres = encode(jnp.arange(vocab_size), vocab_size)
  return -0.5 * jnp.square(z0r[..., None] - centres) * jnp.exp(-g)[..., None]


def decoder_log_probs(z_0: Array, gamma_0: Array, vocab_size: int = 256) -> Array:
  """log p(x = k | z_0) for every k: shape z_0.shape + (V,), normalised over the last axis."""
  return jax.nn.log_softmax(decoder_logits(z_0, gamma_0, vocab_size), axis=-1)


def recon_loss(x_int: Array, z_0: Array, gamma_0: Array, vocab_size: int = 256) -> Array:
  """-log p(x | z_0) summed over data dimensions: [B] nats."""
  logp = decoder_log_probs(z_0, gamma_0, vocab_size)
  logp_x = jnp.take_along_axis(logp, x_int.astype(jnp.int32)[..., None], axis=-1)[..., 0]
  return -diffusion.sum_data_axes(logp_x)


def prior_kl(x: Array, gamma_1: Array) -> Array:
  """KL(q(z_1 | x) || N(0, I)) summed over data dimensions: [B] nats. x is the encoded data.

  0.5 (alpha^2 x^2 + sigma^2 - log sigma^2 - 1) = 0.5 (alpha^2 (x^2 - 1) + softplus(-gamma)).
  """
  g = diffusion.expand_to(gamma_1, x)
  kl = 0.5 * (schedules.alpha_sq(g) * (jnp.square(x) - 1.0) + jax.nn.softplus(-g))
  return diffusion.sum_data_axes(jnp.broadcast_to(kl, x.shape))


def nats_to_bpd(nats: Array, num_dims: int) -> Array:
  """Nats per example -> bits per dimension."""
  return nats / (num_dims * math.log(2.0))
