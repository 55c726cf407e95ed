"""An MLP score network for data of any shape: vectors [B, D], sequences [B, L, C], small images.

Each example is flattened to D = prod(shape[1:]) numbers, optionally joined by their Fourier
features, and passed through residual blocks that each add the conditioning (log-SNR and label)
embedding. It has the call contract of the image networks (`vdm_jax.nets`), so it is a
`config.model.network` like them ("mlp").
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vdm_jax.nets.layers import ConditioningEmbedding, check_cond, dense, dropout, \
    input_features

Dtype = Any


class MLPBlock(nn.Module):
  """h + Dense(dropout(swish(Dense(swish(LayerNorm(h))) + Dense(cond_vec)))), last Dense zero."""
  features: int
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, h: jax.Array, cond_vec: jax.Array, train: bool) -> jax.Array:
    x = nn.LayerNorm(dtype=self.dtype, param_dtype=jnp.float32, name="norm")(h)
    x = dense(self.features, "dense0", self.dtype)(nn.swish(x))
    x = nn.swish(x + dense(self.features, "cond_proj", self.dtype, use_bias=False)(cond_vec))
    if train and self.dropout_rate > 0:
      x = dropout(x, self.dropout_rate, self.make_rng("dropout"))
    return h + dense(self.features, "dense1", self.dtype, zero=True)(x)


class MLPScoreNet(nn.Module):
  """eps_hat(z; cond, label) by an MLP over the flattened example.

  Call: `net.apply(params, z, cond, label=None, train=False, rngs={'dropout': key})`
    z: float [B, ...] of any shape; cond: float [B] (or scalar), log-SNR normalised to [0, 1];
    label: int [B] in [0, num_classes] (num_classes = null label) or None.
  Returns eps_hat: float32 of z's shape. The output layer is zero-initialised: at
  initialisation the output is exactly 0.

  Attributes:
    hidden: width of the residual stream.
    num_layers: residual blocks (`MLPBlock`).
    n_embd: size of the sinusoidal log-SNR embedding (the conditioning vector is 4 n_embd).
    with_fourier_features, fourier_freqs: add sin / cos(2^f 2 pi z) of every input number for
      each exponent f (`layers.fourier_features`). The defaults (periods 2 to 1/4) suit data
      scaled to unit standard deviation; for other scales shift the exponents by log2 of the
      scale of the detail the network should resolve.
    num_classes: 0 = unconditional; else labels as in the other networks.
    dropout: dropout rate inside the blocks (train=True only).
    dtype: compute dtype (params float32).
  """
  hidden: int = 256
  num_layers: int = 4
  n_embd: int = 64
  with_fourier_features: bool = True
  fourier_freqs: Sequence[int] = (-1, 0, 1, 2)
  num_classes: int = 0
  dropout: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z: jax.Array, cond: jax.Array, label: Optional[jax.Array] = None,
               train: bool = False) -> jax.Array:
    if z.ndim < 2:
      raise ValueError(f"z must be [B, ...] with at least one data dimension, got shape "
                       f"{z.shape}")
    cond = check_cond(z, cond)
    batch, dims = z.shape[0], math.prod(z.shape[1:])
    flat = jnp.asarray(z, jnp.float32).reshape(batch, dims, 1)   # one "channel" per number
    h = input_features(flat, self.with_fourier_features, self.fourier_freqs, self.dtype)
    h = dense(self.hidden, "dense_in", self.dtype)(h.reshape(batch, -1))
    cond_vec = ConditioningEmbedding(self.n_embd, self.num_classes, self.dtype,
                                     name="cond")(cond, label)
    for i in range(self.num_layers):
      h = MLPBlock(self.hidden, self.dropout, self.dtype, name=f"block{i}")(h, cond_vec, train)
    h = nn.swish(nn.LayerNorm(dtype=self.dtype, param_dtype=jnp.float32, name="norm_out")(h))
    out = dense(dims, "dense_out", self.dtype, zero=True)(h)
    return out.astype(jnp.float32).reshape(z.shape)
