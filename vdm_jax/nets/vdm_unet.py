"""The VDM paper's score network: a full-resolution residual U-Net (Kingma et al. 2021, App. B).

No down-sampling: `n_layer` residual blocks on the way "down", a middle ResnetBlock / AttnBlock /
ResnetBlock, and `n_layer + 1` blocks on the way "up", each taking the concatenation of the
current activations and the mirrored skip connection. The paper's CIFAR-10 network is the default
configuration: `VDMScoreNet()` == 128 channels, 32 layers, Fourier features, no attention in the
blocks, dropout 0.1.

The identical blocks are stacked with `nn.scan` (parameters get a leading layer axis), so the
traced program, and hence compile time, does not grow with depth.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vdm_jax.nets.layers import (AttnBlock, ConditioningEmbedding, ResnetBlock, conv3x3,
                                 check_inputs, input_features, output_head)

Dtype = Any


class PathBlock(nn.Module):
  """What the down and up blocks share: their settings, and `block` = ResnetBlock [+ AttnBlock]."""
  n_embd: int
  with_attention: bool = False
  dropout: float = 0.0
  deterministic: bool = True
  dtype: Dtype = jnp.float32
  fast_conv_grad: bool = False
  attn_key_bias: bool = False
  norm_groups: int = 0

  def block(self, h: jax.Array, cond: jax.Array) -> jax.Array:
    """Called from the subclasses' compact `__call__`, whose submodules these are."""
    h = ResnetBlock(self.n_embd, self.dropout, self.deterministic, self.dtype,
                    self.fast_conv_grad, self.norm_groups, name="block")(h, cond)
    if self.with_attention:
      h = AttnBlock(self.dtype, self.attn_key_bias, self.norm_groups, name="attn")(h)
    return h


class DownBlock(PathBlock):
  """One down-path block: ResnetBlock(n_embd -> n_embd) [+ AttnBlock]. Returns (h, h): the carry
  and the skip connection."""

  @nn.compact
  def __call__(self, h: jax.Array, cond: jax.Array):
    h = self.block(h, cond)
    return h, h


class UpBlock(PathBlock):
  """One up-path block: ResnetBlock(2 n_embd -> n_embd) on concat([h, skip]) [+ AttnBlock]."""

  @nn.compact
  def __call__(self, h: jax.Array, skip: jax.Array, cond: jax.Array):
    h = self.block(jnp.concatenate([h, skip.astype(h.dtype)], axis=-1), cond)
    return h, None


class VDMScoreNet(nn.Module):
  """Noise-prediction network of the VDM paper.

  Call: `net.apply(params, z, cond, label=None, train=False, rngs={'dropout': key})`
    z:     float [B, H, W, C], the noisy latent z_t.
    cond:  float [B] (or scalar), log-SNR normalised to [0, 1] by the caller:
           (gamma_t - gamma_min) / (gamma_max - gamma_min).
    label: int [B] in [0, num_classes] (num_classes = the null label), or None (= null label).
           Must be None when num_classes == 0.
    train: dropout is applied only when True (then a 'dropout' rng is needed).
  Returns eps_hat: float32, shape of z.

  Output: eps_hat = z + conv_out(...) when `input_skip` (default, as the official code's
  "base measure": at high noise z_t ~ eps, so z_t is a good first guess of eps). conv_out is
  zero-initialised, so AT INITIALISATION THE OUTPUT IS EXACTLY z (exactly 0 with
  input_skip=False).

  Attributes:
    n_embd: channels of every block (paper: 128).
    n_layer: number of down blocks; there are n_layer + 1 up blocks (paper: 32).
    with_fourier_features: concatenate Base-2 Fourier features of z to the input (paper: True).
    fourier_freqs: their exponents f (features sin/cos(2^f * 2 pi z)); official (6, 7).
    with_attention: self-attention after every down/up block (paper CIFAR-10: False). The middle
      block always has one.
    dropout: dropout rate inside the residual blocks (paper: 0.1).
    num_classes: 0 for unconditional; else class-conditional with num_classes + 1 label rows.
    input_skip: return z + network output (see above).
    dtype: compute dtype (float32 or bfloat16); parameters are always float32.
    remat: rematerialise (checkpoint) each block in the backward pass.
    scan: stack the identical down/up blocks with nn.scan (params with a leading layer axis:
      'down' has n_layer, 'up' has n_layer + 1 entries). scan=False builds an unrolled network
      ('down_0', ..., 'up_0', ...) computing the same function; its compile time grows with depth.
    scan_unroll: with scan, how many blocks each loop iteration runs (`nn.scan`'s unroll): the
      same parameters and function; larger values give the compiler more to fuse and schedule
      across blocks (fewer loop iterations) for a longer compile.
    fast_conv_grad: compute the convolutions with `nets.conv.conv_general_dilated`, whose
      backward convolutions XLA:CPU keeps on its fast path inside loops (the scanned blocks'
      backward pass is otherwise 25-40x slower on CPU; other platforms use JAX's own backward
      pass either way). Same parameters and outputs. It is a custom VJP: set False to take
      forward-mode derivatives (jax.jvp) through the network.
    cond_scalar_input: the first conditioning Dense takes one more input, a zero, after the
      timestep embedding (`ConditioningEmbedding`): the official layout (n_embd + 1 inputs).
    attn_key_bias: the attention blocks' key projection has a bias (the official layout; it
      does not change the function, see `AttnBlock`).
    norm_groups: 0 for the channel-safe GroupNorm group count (`num_groups`: 32 from 64
      channels up, fewer below so that each group keeps two channels); else exactly this many
      groups in every GroupNorm (the official code: 32; it must divide n_embd).
  The official VDM network (google-research/vdm `ScoreUNet`) is `cond_scalar_input=True,
  attn_key_bias=True, norm_groups=32` with the defaults above (input_skip=True is its "base
  measure"); `vdm_jax.interop.official` maps its weights onto that layout.
  """
  n_embd: int = 128
  n_layer: int = 32
  with_fourier_features: bool = True
  fourier_freqs: Sequence[int] = (6, 7)
  with_attention: bool = False
  dropout: float = 0.1
  num_classes: int = 0
  input_skip: bool = True
  dtype: Dtype = jnp.float32
  remat: bool = False
  scan: bool = True
  scan_unroll: int = 1
  fast_conv_grad: bool = True
  cond_scalar_input: bool = False
  attn_key_bias: bool = False
  norm_groups: int = 0

  @nn.compact
  def __call__(self, z: jax.Array, cond: jax.Array, label: Optional[jax.Array] = None,
               train: bool = False) -> jax.Array:
    if self.n_layer < 1:
      raise ValueError(f"n_layer must be >= 1, got {self.n_layer}")
    if self.scan_unroll < 1:
      raise ValueError(f"scan_unroll must be >= 1 (blocks per loop iteration), got "
                       f"{self.scan_unroll}")
    if self.norm_groups < 0 or (self.norm_groups and self.n_embd % self.norm_groups):
      raise ValueError(f"norm_groups must be 0 (automatic) or divide n_embd={self.n_embd}, "
                       f"got {self.norm_groups}")
    cond = check_inputs(z, cond)
    c = ConditioningEmbedding(self.n_embd, self.num_classes, self.dtype, self.cond_scalar_input,
                              name="cond_embed")(cond, label)

    h = input_features(z, self.with_fourier_features, self.fourier_freqs, self.dtype)
    fast = self.fast_conv_grad
    h0 = conv3x3(self.n_embd, "conv_in", self.dtype, fast_grad=fast)(h)

    groups = self.norm_groups
    kw = dict(n_embd=self.n_embd, with_attention=self.with_attention, dropout=self.dropout,
              deterministic=not train, dtype=self.dtype, fast_conv_grad=fast,
              attn_key_bias=self.attn_key_bias, norm_groups=groups)
    down_cls, up_cls = DownBlock, UpBlock
    if self.remat:
      # prevent_cse is only needed outside scan (scan already stops CSE across the remat boundary).
      down_cls = nn.remat(DownBlock, prevent_cse=not self.scan)
      up_cls = nn.remat(UpBlock, prevent_cse=not self.scan)

    if self.scan:
      scan_kw = dict(variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                     unroll=self.scan_unroll)
      down = nn.scan(down_cls, in_axes=nn.broadcast, length=self.n_layer, **scan_kw)
      h, hs = down(**kw, name="down")(h0, c)               # hs: [n_layer, B, H, W, n_embd]
      skips = jnp.concatenate([h0[None], hs], axis=0)[::-1]  # last down output first
    else:
      hs = [h0]
      h = h0
      for i in range(self.n_layer):
        h, _ = down_cls(**kw, name=f"down_{i}")(h, c)
        hs.append(h)

    h = ResnetBlock(None, self.dropout, not train, self.dtype, fast, groups, name="mid_block1")(
        h, c)
    h = AttnBlock(self.dtype, self.attn_key_bias, groups, name="mid_attn")(h)
    h = ResnetBlock(None, self.dropout, not train, self.dtype, fast, groups, name="mid_block2")(
        h, c)

    if self.scan:
      up = nn.scan(up_cls, in_axes=(0, nn.broadcast), length=self.n_layer + 1, **scan_kw)
      h, _ = up(**kw, name="up")(h, skips, c)
    else:
      for i in range(self.n_layer + 1):
        h, _ = up_cls(**kw, name=f"up_{i}")(h, hs.pop(), c)

    return output_head(h, z, self.dtype, self.input_skip, fast, groups)


def unscanned_to_scanned(params, n_layer: int):
  """Maps the parameters of a `scan=False` VDMScoreNet onto the `scan=True` layout
  (stacking 'down_i' into 'down' and 'up_i' into 'up'), e.g. to load unrolled weights."""
  p = dict(params["params"] if "params" in params else params)
  down = [p.pop(f"down_{i}") for i in range(n_layer)]
  up = [p.pop(f"up_{i}") for i in range(n_layer + 1)]
  stack = lambda *xs: jnp.stack(xs)
  p["down"] = jax.tree_util.tree_map(stack, *down)
  p["up"] = jax.tree_util.tree_map(stack, *up)
  return {"params": p} if "params" in params else p
