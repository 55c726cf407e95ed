"""The VDM model: a noise schedule, a score network and the likelihood terms in one linen module.

    model = VDM(image_shape=(28, 28, 1), schedule="learned_linear", network=nets.UNet(...))
    params = model.init({"params": k0, "sample": k1, "dropout": k2}, images, labels)
    loss = model.apply(params, images, labels, train=True,
                       rngs={"sample": k3, "dropout": k4})          # losses.VDMLoss, nats [B]

`__call__` is exactly `losses.vdm_loss` with this model's eps_fn and gamma_fn; `eps` and `gamma`
are the two functions the sampler calls. `init_variables(model, key)` gives its variables; a
config's `model` group builds one through `vdm_jax.config` (`resolve(config).model.build()`).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vdm_jax import likelihood, losses, nets, schedules

Array = jax.Array

# Score networks by the name configs use (config.model.network); each takes its attributes from
# the config group of the same name (e.g. config.model.unet).
NETWORKS = {"vdm_unet": nets.VDMScoreNet, "unet": nets.UNet, "mlp": nets.MLPScoreNet}

# The scope of the noise schedule's parameters inside the model's params: optimizers find them
# by this name (e.g. to exempt them from weight decay).
SCHEDULE_SCOPE = "gamma_module"


class VDM(nn.Module):
  """Variational Diffusion Model over data [B, *image_shape] of a data model (`likelihood`):
  integer images with values in [0, vocab_size) by default, or continuous data of any shape.

  Attributes:
    network: a score network with the `vdm_jax.nets` call contract that fits the data's shape
      (the image networks take [B, H, W, C]; `nets.MLPScoreNet` any shape).
    image_shape: the shape of one example, e.g. (H, W, C) for images, (D,) for vectors, (L, C)
      for sequences; inputs are checked against it at trace time.
    data: the data model (`likelihood.Discrete(...)`, `likelihood.Continuous()`); it decides
      the encoding, the recon term, decoding and the checks of the data.
    vocab_size: shorthand for data=likelihood.Discrete(vocab_size); after construction it is
      the data model's vocab_size (None for continuous data). Default: Discrete(256).
    schedule: a name in `schedules.SCHEDULES`.
    gamma_min, gamma_max: the schedule's (initial) endpoints. The network is conditioned on
      (gamma_t - gamma_min) / (gamma_max - gamma_min) with these fixed numbers, so its input map
      does not move while a learned schedule trains.
    T: 0 for the continuous-time loss, else the number of discrete steps.
    antithetic: low-discrepancy time sampling across the batch.
    num_classes: 0 for an unconditional model; else labels in [0, num_classes) and the null
      label `num_classes` (used when labels is None and for classifier-free guidance).
    label_dropout: when training a class-conditional model, the probability of replacing a label
      by the null label, so one network learns both the conditional and the unconditional model
      (classifier-free guidance needs both; 0.1 to 0.2 is usual).
    weighting: training weighting of the diffusion term ("elbo", "simple", "sigmoid"; see
      `losses.weighted_diffusion`). Only `objective` uses it; `__call__` is always the bound.
    sigmoid_bias: the bias b of the "sigmoid" weighting, w = sigmoid(b - log-SNR).
    schedule_objective: "elbo" (the schedule minimises the bound) or "variance" (its interior
      minimises the variance of the diffusion-loss estimator; see `losses.training_loss`).
  """

  network: nn.Module
  image_shape: Sequence[int] = (28, 28, 1)
  vocab_size: int | None = None
  data: likelihood.DataModel | None = None
  schedule: str = "fixed_linear"
  gamma_min: float = schedules.GAMMA_MIN
  gamma_max: float = schedules.GAMMA_MAX
  T: int = 0
  antithetic: bool = True
  num_classes: int = 0
  label_dropout: float = 0.0
  weighting: str = "elbo"
  sigmoid_bias: float = 2.0
  schedule_objective: str = "elbo"

  def __post_init__(self):
    # One data model decides; vocab_size mirrors it (clone() passes both back, consistently).
    data = likelihood.resolve(self.data, self.vocab_size)
    object.__setattr__(self, "data", data)
    object.__setattr__(self, "vocab_size", getattr(data, "vocab_size", None))
    validate(self)
    super().__post_init__()

  def setup(self):
    # The attribute name is the parameters' scope: SCHEDULE_SCOPE.
    self.gamma_module = schedules.make_schedule(self.schedule, self.gamma_min, self.gamma_max)

  def gamma(self, t: Array) -> Array:
    """gamma(t): elementwise, float32, any shape."""
    return self.gamma_module(t)

  def eps(self, z: Array, gamma_t: Array, labels: Array | None = None, *,
          train: bool = False) -> Array:
    """eps_hat(z_t; gamma_t): z [B, *image_shape] float32, gamma_t scalar or [B] -> z's shape."""
    gamma_t = jnp.broadcast_to(jnp.asarray(gamma_t, jnp.float32), (z.shape[0],))
    cond = (gamma_t - self.gamma_min) / (self.gamma_max - self.gamma_min)
    if self.num_classes and labels is None:
      labels = nets.null_labels(z.shape[0], self.num_classes)
    return self.network(z, cond, labels, train=train)

  def __call__(self, images: Array, labels: Array | None = None, *,
               train: bool = False) -> losses.VDMLoss:
    """The negative ELBO per example: `losses.VDMLoss` of [B] nats. Uses the 'sample' rng.

    images: the data [B, *image_shape], as `data` takes it (integers or floats)."""
    return self.objective(images, labels, train=train)[1]

  def objective(self, images: Array, labels: Array | None = None, *,
                train: bool = False) -> tuple[Array, losses.VDMLoss]:
    """(training objective [B], bound `VDMLoss` [B] nats) from the same draws.

    The objective applies `weighting` and `schedule_objective`; with the defaults it equals the
    bound's total. Uses the 'sample' rng (and 'dropout' when training).
    """
    self.check_images(images)
    key = self.make_rng("sample")
    if train and self.num_classes and self.label_dropout > 0 and labels is not None:
      drop = jax.random.bernoulli(self.make_rng("dropout"), self.label_dropout, labels.shape)
      labels = jnp.where(drop, self.num_classes, labels)
    # Initialise the schedule's parameters outside the jvp inside the loss.
    self.gamma(jnp.zeros((1,), jnp.float32))
    return losses.training_loss(
        lambda z, g: self.eps(z, g, labels, train=train), self.gamma, images, key,
        data=self.data, T=self.T, antithetic=self.antithetic,
        weighting=self.weighting, sigmoid_bias=self.sigmoid_bias,
        schedule_objective=self.schedule_objective)

  def check_images(self, images: Array) -> None:
    """Raises (at trace time) unless images have shape [B, *image_shape] and the dtype the
    data model takes (its values are checked too when they are concrete)."""
    if tuple(images.shape[1:]) != tuple(self.image_shape):
      raise ValueError(
          f"images have shape {tuple(images.shape)}, but the model was built for "
          f"[batch, {', '.join(map(str, self.image_shape))}]: set config.model.image_shape to "
          f"{tuple(images.shape[1:])} or feed data of the configured shape.")
    self.data.check(images, "images")


def validate(model: VDM) -> None:
  """Checks a model's settings and says what to change (messages name the attributes, which
  are also the config.model fields)."""
  schedules.check_endpoints(model.gamma_min, model.gamma_max)
  if model.schedule not in schedules.SCHEDULES:
    raise ValueError(f"Unknown schedule {model.schedule!r}; choose one of "
                     f"{sorted(schedules.SCHEDULES)}.")
  shape = tuple(model.image_shape)
  if not shape or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape):
    raise ValueError(f"image_shape must be a tuple of positive ints (the shape of one example, "
                     f"e.g. (H, W, C) or (D,)), got {shape}.")
  losses.check_T(model.T)
  if not 0.0 <= model.label_dropout < 1.0:
    raise ValueError(f"label_dropout must be in [0, 1), got {model.label_dropout}.")
  losses.check_objective(model.weighting, model.schedule_objective)
  net_classes = getattr(model.network, "num_classes", model.num_classes)
  if net_classes != model.num_classes:
    raise ValueError(f"the model has num_classes={model.num_classes} but its network has "
                     f"num_classes={net_classes}; set both from config.model.num_classes.")


def pure_fns(model, variables: Any) -> tuple[Any, Any]:
  """(eps_fn(z, gamma_t, labels=None), gamma_fn(t)): a model's eps_hat and gamma(t) with its
  variables bound, deterministic, as the pure functions the losses, samplers and ODE take. Any
  module with `eps` and `gamma` methods (a `VDM`, a classifier-guided one) works."""
  def eps_fn(z, gamma_t, labels=None):
    return model.apply(variables, z, gamma_t, labels, method=model.eps)

  def gamma_fn(t):
    return model.apply(variables, t, method=model.gamma)

  return eps_fn, gamma_fn


def init_variables(model: VDM, key: Array, batch_size: int = 1) -> Any:
  """The model's variables ({'params': ...}) from `key`, traced with zero data [batch_size,
  *image_shape] of the data model's dtype (and null labels for a class-conditional model)."""
  k_params, k_sample, k_dropout = jax.random.split(key, 3)
  images = jnp.zeros((batch_size, *model.image_shape), model.data.dtype)
  labels = jnp.zeros((batch_size,), jnp.int32) if model.num_classes else None
  return model.init({"params": k_params, "sample": k_sample, "dropout": k_dropout}, images,
                    labels)


def param_count(params: Any) -> int:
  """Total number of scalars in a parameter tree."""
  return sum(math.prod(p.shape) for p in jax.tree_util.tree_leaves(params))
