"""A classifier of noisy inputs p(y | z_t), for classifier guidance (Dhariwal & Nichol 2021).

The down-sampling half of `nets.UNet` with a pooled head: conv_in, per level num_res_blocks
`ResnetBlock`s conditioned on gamma_t (the score networks' `ConditioningEmbedding` of the
normalised gamma), a stride-2 down-sample between levels, one more block, then GroupNorm,
swish, the spatial mean and a Dense layer to the logits.

    clf = NoisyClassifier(num_classes=10, ch=32, ch_mult=(1, 2, 2))
    params = clf.init(key, z_t, gamma_t)                       # z_t [B, H, W, C], gamma_t [B]
    logits = clf.apply(params, z_t, gamma_t)                   # [B, num_classes]
    log_p = clf.apply(params, z_t, gamma_t, labels, method=clf.log_prob)   # [B] nats

It takes gamma_t itself (not t), so it serves any schedule whose gammas lie in
[gamma_low, gamma_high], the range it normalises to [0, 1] (the library's default schedule
ends; values outside still work, extrapolated).
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vdm_jax import schedules
from vdm_jax.nets.layers import ConditioningEmbedding, ResnetBlock, conv3x3, dense, group_norm
from vdm_jax.nets.unet import Downsample

Dtype = Any


class NoisyClassifier(nn.Module):
  """p(y | z_t) as logits [B, num_classes] of latents z_t [B, H, W, C] at gamma_t [B].

  Attributes:
    num_classes: K, the number of classes (>= 2).
    ch: base channels; level i has ch * ch_mult[i] channels.
    ch_mult: channel multipliers, one per level (len(ch_mult) - 1 down-samplings).
    num_res_blocks: ResnetBlocks per level.
    dropout: dropout rate inside the blocks (training only).
    gamma_low, gamma_high: the gamma range mapped to the conditioning's [0, 1].
    dtype: compute dtype (parameters float32; logits float32).
  """
  num_classes: int
  ch: int = 32
  ch_mult: Sequence[int] = (1, 2, 2)
  num_res_blocks: int = 1
  dropout: float = 0.0
  gamma_low: float = schedules.GAMMA_MIN
  gamma_high: float = schedules.GAMMA_MAX
  dtype: Dtype = jnp.float32

  def __post_init__(self):
    if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or \
        self.num_classes < 2:
      raise ValueError(f"NoisyClassifier: num_classes must be an int >= 2, got "
                       f"{self.num_classes!r}.")
    if not self.gamma_low < self.gamma_high:
      raise ValueError(f"NoisyClassifier: gamma_low ({self.gamma_low}) must be below "
                       f"gamma_high ({self.gamma_high}).")
    super().__post_init__()

  @nn.compact
  def __call__(self, z: jax.Array, gamma_t: jax.Array, train: bool = False) -> jax.Array:
    if z.ndim != 4:
      raise ValueError(f"NoisyClassifier takes images [B, H, W, C], got shape {z.shape}.")
    gamma_t = jnp.broadcast_to(jnp.asarray(gamma_t, jnp.float32), (z.shape[0],))
    cond = (gamma_t - self.gamma_low) / (self.gamma_high - self.gamma_low)
    c = ConditioningEmbedding(self.ch, 0, self.dtype, name="cond_embed")(cond)
    h = conv3x3(self.ch, "conv_in", self.dtype)(z.astype(self.dtype))
    for i, mult in enumerate(self.ch_mult):
      for j in range(self.num_res_blocks):
        h = ResnetBlock(self.ch * mult, self.dropout, not train, self.dtype,
                        name=f"down{i}_block{j}")(h, c)
      if i != len(self.ch_mult) - 1:
        h = Downsample(self.dtype, name=f"down{i}_downsample")(h)
    h = ResnetBlock(None, self.dropout, not train, self.dtype, name="mid_block")(h, c)
    h = nn.swish(group_norm(h.shape[-1], "norm_out", self.dtype)(h))
    h = jnp.mean(h.astype(jnp.float32), axis=(1, 2))
    return dense(self.num_classes, "head", jnp.float32)(h)

  def log_prob(self, z: jax.Array, gamma_t: jax.Array, labels: jax.Array) -> jax.Array:
    """log p(labels | z_t), [B] nats (differentiable in z_t: the guidance gradient)."""
    logits = self(z, gamma_t)
    labels = jnp.asarray(labels)
    if labels.shape != (z.shape[0],) or not jnp.issubdtype(labels.dtype, jnp.integer):
      raise ValueError(f"labels must be int [B] = ({z.shape[0]},), got {labels.dtype} "
                       f"{labels.shape}.")
    log_p = jax.nn.log_softmax(logits, axis=-1)
    return jnp.take_along_axis(log_p, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]
