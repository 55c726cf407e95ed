"""Cross-attention conditioning (Rombach et al. 2022): feature maps attend to a context.

    tau = ClassContext(num_classes=10, dim=64, num_tokens=4)
    context, mask = tau(labels)                       # [B, 4, 64], bool [B, 4]
    h = CrossAttention(num_heads=4)(h, context, mask)   # h [B, H, W, C] -> same shape

A context is a sequence of M tokens of width d per example, [B, M, d], with an optional mask
bool [B, M] (False: a padding token, attended to by nothing). Any conditioning encoder tau(y)
that returns (context, mask) plugs in; `ClassContext` is the one for class labels, whose null
label (`layers.null_labels`: label == num_classes) maps to the learned null context that
label dropout trains and classifier-free guidance asks for.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from vdm_jax.nets.layers import dense, group_norm

Dtype = Any


def check_context(x: jax.Array, context: jax.Array, mask: Optional[jax.Array]) -> None:
  """Shapes known at trace time: context [B, M, d] with x's batch; mask bool [B, M]."""
  if context.ndim != 3 or context.shape[0] != x.shape[0] or context.shape[1] < 1:
    raise ValueError(
        f"context must have shape [batch, tokens, width] = [{x.shape[0]}, M >= 1, d] for "
        f"features of shape {x.shape}, got {context.shape}.")
  if mask is not None:
    if mask.shape != context.shape[:2]:
      raise ValueError(f"context mask must have shape {context.shape[:2]} (one flag per "
                       f"context token), got {mask.shape}.")
    if mask.dtype != jnp.bool_:
      raise ValueError(f"context mask must be boolean (True: attend), got dtype {mask.dtype}.")


class CrossAttention(nn.Module):
  """Multi-head attention from every position of x to the context tokens; residual.

  h = GN(x) [B, N, C]; q = Dense(h); k, v = Dense(LayerNorm(context)) [B, M, C];
  out = x + proj_out(softmax(q k^T / sqrt(C / heads) where mask) v), per head. Tokens with mask
  False get zero weight; a row whose tokens are all masked adds nothing (out = x). proj_out is
  zero-initialised, so at initialisation the block is the identity.

  Call: x [B, ..., C] (C divisible by num_heads), context [B, M, d], mask bool [B, M] or None.
  Returns x's shape in `dtype`.
  """
  num_heads: int = 1
  dtype: Dtype = jnp.float32
  norm_groups: int = 0

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array,
               mask: Optional[jax.Array] = None) -> jax.Array:
    check_context(x, context, mask)
    x = x.astype(self.dtype)
    b, c, heads = x.shape[0], x.shape[-1], self.num_heads
    if heads < 1 or c % heads:
      raise ValueError(f"CrossAttention: num_heads={heads} must divide the {c} channels.")
    h = group_norm(c, "norm", self.dtype, groups=self.norm_groups)(x).reshape(b, -1, c)
    ctx = nn.LayerNorm(dtype=self.dtype, param_dtype=jnp.float32, name="context_norm")(
        context.astype(self.dtype))
    split = lambda a: a.reshape(*a.shape[:2], heads, c // heads)
    q = split(dense(c, "q", self.dtype)(h))
    k = split(dense(c, "k", self.dtype, use_bias=False)(ctx))   # a key bias cancels in softmax
    v = split(dense(c, "v", self.dtype)(ctx))
    logits = jnp.einsum("bnhd,bmhd->bhnm", q, k, preferred_element_type=jnp.float32)
    logits = logits * (1.0 / math.sqrt(c // heads))
    if mask is None:
      weights = jax.nn.softmax(logits, axis=-1)
    else:
      keep = mask[:, None, None, :]
      weights = jax.nn.softmax(jnp.where(keep, logits, -jnp.inf), axis=-1)
      weights = jnp.where(keep, weights, 0.0)   # all-masked rows: 0 instead of NaN
    out = jnp.einsum("bhnm,bmhd->bnhd", weights.astype(self.dtype), v).reshape(b, -1, c)
    out = dense(c, "proj_out", self.dtype, zero=True)(out)
    if mask is not None:   # nothing to attend to: not even the projection's bias
      out = out * jnp.any(mask, axis=-1)[:, None, None].astype(out.dtype)
    return x + out.reshape(x.shape)


class ClassContext(nn.Module):
  """tau(y) for class labels: each label -> `num_tokens` learned tokens of width `dim`.

  Call: labels int [B] in [0, num_classes] (num_classes is the null label), or None (all null).
  Returns (context float32 [B, num_tokens, dim], mask bool [B, num_tokens], all True).
  """
  num_classes: int
  dim: int = 64
  num_tokens: int = 1

  @nn.compact
  def __call__(self, labels: Optional[jax.Array], batch: Optional[int] = None):
    if labels is None:
      if batch is None:
        raise ValueError("ClassContext needs labels or, for the null context, the batch size.")
      labels = jnp.full((batch,), self.num_classes, jnp.int32)
    labels = jnp.asarray(labels)
    if labels.ndim != 1 or not jnp.issubdtype(labels.dtype, jnp.integer):
      raise ValueError(f"labels must be integers of shape [batch], got {labels.dtype} "
                       f"{labels.shape}.")
    table = nn.Embed(self.num_classes + 1, self.num_tokens * self.dim,
                     embedding_init=nn.initializers.normal(1.0), param_dtype=jnp.float32,
                     name="tokens")
    context = table(labels).reshape(labels.shape[0], self.num_tokens, self.dim)
    return context, jnp.ones(context.shape[:2], jnp.bool_)
