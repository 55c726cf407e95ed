"""A small CNN classifier of 8-bit images whose penultimate layer is a feature space for metrics.

`Classifier` maps integer images [B, H, W, C] (pixel values in [0, 255], e.g. uint8) to
(logits [B, num_classes], features [B, feature_dim]). It is the feature network of
`vdm_jax.metrics.load_feature_network` (trained by experiments/train_classifier.py), where it
stands in for Inception-v3 on 28x28 grey images.

Layout, for the default 28x28x1 input and widths (32, 64)::

    encode       k -> (k + 1/2) / 128 - 1, the bin centres of the diffusion models'
                 8-bit encoding (`likelihood.Discrete(256)`), so [0, 255] -> (-1, 1)
    stem         2x2 space-to-depth: [B, 28, 28, 1] -> [B, 14, 14, 4] (no pixel dropped)
    stage 0      conv3x3(32), ReLU, conv3x3(32), ReLU                    -> [B, 14, 14, 32]
    stage 1      conv3x3(64, stride 2), ReLU, conv3x3(64), ReLU          -> [B, 7, 7, 64]
    features     flatten, Dense(feature_dim), ReLU                       -> [B, feature_dim]
    head         (dropout when training), Dense(num_classes)             -> [B, num_classes]

Optionally (`group_norm=True`) a GroupNorm precedes every ReLU of the stages. Nothing depends
on the batch (no BatchNorm), so an example's features do not depend on the other examples in
its batch, and there is no state besides the parameters.

The space-to-depth stem instead of a full-resolution first convolution: on CPU the 28x28
layers dominate the train step's time (memory-bound), and folding each 2x2 patch into channels
keeps every pixel while the convolutions run at 14x14.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vdm_jax.nets.layers import dense, dropout, group_norm

INPUT_CONVENTION = ("integer images [B, H, W, C] (any integer dtype, e.g. uint8) with pixel "
                    "values in [0, 255]; encoded inside as (k + 0.5) / 128 - 1")


def check_images(images: jax.Array, image_shape: Sequence[int], where: str) -> None:
  """ValueError / TypeError unless `images` is an integer array [B, *image_shape].

  Shapes and dtypes are static, so this also works on traced values (inside jax.jit); the
  value range [0, 255] cannot be checked there and is the caller's promise.
  """
  shape, dtype = tuple(jnp.shape(images)), jnp.result_type(images)
  want = tuple(int(s) for s in image_shape)
  if len(shape) != 1 + len(want) or shape[1:] != want:
    raise ValueError(f"{where} takes images of shape [B, {', '.join(map(str, want))}], got "
                     f"shape {shape}. It was trained on {'x'.join(map(str, want))} images: "
                     "resizing or adding channels would give features of a different "
                     "distribution.")
  if not jnp.issubdtype(dtype, jnp.integer):
    raise TypeError(f"{where} takes integer pixel values in [0, 255] (e.g. uint8), got dtype "
                    f"{dtype}. For images x in [-1, 1] use jnp.clip(jnp.round((x + 1) * 127.5), "
                    "0, 255).astype(jnp.uint8); vdm_jax.sampling's 8-bit samples are already "
                    "integers.")


def encode(images: jax.Array) -> jax.Array:
  """Integer pixel values [0, 255] -> float32 bin centres (k + 1/2) / 128 - 1 in (-1, 1)."""
  return (jnp.asarray(images).astype(jnp.float32) + 0.5) / 128.0 - 1.0


def space_to_depth(x: jax.Array) -> jax.Array:
  """[B, H, W, C] -> [B, H/2, W/2, 4C]: each 2x2 patch folded into channels (row-major)."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h // 2, w // 2, 4 * c)


class Classifier(nn.Module):
  """A CNN classifier whose penultimate activations are features for sample metrics.

  Call: `logits, features = net.apply(params, images, train=False, rngs={'dropout': key})`
    images: integer [B, *image_shape], pixel values in [0, 255] (uint8 or any integer dtype;
      floats are refused, see `check_images`).
    train: apply dropout to the features before the head (needs a 'dropout' rng).
  Returns logits float32 [B, num_classes] and features float32 [B, feature_dim], the ReLU
  activations of the penultimate Dense layer (non-negative), the same with train=True or False.

  Attributes:
    widths: channels of each stage (two 3x3 convolutions each); every stage after the first
      halves the resolution with its first convolution (stride 2).
    feature_dim: size D of the feature layer.
    num_classes: number of logits.
    image_shape: (H, W, C) of the input; H and W divisible by 2 ** len(widths).
    group_norm: GroupNorm before every ReLU of the stages.
    dropout: dropout rate on the features, train=True only.
  """
  widths: Sequence[int] = (32, 64)
  feature_dim: int = 128
  num_classes: int = 10
  image_shape: Sequence[int] = (28, 28, 1)
  group_norm: bool = False
  dropout: float = 0.0

  def _check_attributes(self) -> None:
    h, w, _ = self.image_shape
    step = 2 ** len(self.widths)
    if not self.widths or h % step or w % step:
      raise ValueError(f"Classifier: image_shape {tuple(self.image_shape)} needs H and W "
                       f"divisible by 2 ** len(widths) = {step} (widths {tuple(self.widths)}).")
    if self.feature_dim < 1 or self.num_classes < 2:
      raise ValueError(f"Classifier needs feature_dim >= 1 and num_classes >= 2, got "
                       f"{self.feature_dim} and {self.num_classes}.")

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    self._check_attributes()
    check_images(images, self.image_shape, "Classifier")
    h = space_to_depth(encode(images))
    for s, width in enumerate(self.widths):
      for j in range(2):
        stride = 2 if s > 0 and j == 0 else 1
        h = nn.Conv(width, (3, 3), strides=(stride, stride), padding="SAME",
                    param_dtype=jnp.float32, name=f"conv{s}_{j}")(h)
        if self.group_norm:
          h = group_norm(width, f"norm{s}_{j}")(h)
        h = nn.relu(h)
    h = h.reshape(h.shape[0], -1)
    features = nn.relu(dense(self.feature_dim, "features", jnp.float32)(h))
    x = features
    if train and self.dropout > 0:
      x = dropout(x, self.dropout, self.make_rng("dropout"))
    logits = dense(self.num_classes, "head", jnp.float32)(x)
    return logits, features
