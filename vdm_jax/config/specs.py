"""The frozen, typed specs a resolved config is made of (`RunSpec` and its groups), and the
names a config chooses from; `vdm_jax.config.resolve` builds them, with every check."""
from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any

import jax
import numpy as np

from vdm_jax import likelihood, nets, ode, sampling
from vdm_jax import model as model_lib
from vdm_jax import latent as latent_lib
from vdm_jax import noisy_classifier as noisy_classifier_lib

DECAYS = ("none", "linear", "cosine")
# Which parameters weight decay applies to (`training.optimizer.decay_mask`).
WEIGHT_DECAY_MASKS = ("kernels", "all_but_biases")
DTYPES = ("float32", "bfloat16")
# config.model.network of a noisy-classifier run (`noisy_classifier.NoisyClassifierModel`,
# trained by the loop's NOISY_CLASSIFIER objective); the other names are score networks.
CLASSIFIER_NETWORK = "noisy_classifier"
# config.model.network of an autoencoder run (stage 1 of latent diffusion:
# `latent.AutoencoderModel`, trained by the loop's AUTOENCODER objective).
AUTOENCODER_NETWORK = "autoencoder"
# The networks that are not score networks: their runs train no diffusion objective.
NOT_DIFFUSION = (CLASSIFIER_NETWORK, AUTOENCODER_NETWORK)
NETWORK_CLASSES = {**model_lib.NETWORKS, CLASSIFIER_NETWORK: nets.NoisyClassifier,
                   AUTOENCODER_NETWORK: nets.KLAutoencoder}


# ============================================================================ the specs


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """name: a dataset of `vdm_jax.data` (built in or registered); data_dir: folder searched
  first for its files (None: VDM_DATA_DIR, then system folders, then tensorflow-datasets)."""
  name: str
  data_dir: str | None


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """The `model.VDM` attributes, plus the network: its name in `model.NETWORKS` and its
  attributes as sorted (key, value) pairs (hashable, so the spec can key compile caches).

  The data model (`data_model`) is decided here and only here: `data` is its kind, "discrete"
  (integers in [0, vocab_size) on the bin-centre grid in data_range = (low, high)) or
  "continuous" (floats; vocab_size and data_range do not apply). With autoencoder_workdir set
  (stage 2 of latent diffusion), the data are still the dataset's pixels, and `build` gives a
  `latent.LatentVDM` on the latents of that stage-1 run (autoencoder_step: its checkpoint, None
  for the latest). The fields with a default were added after the others: a run's config.json
  written before them resolves with these."""
  network: str
  network_kwargs: tuple[tuple[str, Any], ...]
  image_shape: tuple[int, int, int]
  vocab_size: int
  schedule: str
  gamma_min: float
  gamma_max: float
  T: int
  antithetic: bool
  num_classes: int
  label_dropout: float
  dtype: str
  weighting: str
  sigmoid_bias: float
  schedule_objective: str
  data: str = "discrete"
  data_range: tuple[float, float] = (-1.0, 1.0)
  autoencoder_workdir: str | None = None
  autoencoder_step: int | None = None

  def data_model(self) -> likelihood.DataModel:
    """The data model these settings name (`likelihood.make`)."""
    return likelihood.make(self.data, self.vocab_size, *self.data_range)

  def build(self) -> (model_lib.VDM | noisy_classifier_lib.NoisyClassifierModel
                      | latent_lib.AutoencoderModel):
    """The VDM module these settings describe (for network "noisy_classifier", the
    `noisy_classifier.NoisyClassifierModel`; for "autoencoder", the
    `latent.AutoencoderModel`)."""
    net_kwargs = dict(self.network_kwargs, num_classes=self.num_classes)
    if self.dtype != "float32":
      net_kwargs["dtype"] = np.dtype(getattr(jax.numpy, self.dtype))
    if self.network == AUTOENCODER_NETWORK:
      del net_kwargs["num_classes"]
      return latent_lib.AutoencoderModel(
          nets.KLAutoencoder(image_shape=self.image_shape, **net_kwargs),
          image_shape=self.image_shape, data=self.data_model())
    if self.network == CLASSIFIER_NETWORK:
      classifier = nets.NoisyClassifier(gamma_low=self.gamma_min, gamma_high=self.gamma_max,
                                        **net_kwargs)
      return noisy_classifier_lib.NoisyClassifierModel(
          classifier=classifier, image_shape=self.image_shape, data=self.data_model(),
          schedule=self.schedule, gamma_min=self.gamma_min, gamma_max=self.gamma_max,
          antithetic=self.antithetic)
    attrs = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
             if f.name not in ("network", "network_kwargs", "dtype", "vocab_size", "data",
                               "data_range", "autoencoder_workdir", "autoencoder_step")}
    network = model_lib.NETWORKS[self.network](**net_kwargs)
    if self.autoencoder_workdir is not None:   # stage 2: a VDM on the autoencoder's latents
      attrs["image_shape"] = autoencoder_spec(self.autoencoder_workdir).model.build().latent_shape
      return latent_lib.LatentVDM(network=network, data=likelihood.Continuous(),
                                  autoencoder_workdir=self.autoencoder_workdir,
                                  autoencoder_step=self.autoencoder_step, **attrs)
    return model_lib.VDM(network=network, data=self.data_model(), **attrs)


def autoencoder_spec(workdir: str) -> "RunSpec":
  """The resolved spec of the stage-1 run in `workdir` (its config.json), read once per
  version of the file; ValueError unless that run trains an autoencoder."""
  path = Path(workdir) / "config.json"
  if not path.is_file():
    raise ValueError(f"config.model.autoencoder_workdir={workdir} has no config.json: it is not "
                     "the workdir of a training run. Train stage 1 (an autoencoder) there first.")
  return _autoencoder_spec(str(path), path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _autoencoder_spec(path: str, mtime_ns: int) -> "RunSpec":
  from vdm_jax.config import reading
  spec = reading.resolve(reading.from_json(Path(path).read_text()))
  if spec.model.network != AUTOENCODER_NETWORK:
    raise ValueError(
        f"config.model.autoencoder_workdir={Path(path).parent} holds a run of network "
        f"{spec.model.network!r}, not an autoencoder: train stage 1 with "
        f"config.model.network='{AUTOENCODER_NETWORK}' there first.")
  return spec


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
  """AdamW with warm-up and decay, clipping, EMA: see `training.optimizer`.

  weight_decay_mask: 'kernels' (kernels and embeddings) or 'all_but_biases' (also norm scales
  and the noise schedule's parameters, as the official VDM code). Its default here is the one
  default of the field: a config written before the field existed resolves with it.
  """
  lr: float
  warmup_steps: int
  decay: str
  weight_decay: float
  ema_rate: float
  grad_clip: float
  b1: float
  b2: float
  eps: float
  weight_decay_mask: str = "kernels"


@dataclasses.dataclass(frozen=True)
class LoopSpec:
  """The training loop: seed, global batch, steps, and the intervals (in steps; 0 = off) of the
  periodic actions."""
  seed: int
  batch_size: int
  num_steps: int
  steps_per_call: int
  log_every: int
  eval_every: int
  checkpoint_every: int
  sample_every: int
  keep_checkpoints: int


@dataclasses.dataclass(frozen=True)
class EvalSpec:
  """Test-set bpd: global batch, time samples per image, T (None: the model's), max_batches
  (None: the whole split); method "elbo" | "ode" (the bound `--mode=eval` reports; the training
  loop's periodic evals are always the ELBO) and the ODE bound's trace, rtol, atol
  (`evaluation.evaluate`). The fields with a default here were added after the others: a
  run's config.json written before them resolves with these defaults (base.py uses them too)."""
  batch_size: int
  num_time_samples: int
  T: int | None
  max_batches: int | None
  method: str = "elbo"
  trace: str = "hutchinson"
  rtol: float = ode.RTOL
  atol: float = ode.ATOL


@dataclasses.dataclass(frozen=True)
class SamplingSpec:
  """Sampling: `sampling.sample_model` settings (eta, spacing, order None: the sampler's
  default; T the network evaluations of a chain sampler);
  num_samples for the training run's grids and --mode=sample, which draws them in chunks of
  per_device_batch images per device; rtol and atol for the "ode" sampler. classifier_workdir:
  a noisy-classifier run (config.model.network = "noisy_classifier") whose EMA parameters guide
  the samples with classifier_scale (`noisy_classifier.ClassifierGuided`; labels 0, 1, 2, ...
  cyclically). The fields with a default were added after the others (see EvalSpec)."""
  sampler: str
  T: int
  num_samples: int
  eta: float | None
  guidance_weight: float
  per_device_batch: int = 64
  rtol: float = ode.RTOL
  atol: float = ode.ATOL
  spacing: str | None = None
  order: int | None = None
  classifier_workdir: str | None = None
  classifier_scale: float = 0.0

  def sampler_kwargs(self) -> dict:
    """The sampler's arguments of `sampling.sample_model`: T, eta, spacing and order for a
    chain sampler (None: the sampler's own), rtol and atol for "ode"."""
    if sampling.is_chain(self.sampler):
      return {"sampler": self.sampler, "T": self.T, "eta": self.eta, "spacing": self.spacing,
              "order": self.order}
    return {"sampler": self.sampler, "rtol": self.rtol, "atol": self.atol}


@dataclasses.dataclass(frozen=True)
class SampleEvalSpec:
  """Sample quality (`training.sample_eval`): FD, KID and precision/recall of `num_samples`
  samples against a split of the data, in the feature space of a feature network.

  every_steps: the training loop's interval (0: never; `--mode=sample_eval` runs it on a
    checkpoint whatever its value). The samples: sampler, T, eta, spacing, order,
    guidance_weight, rtol, atol, classifier_workdir, classifier_scale as in SamplingSpec, drawn
    in chunks of per_device_batch images per device.
  feature_network: a network shipped with the package (`metrics.features.SHIPPED`), "auto"
    (the one named like the dataset, if any), or unused when feature_weights is set: a weights
    file of experiments/train_classifier.py with its sha256 (`metrics.load_weights_file`).
  reference_split: the split whose statistics the samples are compared with; they are computed
    once and cached in cache_dir (None: $VDM_CACHE_DIR or ~/.cache/vdm_jax), keyed by the
    feature network's sha256, the dataset and split and their content.
  max_features: KID and precision/recall use the features of the first n = min(num_samples,
    max_features) samples and of the first n reference images (FD uses all of them); kid_subsets x kid_subset_size as
    `metrics.kernel_inception_distance`; pr_k the k of `metrics.precision_recall`.
  Every field has its default here, the one source base.py reads: a config written before the
  group existed resolves with them."""
  every_steps: int = 0
  num_samples: int = 2000
  sampler: str = "ddim"
  T: int = 50
  eta: float | None = None
  guidance_weight: float = 0.0
  per_device_batch: int = 64
  rtol: float = ode.RTOL
  atol: float = ode.ATOL
  spacing: str | None = None
  order: int | None = None
  classifier_workdir: str | None = None
  classifier_scale: float = 0.0
  feature_network: str = "auto"
  feature_weights: str | None = None
  feature_sha256: str | None = None
  reference_split: str = "test"
  max_features: int = 10_000
  kid_subsets: int = 100
  kid_subset_size: int = 1000
  pr_k: int = 3
  cache_dir: str | None = None

  def sampling(self) -> SamplingSpec:
    """The samples' settings as a SamplingSpec (what `sample_shards.generate` takes)."""
    return SamplingSpec(sampler=self.sampler, T=self.T, num_samples=self.num_samples,
                        eta=self.eta, guidance_weight=self.guidance_weight,
                        per_device_batch=self.per_device_batch, rtol=self.rtol, atol=self.atol,
                        spacing=self.spacing, order=self.order,
                        classifier_workdir=self.classifier_workdir,
                        classifier_scale=self.classifier_scale)


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """Everything a run needs, checked."""
  data: DataSpec
  model: ModelSpec
  optimizer: OptimizerSpec
  training: LoopSpec
  eval: EvalSpec
  sampling: SamplingSpec
  sample_eval: SampleEvalSpec = SampleEvalSpec()

  def to_dict(self) -> dict:
    """The resolved config as plain data, in the layout of the config files."""
    out = {}
    for group in dataclasses.fields(self):
      spec = getattr(self, group.name)
      values = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}
      if group.name == "model":
        values[spec.network] = dict(values.pop("network_kwargs"))
      out[group.name] = values
    return out

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)


# ============================================================================ reading a config
