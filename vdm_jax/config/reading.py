"""Reading a config: `resolve` (ConfigDict -> RunSpec, every check, raising before anything
runs) and `from_json` (a run's config.json back to a ConfigDict)."""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
from typing import Any, Mapping

import jax
import ml_collections
import numpy as np

from vdm_jax import data, evaluation, likelihood, ode, parallel, sampling
from vdm_jax.config.specs import (
    AUTOENCODER_NETWORK, autoencoder_spec, CLASSIFIER_NETWORK, DECAYS, DTYPES, NETWORK_CLASSES, NOT_DIFFUSION,
    WEIGHT_DECAY_MASKS, DataSpec, EvalSpec, LoopSpec, ModelSpec, OptimizerSpec, RunSpec,
    SampleEvalSpec, SamplingSpec)
from vdm_jax.metrics import features as feature_networks

# Network attributes that come from the model group, not from the network's own sub-group.
_NETWORK_ATTRS_FROM_MODEL = ("num_classes", "dtype", "parent", "name", "gamma_low",
                             "gamma_high", "image_shape")
# Settings of the diffusion objective that a noisy classifier or an autoencoder does not have:
# they must keep these values in its config.
_NOT_FOR_CLASSIFIER = {"T": 0, "label_dropout": 0.0, "weighting": "elbo",
                       "schedule_objective": "elbo"}


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
  if g["autoencoder_workdir"] is not None:
    g["autoencoder_workdir"] = str(g["autoencoder_workdir"])
  if g["autoencoder_step"] is not None:
    g["autoencoder_step"] = _int("config.model.autoencoder_step", g["autoencoder_step"])
  spec = ModelSpec(network=network, network_kwargs=tuple(sorted(net_kwargs.items())), **g)
  if network in NOT_DIFFUSION:
    what = "a noisy classifier" if network == CLASSIFIER_NETWORK else "an autoencoder"
    for key, value in _NOT_FOR_CLASSIFIER.items():
      if getattr(spec, key) != value:
        raise ValueError(f"config.model.{key}={getattr(spec, key)!r} is a setting of the "
                         f"diffusion objective; {what} has none: set it to {value!r}.")
  if network == AUTOENCODER_NETWORK and spec.num_classes:
    raise ValueError(f"config.model.num_classes={spec.num_classes}: the autoencoder is "
                     "unconditional (it encodes images alone); set it to 0.")
  if spec.autoencoder_workdir is not None:
    _check_latent_model(spec, data_spec)
  try:
    spec.build()   # the model's own checks (model.validate) and the network's
  except (TypeError, ValueError) as e:
    raise type(e)(f"config.model: {e}") from None
  if spec.autoencoder_workdir is not None:
    _check_network_fits_latents(spec)

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


def _check_latent_model(spec: ModelSpec, data_spec: DataSpec) -> None:
  """Stage 2 of latent diffusion: a diffusion network on the pixels of the autoencoder's
  dataset."""
  w = "config.model."
  if spec.network in NOT_DIFFUSION:
    raise ValueError(f"{w}autoencoder_workdir is set: this run is the latent diffusion model "
                     f"(stage 2), which needs a score network, not {spec.network!r}.")
  if spec.data != "discrete":
    raise ValueError(f"{w}data={spec.data!r}: a latent diffusion run takes the 8-bit pixels its "
                     "autoencoder was trained on (config.model.data = 'discrete'); the latents "
                     "are continuous by construction.")
  ae = autoencoder_spec(spec.autoencoder_workdir)
  if (ae.data.name, ae.model.image_shape) != (data_spec.name, spec.image_shape):
    raise ValueError(
        f"{w}autoencoder_workdir={spec.autoencoder_workdir} holds an autoencoder of dataset "
        f"{ae.data.name!r} with images {ae.model.image_shape}; this run is on "
        f"{data_spec.name!r} with {spec.image_shape}: set config.data.name to "
        f"{ae.data.name!r} or use an autoencoder of this dataset.")
  if spec.autoencoder_step is not None and spec.autoencoder_step < 1:
    raise ValueError(f"{w}autoencoder_step must be a checkpoint step (>= 1) or None (the "
                     f"latest), got {spec.autoencoder_step}.")


def _check_network_fits_latents(spec: ModelSpec) -> None:
  """Traces (no compute) the latent model's network on latents of the autoencoder's shape."""
  from vdm_jax import model as model_lib
  model = spec.build()
  try:
    jax.eval_shape(lambda k: model_lib.init_variables(model, k), jax.random.PRNGKey(0))
  except (TypeError, ValueError) as e:
    raise ValueError(
        f"config.model.{spec.network} does not fit the latents of shape {model.image_shape} of "
        f"the autoencoder in {spec.autoencoder_workdir}: {e}") from None


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
  if out["classifier_workdir"] is not None and model_spec.network in NOT_DIFFUSION:
    raise ValueError(f"{w}classifier_workdir guides a diffusion model's samples; this config "
                     f"trains network {model_spec.network!r}, which is not sampled.")
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
  if spec.every_steps and model_spec.network in NOT_DIFFUSION:
    raise ValueError(f"{w}every_steps={spec.every_steps}: a {model_spec.network!r} run is "
                     "not sampled; set it to 0 (a noisy classifier's samples are measured by "
                     f"sampling a diffusion run with {w}classifier_workdir).")
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
