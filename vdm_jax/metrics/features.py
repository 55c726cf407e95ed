"""Feature networks shipped with the package, for FID / KID / precision-recall of samples.

Inception-v3 weights are not part of this package, so for 28x28 grey images it ships its own
feature network: `nets.Classifier` trained on Fashion-MNIST by experiments/train_classifier.py
(experiments/configs/classifier_fashion_mnist.py has the command and its measured result)::

    from vdm_jax import metrics

    net = metrics.load_feature_network("fashion_mnist")
    feats = net.feature_fn(images)        # uint8 [B, 28, 28, 1] -> float32 [B, 128]
    logits = net.logits_fn(images)        # float32 [B, 10]
    net.sha256                            # identity of the weights: key cached statistics on it

    reference = metrics.feature_stats(np.concatenate(
        [np.asarray(net.feature_fn(b["image"])) for b in batches_of_real_images]))

The shipped network ("fashion_mnist"):

- input: integer images [B, 28, 28, 1] (uint8 or any integer dtype) with pixel values in
  [0, 255], the convention of `vdm_jax.data` and of the 8-bit samples of `vdm_jax.sampling`;
  floats and other shapes are refused with an error saying what to do.
- features: the 128 ReLU activations of the penultimate Dense layer (float32, non-negative).
- architecture: 2x2 space-to-depth, four 3x3 convolutions (32, 32, 64 stride 2, 64; ReLU),
  Dense(128) + ReLU, Dense(10); 468,682 parameters (`nets.classifier` has the details).
- test accuracy, measured on the 10,000 Fashion-MNIST test images: 92.38% (92.9% on the first
  1,000).

Features and FIDs from this network are comparable only with others computed with the same
weights (the same `sha256`), never with Inception-based FIDs.

The weights file is an .npz of plain numeric and string arrays (read with
``allow_pickle=False``: loading it runs no code), keyed ``params/<module>/<param>`` for the
parameter leaves plus ``meta/<field>`` for the architecture and the measured accuracy. Its
sha256 is checked against the one recorded here before anything in it is used.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import zipfile
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from vdm_jax.nets.classifier import INPUT_CONVENTION, Classifier, check_images

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

# name -> (file under WEIGHTS_DIR, its sha256).
SHIPPED = {
    "fashion_mnist": ("fashion_mnist_classifier.npz", "7e8011e6411f58b6a304083f911c62a252634261f58ee1a8f3f590958aea09e1"),
}
FASHION_MNIST_SHA256 = SHIPPED["fashion_mnist"][1]

# The metadata fields of a weights file, with the numpy kind of each.
_META = {"dataset": "U", "widths": "i", "feature_dim": "i", "num_classes": "i",
         "image_shape": "i", "group_norm": "b", "test_accuracy": "f", "num_test": "i"}
# Fixed zip member timestamps, so equal parameters give byte-identical files (same sha256).
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


class WeightsChecksumError(ValueError):
  """A weights file whose sha256 is not the expected one (changed, damaged or another file)."""


def sha256_of(path: str | os.PathLike) -> str:
  """Hex sha256 of a file's bytes."""
  return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ------------------------------------------------------------------------------ weights files


def save_weights(path: str | os.PathLike, params: Mapping[str, Any],
                 meta: Mapping[str, Any]) -> str:
  """Writes a Classifier's variables and metadata as an .npz of plain arrays; returns its sha256.

  Args:
    path: the file to write (its folder must exist).
    params: the variables of `nets.Classifier.init`, {"params": {...}}; leaves stored float32.
    meta: every field of `_META`: dataset (str), widths (ints), feature_dim, num_classes,
      image_shape (3 ints), group_norm (bool), test_accuracy (fraction in [0, 1]), num_test.

  The members are written in sorted order with fixed timestamps, uncompressed, so the same
  parameters always give the same bytes.
  """
  missing = sorted(set(_META) - set(meta))
  if missing:
    raise ValueError(f"save_weights: meta lacks {missing}; it needs every one of "
                     f"{sorted(_META)}.")
  arrays = {f"params/{k}": np.asarray(v, np.float32)
            for k, v in traverse_util.flatten_dict(dict(params["params"]), sep="/").items()}
  arrays.update({f"meta/{k}": np.asarray(meta[k]) for k in _META})
  with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
    for key in sorted(arrays):
      buf = io.BytesIO()
      np.lib.format.write_array(buf, arrays[key], allow_pickle=False)
      zf.writestr(zipfile.ZipInfo(key + ".npy", date_time=_ZIP_TIME), buf.getvalue())
  return sha256_of(path)


def _read_checked(path: Path, sha256: str) -> dict[str, np.ndarray]:
  """The arrays of the weights file at `path`, after checking the sha256 of the bytes read."""
  try:
    content = path.read_bytes()
  except FileNotFoundError:
    raise FileNotFoundError(
        f"No feature network weights at {path}. The shipped ones are installed with the "
        f"package under {WEIGHTS_DIR}; reinstall it (pip install .), or write your own with "
        "experiments/train_classifier.py.") from None
  digest = hashlib.sha256(content).hexdigest()
  if digest != sha256:
    raise WeightsChecksumError(
        f"{path} has sha256 {digest}, expected {sha256}: the file was changed or damaged, or it "
        "is another network's. Reinstall the package for the shipped weights; for weights of "
        "your own, pass the sha256 that experiments/train_classifier.py reported for them.")
  with np.load(io.BytesIO(content), allow_pickle=False) as z:
    return {k: z[k] for k in z.files}


def _meta(arrays: Mapping[str, np.ndarray], path: Path) -> dict[str, Any]:
  """The metadata of a weights file as Python values, checked for presence and kind."""
  out = {}
  for field, kind in _META.items():
    value = arrays.get(f"meta/{field}")
    if value is None or value.dtype.kind != kind:
      raise ValueError(f"{path} is not a weights file of experiments/train_classifier.py: "
                       f"meta/{field} is missing or not of numpy kind {kind!r}.")
    out[field] = value.item() if value.ndim == 0 else tuple(value.tolist())
  return out


# ------------------------------------------------------------------------------ the network


@dataclasses.dataclass(frozen=True, eq=False)
class FeatureNetwork:
  """A trained `nets.Classifier` as jittable functions of integer images.

  Attributes:
    name: the shipped name, or the file's path for weights of your own.
    sha256: hex sha256 of the weights file: the identity of these features (cache reference
      statistics under it).
    dataset: the dataset it was trained on.
    feature_dim: D, the width of `feature_fn`'s output.
    num_classes: the width of `logits_fn`'s output.
    image_shape: (H, W, C) of the images it takes.
    test_accuracy: fraction of the dataset's test split classified correctly, measured when
      the weights were written; num_test: the number of test images it was measured on.
    input_convention: the images it takes, in words.
    module, params: the Flax module and its variables.
  """
  name: str
  sha256: str
  dataset: str
  feature_dim: int
  num_classes: int
  image_shape: tuple[int, int, int]
  test_accuracy: float
  num_test: int
  module: Classifier
  params: Any
  input_convention: str = INPUT_CONVENTION

  def __post_init__(self):
    # Parameters are an argument, not constants folded into the compiled program.
    object.__setattr__(self, "_forward", jax.jit(lambda p, x: self.module.apply(p, x)))

  def _check(self, images) -> None:
    check_images(images, self.image_shape, f"the feature network {self.name!r}")
    # uint8 is in range by its type; other integer types are checked where their values are
    # on the host already (never for traced values, nor by copying device arrays back).
    if isinstance(images, np.ndarray) and images.dtype != np.uint8 and images.size:
      lo, hi = int(images.min()), int(images.max())
      if lo < 0 or hi > 255:
        raise ValueError(f"the feature network {self.name!r} takes pixel values in [0, 255], "
                         f"got values in [{lo}, {hi}].")

  def apply(self, images) -> tuple[jax.Array, jax.Array]:
    """(logits float32 [B, num_classes], features float32 [B, feature_dim]) of integer
    images [B, *image_shape] in [0, 255]."""
    self._check(images)
    return self._forward(self.params, images)

  def feature_fn(self, images) -> jax.Array:
    """float32 [B, feature_dim]: the penultimate ReLU activations of integer images
    [B, *image_shape] in [0, 255]. Jittable (shapes and dtypes are checked when traced)."""
    return self.apply(images)[1]

  def logits_fn(self, images) -> jax.Array:
    """float32 [B, num_classes]: the class logits of integer images [B, *image_shape]."""
    return self.apply(images)[0]

  def classify(self, images) -> jax.Array:
    """int32 [B]: the most likely class of each image."""
    return jnp.argmax(self.logits_fn(images), axis=-1).astype(jnp.int32)


def _network(path: Path, sha256: str, name: str) -> FeatureNetwork:
  arrays = _read_checked(path, sha256)
  meta = _meta(arrays, path)
  module = Classifier(widths=meta["widths"], feature_dim=meta["feature_dim"],
                      num_classes=meta["num_classes"], image_shape=meta["image_shape"],
                      group_norm=bool(meta["group_norm"]))
  flat = {k[len("params/"):]: v for k, v in arrays.items() if k.startswith("params/")}
  dummy = jnp.zeros((1, *meta["image_shape"]), jnp.uint8)
  shapes = jax.eval_shape(module.init, jax.random.key(0), dummy)["params"]
  want = {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(shapes, sep="/").items()}
  got = {k: tuple(v.shape) for k, v in flat.items()}
  if got != want:
    raise ValueError(f"{path}: its parameters {got} do not fit the Classifier its metadata "
                     f"describes, which has {want}.")
  params = {"params": traverse_util.unflatten_dict(
      {k: jnp.asarray(v, jnp.float32) for k, v in flat.items()}, sep="/")}
  return FeatureNetwork(
      name=name, sha256=sha256, dataset=meta["dataset"], feature_dim=meta["feature_dim"],
      num_classes=meta["num_classes"], image_shape=tuple(meta["image_shape"]),
      test_accuracy=float(meta["test_accuracy"]), num_test=meta["num_test"], module=module,
      params=params)


def load_feature_network(name: str = "fashion_mnist", *,
                         path: str | os.PathLike | None = None) -> FeatureNetwork:
  """A shipped feature network, its weights checked against their recorded sha256.

  Args:
    name: a key of `SHIPPED` ("fashion_mnist").
    path: read the weights from this file instead of the installed one (e.g. a copy); it must
      have the same sha256.

  Raises:
    KeyError: an unknown name.
    WeightsChecksumError (a ValueError): the file's sha256 is not the recorded one; the message
      names both.
    FileNotFoundError: no file at the path.
  """
  if name not in SHIPPED:
    raise KeyError(f"No shipped feature network {name!r}; there are {sorted(SHIPPED)}. For "
                   "weights of your own use load_weights_file(path, sha256).")
  filename, sha256 = SHIPPED[name]
  return _network(Path(path) if path is not None else WEIGHTS_DIR / filename, sha256, name)


def load_weights_file(path: str | os.PathLike, sha256: str) -> FeatureNetwork:
  """A feature network from a weights file of experiments/train_classifier.py (e.g. trained on
  MNIST), checked against `sha256` (the one its run reported in result.json)."""
  if not isinstance(sha256, str) or len(sha256) != 64:
    raise ValueError(f"sha256 must be the file's 64-character hex digest, got {sha256!r} (the "
                     "training run wrote it to result.json; sha256_of(path) computes one).")
  return _network(Path(path), sha256.lower(), str(path))
