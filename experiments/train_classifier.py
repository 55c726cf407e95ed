"""Train the feature network of vdm_jax.metrics (`nets.Classifier`) and write its weights.

    python -m experiments.train_classifier \\
        --config=experiments/configs/classifier_fashion_mnist.py --workdir=/tmp/classifier
    python -m experiments.train_classifier \\
        --config=experiments/configs/classifier_fashion_mnist.py --workdir=/tmp/classifier_mnist \\
        --config.data.name=mnist

Writes <workdir>/classifier.npz (the weights, `vdm_jax.metrics.features.save_weights`'s format)
and <workdir>/result.json (test accuracy on the whole test split, the file's sha256, timings,
the config). Load the weights with `vdm_jax.metrics.load_weights_file(path, sha256)`.

Every random choice comes from config.seed: the initialisation, the order of the training
examples (`vdm_jax.data.train_batches`), the augmentation and dropout (keys folded from the step
number). On one machine the same config gives the same weights, bit for bit.
"""
from __future__ import annotations

import json
import logging as py_logging
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vdm_jax import data as data_lib
from vdm_jax.metrics import features as features_lib
from vdm_jax.nets.classifier import Classifier

# Datasets whose mirror images keep their class: config.data.flip=None flips only these.
FLIP_INVARIANT = ("fashion_mnist", "cifar10")

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


# ----------------------------------------------------------------------------------- data


def load_data(config) -> Arrays:
  """(train images, train labels, test images, test labels) of config.data.name."""
  out = []
  for split in ("train", "test"):
    out += data_lib.load_arrays(config.data.name, split, config.data.data_dir)
  return tuple(out)


def _check_data(name: str, arrays: Arrays) -> None:
  train_images, _, test_images, _ = arrays
  for what, images in (("train", train_images), ("test", test_images)):
    if images.ndim != 4 or not np.issubdtype(images.dtype, np.integer):
      raise ValueError(f"{name} {what}: the classifier trains on integer images [N, H, W, C] "
                       f"(8-bit pixels), got {images.dtype} {images.shape}.")
  if train_images.shape[1:] != test_images.shape[1:]:
    raise ValueError(f"{name}: train images {train_images.shape[1:]} and test images "
                     f"{test_images.shape[1:]} differ in shape.")


def augment(key: jax.Array, images: jax.Array, flip: bool, max_shift: int) -> jax.Array:
  """Random horizontal flips (probability 1/2) and translations of images [B, H, W, C] by up
  to max_shift pixels in each direction, the uncovered border filled with 0 (the black
  background of the MNIST-like datasets). Same dtype and shape."""
  b, h, w, _ = images.shape
  flip_key, shift_key = jax.random.split(key)
  if flip:
    mirrored = jax.random.bernoulli(flip_key, 0.5, (b,))
    images = jnp.where(mirrored[:, None, None, None], images[:, :, ::-1], images)
  if max_shift > 0:
    s = max_shift
    padded = jnp.pad(images, ((0, 0), (s, s), (s, s), (0, 0)))
    offsets = jax.random.randint(shift_key, (b, 2), 0, 2 * s + 1)
    crop = lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, img.shape[-1]))
    images = jax.vmap(crop)(padded, offsets)
  return images


# ------------------------------------------------------------------------- model, optimiser


def make_model(config, image_shape, num_classes: int) -> Classifier:
  m = config.model
  return Classifier(widths=tuple(m.widths), feature_dim=m.feature_dim, num_classes=num_classes,
                    image_shape=tuple(image_shape), group_norm=m.group_norm, dropout=m.dropout)


def make_optimizer(config, num_steps: int) -> optax.GradientTransformation:
  o = config.optimizer
  # A run shorter than the warm-up keeps one step of decay (optax needs one).
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, o.lr, warmup_steps=min(o.warmup_steps, num_steps - 1), decay_steps=num_steps,
      end_value=0.0)
  adamw = optax.adamw(schedule, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay)
  return optax.chain(optax.clip_by_global_norm(o.grad_clip), adamw) if o.grad_clip > 0 else adamw


# ------------------------------------------------------------------------------ evaluation


def evaluate(model: Classifier, params, images: np.ndarray, labels: np.ndarray,
             batch_size: int) -> np.ndarray:
  """bool [N]: whether each image is classified correctly, in the arrays' order."""
  predict = jax.jit(lambda p, x: jnp.argmax(model.apply(p, x)[0], axis=-1))
  correct = []
  for batch in data_lib.eval_batches(images, labels, batch_size, process_index=0,
                                     process_count=1):
    hit = np.asarray(predict(params, batch["image"])) == batch["label"]
    correct.append(hit[batch["mask"]])
  return np.concatenate(correct)


# -------------------------------------------------------------------------------- training


def train(config, arrays: Arrays | None = None,
          log: Callable[[str], None] = print) -> tuple[dict, dict]:
  """Trains a Classifier as `config` says; returns (variables, result).

  Args:
    config: a ConfigDict of experiments/configs/classifier_fashion_mnist.py's fields.
    arrays: (train images, train labels, test images, test labels) instead of loading
      config.data.name (num_classes still comes from that dataset).
    log: where the progress lines go.

  Returns:
    variables {"params": ...} after the last step, and a dict of the run's numbers: test
    accuracy over the whole test split (and over its first 1,000 images), steps, timings.
  """
  start = time.time()
  arrays = load_data(config) if arrays is None else arrays
  _check_data(config.data.name, arrays)
  train_images, train_labels, test_images, test_labels = arrays
  num_classes = data_lib.get_spec(config.data.name).num_classes
  t = config.training
  steps_per_epoch = len(train_images) // t.batch_size
  num_steps = t.num_steps if t.num_steps > 0 else t.num_epochs * steps_per_epoch
  if num_steps < 1:
    raise ValueError(f"{num_steps} training steps: set training.num_steps > 0, or num_epochs > 0 "
                     f"with at least training.batch_size={t.batch_size} training images.")
  flip = (config.data.flip if config.data.flip is not None
          else config.data.name in FLIP_INVARIANT)
  model = make_model(config, train_images.shape[1:], num_classes)
  optimizer = make_optimizer(config, num_steps)

  init_key, step_key = jax.random.split(jax.random.key(config.seed))
  params = model.init(init_key, jnp.zeros((1, *train_images.shape[1:]), train_images.dtype))
  opt_state = optimizer.init(params)
  num_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
  log(f"{config.data.name}: {len(train_images)} train / {len(test_images)} test images "
      f"{train_images.shape[1:]}, {num_classes} classes; Classifier {tuple(config.model.widths)}"
      f" -> {config.model.feature_dim} features, {num_params:,} parameters; {num_steps} steps "
      f"of {t.batch_size} ({num_steps / steps_per_epoch:.2f} epochs), flip={flip}, "
      f"max_shift={config.data.max_shift}")

  @jax.jit
  def train_step(params, opt_state, images, labels, step):
    aug_key, dropout_key = jax.random.split(jax.random.fold_in(step_key, step))
    images = augment(aug_key, images, flip, config.data.max_shift)

    def loss_fn(p):
      logits, _ = model.apply(p, images, train=True, rngs={"dropout": dropout_key})
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return loss, jnp.mean(jnp.argmax(logits, -1) == labels)

    (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, acc

  batches = data_lib.train_batches(train_images, train_labels, t.batch_size, seed=config.seed,
                                   process_index=0, process_count=1)
  train_start, window, window_start = time.time(), [], time.time()
  for step in range(num_steps):
    batch = next(batches)
    params, opt_state, loss, acc = train_step(params, opt_state, batch["image"],
                                              batch["label"], step)
    window.append((loss, acc))
    if (step + 1) % t.log_every == 0 or step + 1 == num_steps:
      loss, acc = np.mean(np.asarray(jax.device_get(window)), axis=0)
      rate = len(window) * t.batch_size / (time.time() - window_start)
      log(f"step {step + 1}/{num_steps}: loss {loss:.4f}, train accuracy {acc:.4f} "
          f"(augmented, dropout), {rate:.0f} images/s, {time.time() - start:.0f}s")
      window, window_start = [], time.time()
  jax.block_until_ready(params)
  train_time = time.time() - train_start

  eval_start = time.time()
  correct = evaluate(model, params, test_images, test_labels, t.eval_batch_size)
  result = dict(
      dataset=config.data.name, seed=config.seed, num_steps=num_steps,
      epochs=num_steps / steps_per_epoch, num_params=num_params,
      feature_dim=config.model.feature_dim,
      image_shape=[int(d) for d in train_images.shape[1:]], num_test=int(correct.size),
      test_correct=int(correct.sum()), test_accuracy=float(correct.mean()),
      test_accuracy_first_1000=float(correct[:1000].mean()),
      train_time_s=train_time, eval_time_s=time.time() - eval_start,
      wall_time_s=time.time() - start, jax_version=jax.__version__,
      backend=jax.default_backend())
  log(f"test accuracy {result['test_accuracy']:.4f} ({result['test_correct']}/"
      f"{result['num_test']}; first 1000: {result['test_accuracy_first_1000']:.4f}); "
      f"{result['wall_time_s']:.0f}s in all, {train_time:.0f}s of them training")
  return params, result


def write(workdir: str | Path, config, params, result: dict) -> dict:
  """Writes <workdir>/classifier.npz and <workdir>/result.json; returns result with the
  weights' path and sha256 added."""
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  model = params["params"]
  meta = dict(dataset=config.data.name, widths=tuple(config.model.widths),
              feature_dim=config.model.feature_dim,
              num_classes=model["head"]["kernel"].shape[-1],
              image_shape=tuple(result["image_shape"]),
              group_norm=config.model.group_norm, test_accuracy=result["test_accuracy"],
              num_test=result["num_test"])
  path = workdir / "classifier.npz"
  sha256 = features_lib.save_weights(path, params, meta)
  result = dict(result, weights=str(path), sha256=sha256,
                weights_bytes=path.stat().st_size, config=config.to_dict())
  (workdir / "result.json").write_text(json.dumps(result, indent=2, default=list) + "\n")
  return result


# ------------------------------------------------------------------------------------ main


def main(argv):
  from absl import app, logging
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  # The data loader's lines at INFO; other libraries' INFO chatter only with --verbosity.
  py_logging.getLogger("vdm_jax").setLevel(py_logging.INFO)
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  config = FLAGS.config
  params, result = train(config)
  result = write(FLAGS.workdir, config, params, result)
  print(f"weights {result['weights']} ({result['weights_bytes']:,} bytes), sha256 "
        f"{result['sha256']}; {Path(FLAGS.workdir) / 'result.json'}")


if __name__ == "__main__":
  # Flags only when run as a program: experiments.train defines flags of the same names, and
  # the tests import both modules into one process.
  from absl import app, flags
  from ml_collections import config_flags

  FLAGS = flags.FLAGS
  config_flags.DEFINE_config_file(
      "config", None, "Config file (experiments/configs/classifier_fashion_mnist.py); override "
      "fields with --config.<group>.<key>=<value>.", lock_config=True)
  flags.DEFINE_string("workdir", None, "Folder for classifier.npz and result.json.")
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
