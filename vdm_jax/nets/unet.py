"""Multi-resolution DDPM-style U-Net (Ho et al. 2020), for cheaper runs than the VDM network.

Per level i (channels ch * ch_mult[i]): num_res_blocks ResnetBlocks (+ self-attention when the
spatial size is in attn_resolutions), then a stride-2 conv down-sample (not after the last level).
Middle: ResnetBlock, AttnBlock, ResnetBlock. Up path mirrored with num_res_blocks + 1 blocks per
level, each taking concat([h, skip]), and a nearest-neighbour up-sample + conv3x3 between levels.
Odd sizes are fine: 28 -> 14 -> 7 and back, or 7 -> 4 -> 7 (up-sampling resizes to the skip's size).

Conditioning on a class label enters either as a label embedding added to the time embedding
(label_conditioning="embedding") or through cross-attention (label_conditioning=
"cross_attention", latent diffusion's way): a `CrossAttention` block after each ResnetBlock at
the spatial sizes in cross_attn_resolutions and in the middle attends to a context [B, M, d],
by default the label's tokens (`ClassContext`), or any context passed to the call.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from vdm_jax.nets.cross_attention import ClassContext, CrossAttention
from vdm_jax.nets.layers import (AttnBlock, ConditioningEmbedding, ResnetBlock, conv3x3,
                                 check_inputs, input_features, output_head)

Dtype = Any


class Downsample(nn.Module):
  """conv3x3 with stride 2 ('SAME' padding: 28 -> 14 -> 7 -> 4)."""
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return conv3x3(x.shape[-1], "conv", self.dtype, strides=2)(x.astype(self.dtype))


class Upsample(nn.Module):
  """Nearest-neighbour resize to `size` (H, W), then conv3x3."""
  dtype: Dtype = jnp.float32
  fast_conv_grad: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, size: Tuple[int, int]) -> jax.Array:
    b, h, w, c = x.shape
    if size == (2 * h, 2 * w):
      x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    else:
      x = jax.image.resize(x, (b, *size, c), method="nearest")
    return conv3x3(c, "conv", self.dtype, fast_grad=self.fast_conv_grad)(x.astype(self.dtype))


class UNet(nn.Module):
  """DDPM-style U-Net with the same call contract as `VDMScoreNet`.

  Call: `net.apply(params, z, cond, label=None, train=False, context=None, context_mask=None,
  rngs={'dropout': key})`
    z: float [B, H, W, C]; cond: float [B] (or scalar), log-SNR normalised to [0, 1];
    label: int [B] in [0, num_classes] (num_classes = null label) or None (= null label);
    train: dropout only when True;
    context, context_mask: with label_conditioning="cross_attention", a context [B, M, d] and
      bool [B, M] (False: padding) to attend to instead of the label's tokens.
  Returns eps_hat: float32, shape of z.

  Output: conv_out(...) (+ z when input_skip=True). conv_out is zero-initialised, so AT
  INITIALISATION THE OUTPUT IS EXACTLY 0 (exactly z with input_skip=True).

  Attributes:
    ch: base channels; level i has ch * ch_mult[i] channels.
    ch_mult: channel multipliers, one per resolution level (len(ch_mult) - 1 down-samplings).
    num_res_blocks: ResnetBlocks per level on the way down (num_res_blocks + 1 on the way up).
    attn_resolutions: spatial sizes (height) at which self-attention follows each block.
    dropout, num_classes, dtype, remat, with_fourier_features, fourier_freqs, input_skip,
      cond_scalar_input, attn_key_bias, norm_groups: as in `VDMScoreNet` (norm_groups must
      divide every level's channels).
    label_conditioning: "embedding" (the label's embedding joins the time embedding) or
      "cross_attention" (the label's `ClassContext` tokens, context_tokens of width
      context_dim, are attended to by `CrossAttention` blocks with cross_attn_heads heads at
      cross_attn_resolutions and in the middle; the null label's tokens are the null context).
    fast_conv_grad: the stride-1 convolutions use `nets.conv.conv_general_dilated`, whose
      backward pass XLA:CPU runs on its fast path inside loops. Off by default: the U-Net has
      no loop of its own and outside loops XLA's own backward convolutions are faster (CPU
      train steps of the quickstart network: 68 images/s off, 50 on). The ODE bound turns it on
      (`evaluation.ode_per_example`): its vector-Jacobian products run inside the solver's
      loop, 6x faster with it. Same parameters and outputs either way; reverse-mode only.
  Defaults are DDPM's CIFAR-10 network (35.7M parameters); for 28x28 data use e.g.
  ch_mult=(1, 2, 2) (28 -> 14 -> 7) and attn_resolutions=(14,) or (7,).
  """
  ch: int = 128
  ch_mult: Sequence[int] = (1, 2, 2, 2)
  num_res_blocks: int = 2
  attn_resolutions: Sequence[int] = (16,)
  dropout: float = 0.1
  num_classes: int = 0
  with_fourier_features: bool = False
  fourier_freqs: Sequence[int] = (6, 7)
  input_skip: bool = False
  dtype: Dtype = jnp.float32
  remat: bool = False
  cond_scalar_input: bool = False
  attn_key_bias: bool = False
  norm_groups: int = 0
  fast_conv_grad: bool = False
  label_conditioning: str = "embedding"
  context_dim: int = 64
  context_tokens: int = 1
  cross_attn_heads: int = 1
  cross_attn_resolutions: Sequence[int] = ()

  @nn.compact
  def __call__(self, z: jax.Array, cond: jax.Array, label: Optional[jax.Array] = None,
               train: bool = False, context: Optional[jax.Array] = None,
               context_mask: Optional[jax.Array] = None) -> jax.Array:
    groups = self.norm_groups
    if groups < 0 or (groups and any(self.ch * m % groups for m in self.ch_mult)):
      raise ValueError(f"norm_groups must be 0 (automatic) or divide every level's channels "
                       f"{[self.ch * m for m in self.ch_mult]}, got {groups}")
    cond = check_inputs(z, cond)
    cross = self.label_conditioning == "cross_attention"
    if self.label_conditioning not in ("embedding", "cross_attention"):
      raise ValueError(f"label_conditioning must be 'embedding' or 'cross_attention', got "
                       f"{self.label_conditioning!r}")
    if context is not None and not cross:
      raise ValueError("a context was given to a U-Net without cross-attention: set "
                       "label_conditioning='cross_attention'.")
    if cross and context is None:
      if self.num_classes == 0:
        raise ValueError("cross-attention conditioning needs a context, or num_classes > 0 "
                         "for the labels' tokens.")
      context, context_mask = ClassContext(self.num_classes, self.context_dim,
                                           self.context_tokens, name="class_context")(
                                               label, batch=z.shape[0])
    c = ConditioningEmbedding(self.ch, 0 if cross else self.num_classes, self.dtype,
                              self.cond_scalar_input, name="cond_embed")(
                                  cond, None if cross else label)
    res_cls = nn.remat(ResnetBlock) if self.remat else ResnetBlock
    attn_cls = nn.remat(AttnBlock) if self.remat else AttnBlock
    det = not train
    fast = self.fast_conv_grad

    def res(out_ch, name):
      return res_cls(out_ch, self.dropout, det, self.dtype, fast_conv_grad=fast,
                     norm_groups=groups, name=name)

    def attn(name):
      return attn_cls(self.dtype, self.attn_key_bias, groups, name=name)

    def cross_attn(h, name):
      if not cross:
        return h
      return CrossAttention(self.cross_attn_heads, self.dtype, groups, name=name)(
          h, context, context_mask)

    h = input_features(z, self.with_fourier_features, self.fourier_freqs, self.dtype)
    h = conv3x3(self.ch, "conv_in", self.dtype, fast_grad=fast)(h)
    hs = [h]
    last = len(self.ch_mult) - 1
    for i, mult in enumerate(self.ch_mult):
      for j in range(self.num_res_blocks):
        h = res(self.ch * mult, f"down{i}_block{j}")(h, c)
        if h.shape[1] in self.attn_resolutions:
          h = attn(f"down{i}_attn{j}")(h)
        if h.shape[1] in self.cross_attn_resolutions:
          h = cross_attn(h, f"down{i}_cross{j}")
        hs.append(h)
      if i != last:
        h = Downsample(self.dtype, name=f"down{i}_downsample")(h)
        hs.append(h)

    h = res(None, "mid_block1")(h, c)
    h = attn("mid_attn")(h)
    h = cross_attn(h, "mid_cross")
    h = res(None, "mid_block2")(h, c)

    for i in reversed(range(len(self.ch_mult))):
      for j in range(self.num_res_blocks + 1):
        h = res(self.ch * self.ch_mult[i], f"up{i}_block{j}")(
            jnp.concatenate([h, hs.pop()], axis=-1), c)
        if h.shape[1] in self.attn_resolutions:
          h = attn(f"up{i}_attn{j}")(h)
        if h.shape[1] in self.cross_attn_resolutions:
          h = cross_attn(h, f"up{i}_cross{j}")
      if i != 0:
        h = Upsample(self.dtype, fast, name=f"up{i}_upsample")(h, tuple(hs[-1].shape[1:3]))
    assert not hs

    return output_head(h, z, self.dtype, self.input_skip, fast_conv_grad=fast,
                       norm_groups=groups)
