"""The run's config, validated once and resolved into frozen, typed specs.

    from vdm_jax import config as config_lib
    spec = config_lib.resolve(config)        # ml_collections.ConfigDict -> RunSpec; raises early
    model = spec.model.build()               # model.VDM

`experiments/configs/base.py` holds every field with its default; this module holds every check.
A config is read here and nowhere else: the training system takes the specs (`RunSpec` and its
parts), never the ConfigDict. `resolve` raises ValueError (or TypeError) naming the field, what
was wrong and what to set, before any data is read or anything is compiled or written.

Groups and their specs: data -> DataSpec, model -> ModelSpec (with one sub-group per network,
e.g. model.unet; only the chosen network's is read), training -> LoopSpec, optimizer ->
OptimizerSpec, eval -> EvalSpec, sampling -> SamplingSpec, sample_eval -> SampleEvalSpec. `RunSpec.to_dict()` is the resolved
config again (what a run writes to config.json), and `from_json` reads that back.
"""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
from typing import Any, Mapping

import jax
import ml_collections
import numpy as np

from vdm_jax import data, evaluation, likelihood, nets, ode, parallel, sampling
from vdm_jax import model as model_lib
from vdm_jax import noisy_classifier as noisy_classifier_lib
from vdm_jax.metrics import features as feature_networks

DECAYS = ("none", "linear", "cosine")
# Which parameters weight decay applies to (`training.optimizer.decay_mask`).
WEIGHT_DECAY_MASKS = ("kernels", "all_but_biases")
DTYPES = ("float32", "bfloat16")
# config.model.network of a noisy-classifier run (`noisy_classifier.NoisyClassifierModel`,
# trained by the loop's NOISY_CLASSIFIER objective); the other names are score networks.
CLASSIFIER_NETWORK = "noisy_classifier"
NETWORK_CLASSES = {**model_lib.NETWORKS, CLASSIFIER_NETWORK: nets.NoisyClassifier}
# Network attributes that come from the model group, not from the network's own sub-group.
_NETWORK_ATTRS_FROM_MODEL = ("num_classes", "dtype", "parent", "name", "gamma_low",
                             "gamma_high")
# Settings of the diffusion objective that a noisy classifier does not have: they must keep
# these values in its config.
_NOT_FOR_CLASSIFIER = {"T": 0, "label_dropout": 0.0, "weighting": "elbo",
                       "schedule_objective": "elbo"}


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
  "continuous" (floats; vocab_size and data_range do not apply). The fields with a default were
  added after the others: a run's config.json written before them resolves with these."""
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

  def data_model(self) -> likelihood.DataModel:
    """The data model these settings name (`likelihood.make`)."""
    return likelihood.make(self.data, self.vocab_size, *self.data_range)

  def build(self) -> model_lib.VDM | noisy_classifier_lib.NoisyClassifierModel:
    """The VDM module these settings describe (for network "noisy_classifier", the
    `noisy_classifier.NoisyClassifierModel` instead)."""
    net_kwargs = dict(self.network_kwargs, num_classes=self.num_classes)
    if self.dtype != "float32":
      net_kwargs["dtype"] = np.dtype(getattr(jax.numpy, self.dtype))
    if self.network == CLASSIFIER_NETWORK:
      classifier = nets.NoisyClassifier(gamma_low=self.gamma_min, gamma_high=self.gamma_max,
                                        **net_kwargs)
      return noisy_classifier_lib.NoisyClassifierModel(
          classifier=classifier, image_shape=self.image_shape, data=self.data_model(),
          schedule=self.schedule, gamma_min=self.gamma_min, gamma_max=self.gamma_max,
          antithetic=self.antithetic)
    attrs = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
             if f.name not in ("network", "network_kwargs", "dtype", "vocab_size", "data",
                               "data_range")}
    return model_lib.VDM(network=model_lib.NETWORKS[self.network](**net_kwargs),
                         data=self.data_model(), **attrs)


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


def from_json(text: str) -> ml_collections.ConfigDict:
  """A ConfigDict from `RunSpec.to_json()` (a run's config.json); JSON lists become tuples."""
  def tuples(value):
    if isinstance(value, dict):
      return {k: tuples(v) for k, v in value.items()}
    if isinstance(value, list):
      return tuple(tuples(v) for v in value)
    return value
  return ml_collections.ConfigDict(tuples(json.loads(text)))


def _group(config: Any, name: str, spec_cls: type, extra: tuple[str, ...] = ()) -> dict:
  """The fields of `config.<name>`: exactly the spec's fields (plus `extra` sub-groups)."""
  if name not in config:
    raise ValueError(f"config has no '{name}' group; start from experiments/configs/base.py "
                     "(base.get_config()) and override what differs.")
  values = dict(config[name])
  fields = [f.name for f in dataclasses.fields(spec_cls) if f.name != "network_kwargs"]
  unknown = sorted(set(values) - set(fields) - set(extra))
  if unknown:
    raise ValueError(f"config.{name} has no field {', '.join(unknown)}; valid fields: "
                     f"{', '.join(sorted(fields + list(extra)))}.")
  # Fields with a default in the spec may be absent (configs saved before they existed).
  missing = [f.name for f in dataclasses.fields(spec_cls)
             if f.name in fields and f.name not in values and f.default is dataclasses.MISSING]
  if missing:
    raise ValueError(f"config.{name} lacks {', '.join(missing)}: every field is in "
                     "experiments/configs/base.py; build configs from base.get_config().")
  for f in dataclasses.fields(spec_cls):
    if f.name in fields and f.name not in values:
      values[f.name] = f.default
  return values


def _int(where: str, value: Any, minimum: int = 0, allow_none: bool = False) -> int | None:
  if value is None and allow_none:
    return None
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    none = " or None" if allow_none else ""
    raise ValueError(f"{where} must be an int >= {minimum}{none}, got {value!r}.")
  return int(value)


def _float(where: str, value: Any, low: float = -math.inf, high: float = math.inf,
           low_open: bool = False, high_open: bool = False, allow_none: bool = False
           ) -> float | None:
  if value is None and allow_none:
    return None
  ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
  ok = ok and (value > low if low_open else value >= low)
  ok = ok and (value < high if high_open else value <= high)
  if not ok:
    lo, hi = "(" if low_open else "[", ")" if high_open else "]"
    raise ValueError(f"{where} must be a finite number in {lo}{low}, {high}{hi}, got {value!r}.")
  return float(value)


def _choice(where: str, value: Any, choices) -> str:
  if value not in choices:
    raise ValueError(f"{where} must be one of {', '.join(map(repr, choices))}; got {value!r}.")
  return value


def _data_spec(config) -> DataSpec:
  g = _group(config, "data", DataSpec)
  data.dataset_info(g["name"])   # an unknown name raises, listing the known ones
  return DataSpec(name=g["name"], data_dir=None if g["data_dir"] is None else str(g["data_dir"]))


def _model_spec(config, data_spec: DataSpec) -> ModelSpec:
  g = _group(config, "model", ModelSpec, extra=tuple(NETWORK_CLASSES))
  network = _choice("config.model.network", g.pop("network"), tuple(NETWORK_CLASSES))
  for name in NETWORK_CLASSES:
    g.pop(name, None)
  net_cls = NETWORK_CLASSES[network]
  net_fields = [f.name for f in dataclasses.fields(net_cls)
                if f.name not in _NETWORK_ATTRS_FROM_MODEL]
  net_kwargs = dict(config.model.get(network) or {})
  unknown = sorted(set(net_kwargs) - set(net_fields))
  if unknown:
    raise ValueError(f"config.model.{network} has no field {', '.join(unknown)}; valid fields "
                     f"of {net_cls.__name__}: {', '.join(sorted(net_fields))}.")
  g["image_shape"] = tuple(g["image_shape"])
  g["dtype"] = _choice("config.model.dtype", g["dtype"], DTYPES)
  g["data"] = _choice("config.model.data", g["data"], tuple(likelihood.DATA_KINDS))
  low_high = tuple(g["data_range"]) if isinstance(g["data_range"], (tuple, list)) else ()
  if len(low_high) != 2:
    raise ValueError(f"config.model.data_range must be (low, high), got {g['data_range']!r}.")
  g["data_range"] = tuple(_float("config.model.data_range", v) for v in low_high)
  for key in ("gamma_min", "gamma_max", "label_dropout", "sigmoid_bias"):
    g[key] = _float(f"config.model.{key}", g[key])
  spec = ModelSpec(network=network, network_kwargs=tuple(sorted(net_kwargs.items())), **g)
  if network == CLASSIFIER_NETWORK:
    for key, value in _NOT_FOR_CLASSIFIER.items():
      if getattr(spec, key) != value:
        raise ValueError(f"config.model.{key}={getattr(spec, key)!r} is a setting of the "
                         f"diffusion objective; a noisy classifier has none: set it to "
                         f"{value!r}.")
  try:
    spec.build()   # the model's own checks (model.validate) and the network's
  except (TypeError, ValueError) as e:
    raise type(e)(f"config.model: {e}") from None

  info = data.dataset_info(data_spec.name)
  served_floats = np.issubdtype(np.dtype(info["dtype"]), np.floating)
  if served_floats != np.issubdtype(spec.data_model().dtype, np.floating):
    kind = "continuous" if served_floats else "discrete"
    raise ValueError(
        f"config.model.data={spec.data!r} takes {'integer' if served_floats else 'float'} "
        f"data, but dataset {data_spec.name!r} serves {info['dtype']}: set config.model.data = {kind!r}.")
  if spec.image_shape != tuple(info["shape"]):
    raise ValueError(
        f"config.model.image_shape={spec.image_shape} does not match dataset "
        f"{data_spec.name!r}, whose images are {tuple(info['shape'])}: set "
        f"config.model.image_shape = {tuple(info['shape'])}.")
  if spec.num_classes and spec.num_classes != info["num_classes"]:
    raise ValueError(
        f"config.model.num_classes={spec.num_classes} but dataset {data_spec.name!r} has "
        f"{info['num_classes']} classes: set config.model.num_classes to {info['num_classes']} "
        "(class-conditional) or 0 (unconditional).")
  return spec


def _optimizer_spec(config) -> OptimizerSpec:
  g = _group(config, "optimizer", OptimizerSpec)
  w = "config.optimizer."
  return OptimizerSpec(
      lr=_float(w + "lr", g["lr"], 0.0, low_open=True),
      warmup_steps=_int(w + "warmup_steps", g["warmup_steps"]),
      decay=_choice(w + "decay", g["decay"], DECAYS),
      weight_decay=_float(w + "weight_decay", g["weight_decay"], 0.0),
      ema_rate=_float(w + "ema_rate", g["ema_rate"], 0.0, 1.0, high_open=True),
      grad_clip=_float(w + "grad_clip", g["grad_clip"], 0.0),
      b1=_float(w + "b1", g["b1"], 0.0, 1.0, high_open=True),
      b2=_float(w + "b2", g["b2"], 0.0, 1.0, high_open=True),
      eps=_float(w + "eps", g["eps"], 0.0, low_open=True),
      weight_decay_mask=_choice(w + "weight_decay_mask",
                                g["weight_decay_mask"],
                                WEIGHT_DECAY_MASKS))


def _loop_spec(config, num_devices: int, num_processes: int) -> LoopSpec:
  g = _group(config, "training", LoopSpec)
  w = "config.training."
  spec = LoopSpec(
      seed=_int(w + "seed", g["seed"]),
      batch_size=_int(w + "batch_size", g["batch_size"], 1),
      num_steps=_int(w + "num_steps", g["num_steps"]),
      steps_per_call=_int(w + "steps_per_call", g["steps_per_call"], 1),
      **{k: _int(w + k, g[k]) for k in ("log_every", "eval_every", "checkpoint_every",
                                        "sample_every")},
      keep_checkpoints=_int(w + "keep_checkpoints", g["keep_checkpoints"], 1))
  parallel.check_batch_size(spec.batch_size, num_devices, num_processes, w + "batch_size")
  return spec


def _eval_spec(config, num_devices: int, num_processes: int) -> EvalSpec:
  g = _group(config, "eval", EvalSpec)
  w = "config.eval."
  spec = EvalSpec(batch_size=_int(w + "batch_size", g["batch_size"], 1),
                  num_time_samples=_int(w + "num_time_samples", g["num_time_samples"], 1),
                  T=_int(w + "T", g["T"], 0, allow_none=True),
                  max_batches=_int(w + "max_batches", g["max_batches"], 1, allow_none=True),
                  method=_choice(w + "method", g["method"], evaluation.METHODS),
                  trace=_choice(w + "trace", g["trace"], ode.TRACES),
                  rtol=_float(w + "rtol", g["rtol"], 0.0, 1.0, low_open=True, high_open=True),
                  atol=_float(w + "atol", g["atol"], 0.0, 1.0, low_open=True, high_open=True))
  if spec.method == "ode" and spec.T is not None:
    raise ValueError(f"{w}T={spec.T} sets the ELBO's time discretisation: method='ode' takes "
                     "none (set config.eval.T=None).")
  parallel.check_batch_size(spec.batch_size, num_devices, num_processes, w + "batch_size")
  return spec


def _sampler_fields(g: dict, w: str, model_spec: ModelSpec) -> dict:
  """The checked sampler fields (those of SamplingSpec but num_samples) of group `w`."""
  out = dict(
      sampler=_choice(w + "sampler", g["sampler"], sampling.SAMPLERS),
      T=_int(w + "T", g["T"], 1),
      eta=_float(w + "eta", g["eta"], 0.0, 1.0, allow_none=True),
      guidance_weight=_float(w + "guidance_weight", g["guidance_weight"], 0.0),
      per_device_batch=_int(w + "per_device_batch", g["per_device_batch"], 1),
      rtol=_float(w + "rtol", g["rtol"], 0.0, 1.0, low_open=True, high_open=True),
      atol=_float(w + "atol", g["atol"], 0.0, 1.0, low_open=True, high_open=True),
      spacing=g["spacing"], order=g["order"],
      classifier_workdir=None if g["classifier_workdir"] is None else str(g["classifier_workdir"]),
      classifier_scale=_float(w + "classifier_scale", g["classifier_scale"], 0.0))
  try:   # the sampler's own checks (sampling.args), the one source of what each takes
    sampling.resolve_eta(out["sampler"], out["eta"])
    sampling.resolve_spacing(out["sampler"], out["spacing"])
    sampling.resolve_order(out["sampler"], out["order"])
  except ValueError as e:
    raise ValueError(f"{w[:-1]}: {e}") from None
  if out["guidance_weight"] and not model_spec.num_classes:
    raise ValueError(f"{w}guidance_weight={out['guidance_weight']} needs a class-conditional "
                     "model: set config.model.num_classes (and label_dropout > 0 to train the "
                     "unconditional model too), or guidance_weight=0.")
  if out["classifier_scale"] and out["classifier_workdir"] is None:
    raise ValueError(f"{w}classifier_scale={out['classifier_scale']} needs a classifier: set "
                     f"{w}classifier_workdir to a noisy-classifier run's workdir (one trained "
                     "with config.model.network='noisy_classifier').")
  if out["classifier_workdir"] is not None and model_spec.network == CLASSIFIER_NETWORK:
    raise ValueError(f"{w}classifier_workdir guides a diffusion model's samples; this config "
                     "trains the noisy classifier itself, which is not sampled.")
  return out


def _sampling_spec(config, model_spec: ModelSpec) -> SamplingSpec:
  g = _group(config, "sampling", SamplingSpec)
  w = "config.sampling."
  return SamplingSpec(num_samples=_int(w + "num_samples", g["num_samples"], 1),
                      **_sampler_fields(g, w, model_spec))


def _sample_eval_spec(config, model_spec: ModelSpec, data_spec: DataSpec) -> SampleEvalSpec:
  # A config written before the group existed has none: every field takes its default.
  g = _group(config if "sample_eval" in config else {"sample_eval": {}}, "sample_eval",
             SampleEvalSpec)
  w = "config.sample_eval."
  names = ("auto", *feature_networks.SHIPPED)
  spec = SampleEvalSpec(
      every_steps=_int(w + "every_steps", g["every_steps"]),
      num_samples=_int(w + "num_samples", g["num_samples"], 2),
      feature_network=_choice(w + "feature_network", g["feature_network"], names),
      feature_weights=None if g["feature_weights"] is None else str(g["feature_weights"]),
      feature_sha256=None if g["feature_sha256"] is None else str(g["feature_sha256"]),
      reference_split=_choice(w + "reference_split", g["reference_split"], data.SPLITS),
      max_features=_int(w + "max_features", g["max_features"], 2),
      kid_subsets=_int(w + "kid_subsets", g["kid_subsets"], 1),
      kid_subset_size=_int(w + "kid_subset_size", g["kid_subset_size"], 2),
      pr_k=_int(w + "pr_k", g["pr_k"], 1),
      cache_dir=None if g["cache_dir"] is None else str(g["cache_dir"]),
      **_sampler_fields(g, w, model_spec))
  if spec.every_steps and model_spec.network == CLASSIFIER_NETWORK:
    raise ValueError(f"{w}every_steps={spec.every_steps}: a noisy classifier is not sampled; "
                     "set it to 0 (its samples are measured by sampling a diffusion run with "
                     f"{w}classifier_workdir).")
  if (spec.feature_weights is None) != (spec.feature_sha256 is None):
    raise ValueError(f"{w}feature_weights and {w}feature_sha256 go together: a weights file of "
                     "experiments/train_classifier.py and the sha256 its run wrote to "
                     "result.json (or neither, for config.sample_eval.feature_network).")
  if spec.pr_k >= min(spec.num_samples, spec.max_features):
    raise ValueError(f"{w}pr_k={spec.pr_k} needs more than {spec.pr_k} samples kept: raise "
                     f"{w}num_samples ({spec.num_samples}) and {w}max_features "
                     f"({spec.max_features}), or lower pr_k.")
  return spec


def resolve(config: Mapping[str, Any], *, num_devices: int | None = None,
            num_processes: int | None = None) -> RunSpec:
  """Checks every field of `config` and returns the frozen specs.

  Args:
    config: a ConfigDict (or nested dicts) with the groups of experiments/configs/base.py.
    num_devices, num_processes: what the batch sizes must divide (default: this run's
      `jax.device_count()` and `jax.process_count()`).

  Raises:
    ValueError / TypeError naming the field, the problem and the fix; nothing is read, built or
    written before it.
  """
  num_devices = jax.device_count() if num_devices is None else num_devices
  num_processes = jax.process_count() if num_processes is None else num_processes
  data_spec = _data_spec(config)
  model_spec = _model_spec(config, data_spec)
  return RunSpec(data=data_spec, model=model_spec, optimizer=_optimizer_spec(config),
                 training=_loop_spec(config, num_devices, num_processes),
                 eval=_eval_spec(config, num_devices, num_processes),
                 sampling=_sampling_spec(config, model_spec),
                 sample_eval=_sample_eval_spec(config, model_spec, data_spec))
