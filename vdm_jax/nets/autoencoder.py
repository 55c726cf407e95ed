"""A KL-regularised convolutional autoencoder whose decoder is a likelihood over pixels.

    enc, dec = Encoder(latent_channels=4), Decoder(out_channels=1)
    mean, log_std = enc.apply(p_enc, x)           # x float [B, H, W, C] in [-1, 1]
    loc, log_scale = dec.apply(p_dec, z)          # z [B, H / f, W / f, latent_channels]

The encoder gives a diagonal Gaussian q(z | x) on latents [H / f, W / f, c] with downsampling
factor f = 2 ** (len(ch_mult) - 1); the decoder gives, per pixel dimension, the location and
log-scale of a discretised logistic over the 8-bit bins (`latent.discretized_logistic_nll`),
so -log p(x | z) is a real likelihood. Spatial sizes that do not halve evenly are fine
(28 -> 14 -> 7; the decoder resizes back to `image_shape`).
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vdm_jax.nets.layers import ResnetBlock, conv3x3, group_norm
from vdm_jax.nets.unet import Downsample, Upsample

Dtype = Any

# log-std of q(z | x) and log-scale of the decoder's logistic are clipped to these ranges: wide
# enough to be inactive in practice, and they keep exp() finite from the first step.
LOG_STD_RANGE = (-15.0, 5.0)
LOG_SCALE_RANGE = (-9.0, 3.0)


class Encoder(nn.Module):
  """x [B, H, W, C] -> (mean, log_std) of q(z | x), each [B, H / f, W / f, latent_channels].

  conv_in, then per level i num_res_blocks ResnetBlocks of ch * ch_mult[i] channels and a
  stride-2 down-sample between levels; GN, swish, conv3x3 to 2 * latent_channels.
  """
  latent_channels: int = 4
  ch: int = 32
  ch_mult: Sequence[int] = (1, 2, 2)
  num_res_blocks: int = 1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    h = conv3x3(self.ch, "conv_in", self.dtype)(x.astype(self.dtype))
    for i, mult in enumerate(self.ch_mult):
      for j in range(self.num_res_blocks):
        h = ResnetBlock(self.ch * mult, dtype=self.dtype, name=f"down{i}_block{j}")(h, None)
      if i != len(self.ch_mult) - 1:
        h = Downsample(self.dtype, name=f"down{i}_downsample")(h)
    h = nn.swish(group_norm(h.shape[-1], "norm_out", self.dtype)(h))
    h = conv3x3(2 * self.latent_channels, "conv_out", self.dtype)(h).astype(jnp.float32)
    mean, log_std = jnp.split(h, 2, axis=-1)
    return mean, jnp.clip(log_std, *LOG_STD_RANGE)


class Decoder(nn.Module):
  """z [B, h, w, c] -> (loc, log_scale) of the per-dimension discretised logistic, each
  [B, *image_shape] (loc on the data scale [-1, 1]).

  conv_in, then per level (reversed) num_res_blocks ResnetBlocks and a nearest up-sample +
  conv3x3 between levels, resized to the encoder's sizes for `image_shape`; GN, swish, conv3x3
  to 2 * C.
  """
  image_shape: Sequence[int] = (28, 28, 1)
  ch: int = 32
  ch_mult: Sequence[int] = (1, 2, 2)
  num_res_blocks: int = 1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z: jax.Array) -> tuple[jax.Array, jax.Array]:
    sizes = latent_sizes(self.image_shape[:2], len(self.ch_mult))   # per level, largest first
    if tuple(z.shape[1:3]) != sizes[-1]:
      raise ValueError(f"the decoder of images {tuple(self.image_shape)} takes latents of "
                       f"spatial size {sizes[-1]}, got {tuple(z.shape[1:3])}.")
    h = conv3x3(self.ch * self.ch_mult[-1], "conv_in", self.dtype)(z.astype(self.dtype))
    for i in reversed(range(len(self.ch_mult))):
      for j in range(self.num_res_blocks):
        h = ResnetBlock(self.ch * self.ch_mult[i], dtype=self.dtype,
                        name=f"up{i}_block{j}")(h, None)
      if i != 0:
        h = Upsample(self.dtype, name=f"up{i}_upsample")(h, sizes[i - 1])
    h = nn.swish(group_norm(h.shape[-1], "norm_out", self.dtype)(h))
    h = conv3x3(2 * self.image_shape[-1], "conv_out", self.dtype)(h).astype(jnp.float32)
    loc, log_scale = jnp.split(h, 2, axis=-1)
    return loc, jnp.clip(log_scale, *LOG_SCALE_RANGE)


def latent_sizes(hw: Sequence[int], levels: int) -> list[tuple[int, int]]:
  """Spatial sizes per level of the encoder, [(H, W), (ceil(H / 2), ...), ...]: 'SAME'
  stride-2 convolutions round up (28 -> 14 -> 7, 7 -> 4)."""
  sizes = [tuple(int(v) for v in hw)]
  for _ in range(levels - 1):
    sizes.append(tuple(-(-v // 2) for v in sizes[-1]))
  return sizes


class KLAutoencoder(nn.Module):
  """The encoder and decoder of one autoencoder, with the weight of its KL term.

  Methods (`apply(..., method=...)`): `encode(x)` -> (mean, log_std) of q(z | x); `decode(z)`
  -> (loc, log_scale) of p(x | z); `__call__(x, z)` runs both (for init). x is on the data
  scale [-1, 1] ([B, *image_shape]); latents are [B, *latent_shape].

  Attributes:
    latent_channels: c of the latents [H / f, W / f, c].
    ch, ch_mult, num_res_blocks: as the U-Net's; f = 2 ** (len(ch_mult) - 1).
    kl_weight: beta of the training loss -log p(x | z) + beta KL(q(z | x) || N(0, I)) (1 is the
      evidence bound itself; reported bounds always use 1).
    image_shape: (H, W, C) of the data (the model's).
  """
  latent_channels: int = 4
  ch: int = 32
  ch_mult: Sequence[int] = (1, 2, 2)
  num_res_blocks: int = 1
  kl_weight: float = 1.0
  image_shape: Sequence[int] = (28, 28, 1)
  dtype: Dtype = jnp.float32

  def __post_init__(self):
    if len(self.ch_mult) not in (2, 3):
      raise ValueError(f"ch_mult={tuple(self.ch_mult)} gives downsampling factor "
                       f"{2 ** (len(self.ch_mult) - 1)}; the autoencoder takes 2 or 4 (two or "
                       "three levels).")
    if self.latent_channels < 1 or self.kl_weight < 0:
      raise ValueError(f"latent_channels must be >= 1 and kl_weight >= 0, got "
                       f"{self.latent_channels} and {self.kl_weight}.")
    super().__post_init__()

  def setup(self):
    kw = dict(ch=self.ch, ch_mult=self.ch_mult, num_res_blocks=self.num_res_blocks,
              dtype=self.dtype)
    self.encoder = Encoder(self.latent_channels, **kw)
    self.decoder = Decoder(tuple(self.image_shape), **kw)

  @property
  def latent_shape(self) -> tuple[int, int, int]:
    return (*latent_sizes(self.image_shape[:2], len(self.ch_mult))[-1], self.latent_channels)

  def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    return self.encoder(x)

  def decode(self, z: jax.Array) -> tuple[jax.Array, jax.Array]:
    return self.decoder(z)

  def __call__(self, x: jax.Array, z: jax.Array):
    return self.encode(x), self.decode(z)
