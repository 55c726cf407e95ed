"""Classifier guidance as models: a trainable noisy classifier, and a diffusion model guided by one.

    clf = NoisyClassifierModel(nets.NoisyClassifier(num_classes=10), image_shape=(28, 28, 1),
                               schedule="fixed_linear", gamma_min=-13.1, gamma_max=5.2)
    loss, t, correct = clf.apply(params, images, labels, rngs={"sample": key},
                                 method=clf.objective)                  # [B] nats, [B], [B]
    guided = ClassifierGuided(diffusion=vdm, classifier=clf, scale=2.0)
    images = sampling.sample_model(guided, {"params": {"diffusion": p, "classifier": q}},
                                   key, 64, labels=labels, sampler="ddim", T=50)

`NoisyClassifierModel` is what the training loop trains for config.model.network =
"noisy_classifier": p(y | z_t) on the forward marginals of a FIXED schedule, which should be the
diffusion model's own (a learned linear schedule is the fixed linear one between its trained
endpoints; `schedule_endpoints` reads them from a run). `ClassifierGuided` has the VDM's sampling
interface (`eps`, `gamma`, image_shape, data, num_classes), so every sampler, `--mode=sample`
and `--mode=sample_eval` take it as they take a class-conditional VDM.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vdm_jax import diffusion, likelihood, losses, nets, schedules
from vdm_jax.sampling import wrappers

Array = jax.Array

# Schedules with trained parameters: the classifier holds its schedule fixed, so it takes the
# fixed schedule that equals the trained one instead (`schedule_endpoints`).
LEARNED_SCHEDULES = ("learned_linear", "learned_nn")


class NoisyClassifierModel(nn.Module):
  """p(y | z_t) over data [B, *image_shape] under a fixed noise schedule; the training loop's
  model for a noisy-classifier run.

  Attributes:
    classifier: the network, (z_t [B, ...], gamma_t [B]) -> logits [B, K] (`nets.NoisyClassifier`).
    image_shape: one example's shape.
    data: the data model (as `model.VDM`); vocab_size its shorthand.
    schedule, gamma_min, gamma_max: a fixed schedule of `schedules.SCHEDULES`.
    antithetic: low-discrepancy times across the batch (as the VDM loss draws them).
  """
  classifier: nn.Module
  image_shape: Sequence[int] = (28, 28, 1)
  vocab_size: int | None = None
  data: likelihood.DataModel | None = None
  schedule: str = "fixed_linear"
  gamma_min: float = schedules.GAMMA_MIN
  gamma_max: float = schedules.GAMMA_MAX
  antithetic: bool = True

  def __post_init__(self):
    data = likelihood.resolve(self.data, self.vocab_size)
    object.__setattr__(self, "data", data)
    object.__setattr__(self, "vocab_size", getattr(data, "vocab_size", None))
    if self.schedule in LEARNED_SCHEDULES:
      raise ValueError(
          f"a noisy classifier trains on a fixed schedule, got schedule={self.schedule!r}: use "
          "the diffusion model's trained schedule as a fixed one (for learned_linear: "
          "schedule='fixed_linear' with gamma_min, gamma_max = its trained gamma(0), gamma(1); "
          "noisy_classifier.schedule_endpoints(model, ema_params) reads them from a trained run).")
    schedules.check_endpoints(self.gamma_min, self.gamma_max)
    super().__post_init__()

  @property
  def num_classes(self) -> int:
    return self.classifier.num_classes

  def setup(self):
    self.gamma_module = schedules.make_schedule(self.schedule, self.gamma_min, self.gamma_max)

  def gamma(self, t: Array) -> Array:
    return self.gamma_module(t)

  def logits(self, z: Array, gamma_t: Array, *, train: bool = False) -> Array:
    """logits [B, K] of p(y | z_t) at gamma_t (scalar or [B])."""
    gamma_t = jnp.broadcast_to(jnp.asarray(gamma_t, jnp.float32), (z.shape[0],))
    return self.classifier(z, gamma_t, train=train)

  def log_prob(self, z: Array, gamma_t: Array, labels: Array) -> Array:
    """log p(labels | z_t), [B] nats; differentiable in z (the guidance gradient)."""
    log_p = jax.nn.log_softmax(self.logits(z, gamma_t), axis=-1)
    return jnp.take_along_axis(log_p, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]

  def objective(self, images: Array, labels: Array, *,
                train: bool = False) -> tuple[Array, Array, Array]:
    """(cross-entropy [B] nats, t [B], correct [B] bool) on z_t of the forward marginals at t
    drawn as the VDM loss draws it (`losses.noisy_classifier_loss`). Uses the 'sample' rng
    (and 'dropout' when training)."""
    check_images(self, images)
    seen = []

    def logits_fn(z, g):
      logits = self.logits(z, g, train=train)
      seen.append(logits)   # the same trace: the logits of the loss, for its accuracy
      return logits

    loss, t = losses.noisy_classifier_loss(logits_fn, self.gamma, images, labels,
                                           self.make_rng("sample"), data=self.data,
                                           antithetic=self.antithetic)
    return loss, t, jnp.argmax(seen[0], axis=-1) == labels

  def at_times(self, images: Array, labels: Array, t: Array, key: Array) -> tuple[Array, Array]:
    """(cross-entropy [n, B] nats, correct [n, B]) at given times t [n, B] (one fresh noise
    draw per time): the classifier's accuracy as a function of t."""
    check_images(self, images)
    x = self.data.encode(images)

    def one(args):
      t_j, k_j = args
      g = self.gamma(t_j)
      z, _ = diffusion.sample_marginal(k_j, x, g)
      log_p = jax.nn.log_softmax(self.logits(z, g), axis=-1)
      nll = -jnp.take_along_axis(log_p, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]
      return nll, jnp.argmax(log_p, axis=-1) == labels

    return jax.lax.map(one, (t, jax.random.split(key, t.shape[0])))

  def __call__(self, images: Array, labels: Array, *, train: bool = False) -> Array:
    """The per-example cross-entropy [B] nats (`objective`'s first output)."""
    return self.objective(images, labels, train=train)[0]


def check_images(model, images: Array) -> None:
  """Raises (at trace time) unless images are [B, *image_shape] of the model's data model."""
  if tuple(images.shape[1:]) != tuple(model.image_shape):
    raise ValueError(f"images have shape {tuple(images.shape)}, but the model was built for "
                     f"[batch, {', '.join(map(str, model.image_shape))}].")
  model.data.check(images, "images")


class ClassifierGuided(nn.Module):
  """A diffusion model guided by a noisy classifier, with `model.VDM`'s sampling interface.

  eps(z, gamma_t, labels) = diffusion eps_hat - scale * sigma_t * grad_z log p(labels | z_t)
  (`sampling.classifier_guidance`), rows with the null label (num_classes) unguided. A
  class-conditional diffusion model gets the labels too, so classifier-free guidance
  (sample_model's guidance_weight) composes with it.

  Attributes:
    diffusion: the `model.VDM` (unconditional, or with the classifier's classes).
    classifier: its `NoisyClassifierModel`.
    scale: the guidance scale >= 0 (0: the diffusion model's own samples).
  Variables: {'params': {'diffusion': ..., 'classifier': ...}}.
  """
  diffusion: nn.Module
  classifier: nn.Module
  scale: float = 1.0

  def __post_init__(self):
    check_guidance(self.diffusion, self.classifier, self.scale)
    super().__post_init__()

  @property
  def image_shape(self):
    return self.diffusion.image_shape

  @property
  def data(self):
    return self.diffusion.data

  @property
  def vocab_size(self):
    return self.diffusion.vocab_size

  @property
  def T(self):
    return self.diffusion.T

  @property
  def num_classes(self) -> int:
    return self.classifier.num_classes

  def gamma(self, t: Array) -> Array:
    return self.diffusion.gamma(t)

  def eps(self, z: Array, gamma_t: Array, labels: Array | None = None, *,
          train: bool = False) -> Array:
    null = self.num_classes
    labels = (nets.null_labels(z.shape[0], null) if labels is None
              else jnp.asarray(labels, jnp.int32))
    guided = labels != null

    def eps_fn(x, g):
      return self.diffusion.eps(x, g, labels if self.diffusion.num_classes else None)

    def log_prob_fn(x, g, lab):
      return jnp.where(guided, self.classifier.log_prob(x, g, jnp.where(guided, lab, 0)), 0.0)

    return wrappers.classifier_guidance(eps_fn, log_prob_fn, labels, self.scale)(z, gamma_t)

  def __call__(self, z: Array, gamma_t: Array, labels: Array | None = None) -> Array:
    """`eps` (so that `init` traces both networks)."""
    return self.eps(z, gamma_t, labels)


def check_guidance(diffusion, classifier, scale: float) -> None:
  """ValueError unless the classifier fits the diffusion model: the same data model and
  example shape, class counts that agree (an unconditional diffusion model takes any), and a
  finite scale >= 0."""
  if isinstance(scale, bool) or not isinstance(scale, (int, float, np.floating)) or \
      not np.isfinite(scale) or scale < 0:
    raise ValueError(f"the classifier-guidance scale must be a finite number >= 0, got "
                     f"{scale!r}.")
  if tuple(classifier.image_shape) != tuple(diffusion.image_shape):
    raise ValueError(f"the classifier takes examples of shape {tuple(classifier.image_shape)}, "
                     f"the diffusion model draws {tuple(diffusion.image_shape)}: train the "
                     "classifier on the diffusion model's data.")
  if classifier.data != diffusion.data:
    raise ValueError(f"the classifier's data model {classifier.data} is not the diffusion "
                     f"model's {diffusion.data}: train it with the same config.model.data, "
                     "vocab_size and data_range.")
  if diffusion.num_classes and diffusion.num_classes != classifier.num_classes:
    raise ValueError(f"the classifier has {classifier.num_classes} classes but the "
                     f"class-conditional diffusion model {diffusion.num_classes}: their labels "
                     "must mean the same classes.")


def schedule_endpoints(model, params) -> tuple[float, float]:
  """(gamma(0), gamma(1)) of a diffusion model's (trained) schedule: for a learned linear
  schedule, the fixed linear schedule with these endpoints is the same function of t."""
  g = model.apply({"params": params}, jnp.array([0.0, 1.0], jnp.float32), method=model.gamma)
  return float(g[0]), float(g[1])
