"""Layers shared by the score networks.

Conventions used throughout `vdm_jax.nets`:

* Images are NHWC.
* Parameters are always float32 (`param_dtype=jnp.float32`); `dtype` is the compute dtype
  (float32 by default, bfloat16 optionally). Inputs are cast to the compute dtype by each
  layer; GroupNorm statistics and the attention softmax are computed in float32.
* Output layers of every residual branch are zero-initialised, so every block is the identity
  at initialisation and the network output is fixed by its final zero-initialised convolution.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vdm_jax.nets import conv as conv_lib

Dtype = Any

zeros_init = nn.initializers.zeros


def null_labels(batch: int, num_classes: int) -> jax.Array:
  """The null label ("no class") for `batch` examples: int32 [batch] filled with num_classes,
  the last row of `ConditioningEmbedding`'s label table (unconditional rows of a
  class-conditional model: label dropout, classifier-free guidance, labels=None)."""
  return jnp.full((batch,), num_classes, jnp.int32)


def timestep_embedding(t: jax.Array, dim: int, *, scale: float = 1000.0,
                       max_period: float = 10000.0) -> jax.Array:
  """Sinusoidal embedding of a batch of scalars, as in tensor2tensor / the VDM code.

  Args:
    t: float [B] (for the score networks: log-SNR normalised to [0, 1]).
    dim: embedding size (>= 4); odd sizes are zero-padded by one column.
    scale: `t` is multiplied by this first (1000, as in the official code, so that
      t in [0, 1] spans the same range as DDPM's integer timesteps).
    max_period: the lowest frequency is 1 / max_period.

  Returns:
    float32 [B, dim]: [sin(scale * t * f_k), cos(scale * t * f_k)], with
    f_k = max_period ** (-k / (dim // 2 - 1)), k = 0 .. dim // 2 - 1.
  """
  t = jnp.asarray(t, jnp.float32)
  if t.ndim != 1:
    raise ValueError(f"timestep_embedding expects t of shape [B], got {t.shape}")
  half = dim // 2
  if half < 2:
    raise ValueError(f"timestep_embedding needs dim >= 4, got {dim}")
  freqs = jnp.exp(-math.log(max_period) / (half - 1) * jnp.arange(half, dtype=jnp.float32))
  args = (t * scale)[:, None] * freqs[None, :]
  emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=1)
  if dim % 2 == 1:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


def fourier_features(z: jax.Array, freqs: Sequence[int]) -> jax.Array:
  """Base-2 Fourier features of `z` (VDM paper, Appendix C; official `Base2FourierFeatures`).

  For every input channel c and every exponent f in `freqs`, returns sin(2^f * 2*pi * z_c) and
  cos(2^f * 2*pi * z_c). With the official default f in {6, 7} these are the paper's
  sin/cos(2^n * pi * z) for n in {7, 8}: periods 1/64 and 1/128 in z, i.e. one and two 8-bit bins
  (bin width 2/256). They expose the fine detail of z that the network would otherwise struggle
  to resolve, which matters for likelihood.

  Always computed in float32 (bf16 cannot resolve 2^7 * 2*pi * z).

  Args:
    z: [..., C].
    freqs: exponents f (ints).

  Returns:
    float32 [..., 2 * len(freqs) * C], laid out as [sin | cos], each channel-major
    (c0f0, c0f1, ..., c1f0, ...) as in the official code.
  """
  z = jnp.asarray(z, jnp.float32)
  w = jnp.asarray((2.0 ** np.asarray(freqs, dtype=np.float64)) * 2.0 * np.pi, jnp.float32)
  h = (z[..., :, None] * w).reshape(*z.shape[:-1], z.shape[-1] * len(freqs))
  return jnp.concatenate([jnp.sin(h), jnp.cos(h)], axis=-1)


def num_groups(channels: int, max_groups: int = 32, min_group_size: int = 2) -> int:
  """Number of GroupNorm groups for `channels`: the largest divisor of `channels` that is at
  most min(max_groups, channels // min_group_size) (at least 1).

  For the usual widths (>= 64 channels) this is the standard 32. At small widths it keeps at
  least two channels per group: with one channel per group GroupNorm removes every per-channel
  constant over H, W, which would erase the conditioning projection added before the second
  norm of each ResnetBlock (and make the conv bias before it useless).
  """
  limit = max(1, min(max_groups, channels // min_group_size))
  for g in range(limit, 0, -1):
    if channels % g == 0:
      return g
  return 1


class GroupNorm(nn.Module):
  """Group normalisation of channels-last inputs, with learned per-channel scale and bias.

  y = (x - mean_g) / sqrt(var_g + epsilon) * scale + bias, with mean_g and var_g over every
  position and the channels of each of `num_groups` groups, per example; var_g = E[x^2] - E[x]^2
  (clipped at 0), all statistics in float32. The same function, parameters ('scale', 'bias',
  float32 [C]) and variance formula as `flax.linen.GroupNorm(use_fast_variance=True)`; the
  statistics are reduced per channel first and then per group, which XLA:CPU runs 4x faster
  than reducing over the grouped layout (the norms were ~20% of the score networks' forward).

  Input [B, ..., C] with C divisible by num_groups; output of the same shape in `dtype`.
  """
  num_groups: int
  epsilon: float = 1e-6
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, c, g = x.shape[0], x.shape[-1], self.num_groups
    if x.ndim < 2 or c % g:
      raise ValueError(f"GroupNorm({g} groups) needs [B, ..., C] with C divisible by {g}, "
                       f"got shape {x.shape}")
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    flat = x.astype(jnp.float32).reshape(b, -1, c)
    count = flat.shape[1] * (c // g)
    per_group = lambda v: jnp.sum(v, axis=1).reshape(b, g, c // g).sum(axis=-1)   # [B, G]
    mean = per_group(flat) / count
    var = jnp.maximum(per_group(jnp.square(flat)) / count - jnp.square(mean), 0.0)
    per_channel = lambda v: jnp.repeat(v, c // g, axis=1)[:, None, :]             # [B, 1, C]
    inv = per_channel(jax.lax.rsqrt(var + self.epsilon)) * scale
    y = (flat - per_channel(mean)) * inv + bias
    return y.reshape(x.shape).astype(self.dtype)


def group_norm(channels: int, name: str, dtype: Dtype = jnp.float32,
               max_groups: int = 32, groups: int = 0) -> GroupNorm:
  """GroupNorm with float32 params and float32 statistics whatever the compute `dtype` is.

  groups: 0 for the channel-safe count `num_groups(channels, max_groups)`; else exactly this
    many groups (it must divide `channels`), e.g. 32 as in the official VDM code, which keeps
    32 groups even where that leaves one channel per group.
  """
  count = groups if groups > 0 else num_groups(channels, max_groups)
  return GroupNorm(num_groups=count, epsilon=1e-6, dtype=dtype, name=name)


def conv3x3(features: int, name: str, dtype: Dtype, *, strides: int = 1,
            zero: bool = False, fast_grad: bool = False) -> nn.Conv:
  """3x3 'SAME' conv with float32 params; zero-initialised kernel when `zero`.

  fast_grad: compute with `conv.conv_general_dilated`, whose backward pass XLA:CPU runs on its
    fast path inside loops (scanned blocks); reverse-mode only (no jax.jvp). Same parameters and
    outputs either way.
  """
  kw = dict(kernel_init=zeros_init) if zero else {}
  if fast_grad:
    kw["conv_general_dilated"] = conv_lib.conv_general_dilated
  return nn.Conv(features, kernel_size=(3, 3), strides=(strides, strides), padding="SAME",
                 dtype=dtype, param_dtype=jnp.float32, name=name, **kw)


def dense(features: int, name: str, dtype: Dtype, *, use_bias: bool = True,
          zero: bool = False) -> nn.Dense:
  """Dense with float32 params; zero-initialised kernel when `zero`."""
  kw = dict(kernel_init=zeros_init) if zero else {}
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32, name=name,
                  **kw)


class ConditioningEmbedding(nn.Module):
  """Conditioning vector from the normalised log-SNR and an optional class label.

  cond_vec = swish(Dense(swish(Dense(timestep_embedding(cond, n_embd)))))  [B, 4 * n_embd]
             + Embed(label)                                   (only when num_classes > 0)

  The label table has num_classes + 1 rows; row `num_classes` is the null label (used when
  `label is None`, and the "unconditional" label for classifier-free guidance). Labels must lie
  in [0, num_classes]: larger values (not checkable under jit) give NaN outputs.

  cond_scalar_input: append one more input to the embedding, [timestep_embedding, s] with
    s = 0 for every example, so that dense0 has n_embd + 1 inputs. This is the official VDM
    network's layout: there s is a per-example "conditioning" scalar, which is 0 for
    un-augmented data and in sampling (every use this project makes of such a network), so the
    extra kernel row is kept for parameter parity and contributes nothing.
  """
  n_embd: int
  num_classes: int = 0
  dtype: Dtype = jnp.float32
  cond_scalar_input: bool = False

  @nn.compact
  def __call__(self, cond: jax.Array, label: Optional[jax.Array] = None) -> jax.Array:
    temb = timestep_embedding(cond, self.n_embd)
    if self.cond_scalar_input:
      temb = jnp.concatenate([temb, jnp.zeros((temb.shape[0], 1), temb.dtype)], axis=1)
    c = nn.swish(dense(4 * self.n_embd, "dense0", self.dtype)(temb))
    c = nn.swish(dense(4 * self.n_embd, "dense1", self.dtype)(c))
    if self.num_classes > 0:
      if label is None:
        label = null_labels(cond.shape[0], self.num_classes)
      label = jnp.asarray(label)
      if label.shape != cond.shape:
        raise ValueError(f"label must have shape {cond.shape} (one per example), got {label.shape}")
      if not jnp.issubdtype(label.dtype, jnp.integer):
        raise ValueError(f"label must be an integer array, got dtype {label.dtype}")
      c = c + nn.Embed(self.num_classes + 1, 4 * self.n_embd, dtype=self.dtype,
                       param_dtype=jnp.float32, name="label_embed")(label)
    elif label is not None:
      raise ValueError("a label was given to an unconditional network (num_classes=0); "
                       "set num_classes > 0 or pass label=None")
    return c


def _fmix32(h: jax.Array) -> jax.Array:
  """MurmurHash3's 32-bit finaliser: a bijective avalanche mix of uint32 values."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def dropout_bits(key: jax.Array, shape: Sequence[int]) -> jax.Array:
  """uint32 random bits of `shape` from a PRNG key, by a counter-based hash.

  bits[i] = fmix32(fmix32(i * golden + s0) ^ s1), with (s0, s1) a hash of the key's words. Two
  rounds of MurmurHash3's finaliser per element (about 12 integer ops) instead of threefry's 20
  rounds: statistically plenty for dropout masks, and 10x cheaper to run and to compile on CPU,
  where threefry made mask generation a visible part of the paper network's train step. Not a
  general-purpose generator: use jax.random for anything else.
  """
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  words = jnp.asarray(key).reshape(-1).astype(jnp.uint32)
  s0 = _fmix32(words[0] ^ jnp.uint32(0x9E3779B9))
  for w in [words[i] for i in range(1, words.shape[0])]:
    s0 = _fmix32(s0 ^ (w + jnp.uint32(0x7F4A7C15)))
  s1 = _fmix32(s0 + jnp.uint32(0x632BE5AB))
  n = int(np.prod(shape))
  i = jax.lax.iota(jnp.uint32, n).reshape(tuple(shape))
  return _fmix32(_fmix32(i * jnp.uint32(0x9E3779B9) + s0) ^ s1)


def dropout(x: jax.Array, rate: float, key: jax.Array) -> jax.Array:
  """Inverted dropout: zero each element with probability `rate`, scale the rest by
  1 / (1 - rate). Masks from `dropout_bits` (keep when bits >= rate * 2^32)."""
  if rate <= 0.0:
    return x
  if rate >= 1.0:
    return jnp.zeros_like(x)
  threshold = jnp.uint32(min(int(round(rate * 2.0 ** 32)), 2 ** 32 - 1))
  keep = dropout_bits(key, x.shape) >= threshold
  return jnp.where(keep, x * jnp.asarray(1.0 / (1.0 - rate), x.dtype), jnp.zeros((), x.dtype))


class ResnetBlock(nn.Module):
  """Residual block: GN, swish, conv3x3, + Dense(cond), GN, swish, dropout, conv3x3 (zero-init).

  The skip path is a 1x1 projection (`nin_shortcut`) when the channel count changes. The
  conditioning projection and the second conv are zero-initialised (as in the official code),
  so the block is the identity (or the 1x1 projection) at initialisation.
  `fast_conv_grad`: see `conv3x3` (fast_grad). `norm_groups`: see `group_norm` (groups).
  """
  out_ch: Optional[int] = None
  dropout: float = 0.0
  deterministic: bool = True
  dtype: Dtype = jnp.float32
  fast_conv_grad: bool = False
  norm_groups: int = 0

  @nn.compact
  def __call__(self, x: jax.Array, cond: Optional[jax.Array]) -> jax.Array:
    x = x.astype(self.dtype)
    c_in = x.shape[-1]
    out_ch = c_in if self.out_ch is None else self.out_ch
    h = nn.swish(group_norm(c_in, "norm1", self.dtype, groups=self.norm_groups)(x))
    h = conv3x3(out_ch, "conv1", self.dtype, fast_grad=self.fast_conv_grad)(h)
    if cond is not None:
      h = h + dense(out_ch, "cond_proj", self.dtype, use_bias=False, zero=True)(
          cond)[:, None, None, :]
    h = nn.swish(group_norm(out_ch, "norm2", self.dtype, groups=self.norm_groups)(h))
    if self.dropout > 0 and not self.deterministic:
      h = dropout(h, self.dropout, self.make_rng("dropout"))
    h = conv3x3(out_ch, "conv2", self.dtype, zero=True, fast_grad=self.fast_conv_grad)(h)
    if c_in != out_ch:
      x = dense(out_ch, "nin_shortcut", self.dtype)(x)
    return x + h


class AttnBlock(nn.Module):
  """Single-head self-attention over the H*W positions, residual, zero-init output projection.

  h = GN(x); q, k, v = Dense(h); out = x + proj_out(softmax(q k^T / sqrt(C)) v).
  The key projection has no bias by default: a key bias adds q.b_k to every logit of a query,
  which the softmax removes, so such a bias would never receive a gradient. `key_bias=True`
  keeps one anyway, for the official VDM layout (same function, C more parameters).
  `norm_groups`: see `group_norm` (groups).
  """
  dtype: Dtype = jnp.float32
  key_bias: bool = False
  norm_groups: int = 0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.astype(self.dtype)
    b, hgt, wdt, c = x.shape
    h = group_norm(c, "norm", self.dtype, groups=self.norm_groups)(x).reshape(b, hgt * wdt, c)
    q = dense(c, "q", self.dtype)(h)
    k = dense(c, "k", self.dtype, use_bias=self.key_bias)(h)
    v = dense(c, "v", self.dtype)(h)
    logits = jnp.einsum("bqc,bkc->bqk", q, k, preferred_element_type=jnp.float32)
    weights = jax.nn.softmax(logits * (1.0 / math.sqrt(c)), axis=-1).astype(self.dtype)
    h = jnp.einsum("bqk,bkc->bqc", weights, v)
    h = dense(c, "proj_out", self.dtype, zero=True)(h)
    return x + h.reshape(b, hgt, wdt, c)


def check_inputs(z: jax.Array, cond: jax.Array) -> jax.Array:
  """Validates the (z, cond) shapes of the image networks' contract; returns cond as float32
  [B]."""
  if z.ndim != 4:
    raise ValueError(f"z must be [B, H, W, C], got shape {z.shape}: this network takes images; "
                     "for data of other shapes use nets.MLPScoreNet (config.model.network="
                     "'mlp').")
  return check_cond(z, cond)


def check_cond(z: jax.Array, cond: jax.Array) -> jax.Array:
  """cond as float32 [B] for z [B, ...]: a scalar is broadcast; ValueError for other shapes."""
  cond = jnp.asarray(cond, jnp.float32)
  if cond.ndim == 0:
    cond = jnp.broadcast_to(cond, (z.shape[0],))
  if cond.shape != (z.shape[0],):
    raise ValueError(f"cond must be a scalar or have shape [B]=({z.shape[0]},), got {cond.shape}")
  return cond


def input_features(z: jax.Array, with_fourier_features: bool, freqs: Sequence[int],
                   dtype: Dtype) -> jax.Array:
  """z, optionally concatenated with its Base-2 Fourier features, cast to the compute dtype."""
  h = jnp.asarray(z, jnp.float32)
  if with_fourier_features:
    h = jnp.concatenate([h, fourier_features(h, freqs)], axis=-1)
  return h.astype(dtype)


def output_head(h: jax.Array, z: jax.Array, dtype: Dtype, input_skip: bool,
                fast_conv_grad: bool = False, norm_groups: int = 0) -> jax.Array:
  """GN, swish, zero-initialised conv3x3 to z's channels; float32 out; optionally + z."""
  h = nn.swish(group_norm(h.shape[-1], "norm_out", dtype, groups=norm_groups)(h))
  out = conv3x3(z.shape[-1], "conv_out", dtype, zero=True, fast_grad=fast_conv_grad)(h).astype(
      jnp.float32)
  if input_skip:
    out = out + jnp.asarray(z, jnp.float32)
  return out
