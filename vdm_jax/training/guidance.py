"""Classifier guidance from the CLI: a diffusion run's model guided by a noisy-classifier run.

    model, params = guidance.guide(spec.sampling, model, params, mesh)

With `how.classifier_workdir` set (config.sampling / config.sample_eval), the classifier run's
config.json and newest checkpoint are read, checked against the diffusion model (data, shape,
classes, schedule), and the pair becomes a `noisy_classifier.ClassifierGuided` that every
sampler, `--mode=sample` (grids one class per column) and `--mode=sample_eval` (FD and the
feature network's accuracy on the asked classes) take as they take a class-conditional VDM.
"""
from __future__ import annotations

import functools
import logging

import jax
import numpy as np

from vdm_jax import config as config_lib
from vdm_jax import noisy_classifier as noisy_classifier_lib
from vdm_jax import parallel
from vdm_jax.config import SamplingSpec
from vdm_jax.training import workdir as workdir_lib
from vdm_jax.training.state import restore_state

logger = logging.getLogger(__name__)

# How far the classifier's schedule may be from the diffusion model's (gamma at t = 0 and 1)
# before a warning: further apart, the classifier sees noise levels it was not trained at.
SCHEDULE_TOLERANCE = 1e-3


@functools.lru_cache(maxsize=4)
def _classifier_run(workdir: str, mesh: jax.sharding.Mesh):
  """(NoisyClassifierModel, EMA params, step) of a noisy-classifier run, read once."""
  spec = config_lib.resolve(workdir_lib.read_config(workdir), num_devices=mesh.devices.size)
  if spec.model.network != config_lib.CLASSIFIER_NETWORK:
    raise ValueError(
        f"classifier_workdir={workdir} holds a run of network {spec.model.network!r}, not a "
        f"noisy classifier: train one with config.model.network="
        f"'{config_lib.CLASSIFIER_NETWORK}' (experiments/configs/noisy_classifier_fashion_mnist.py).")
  model, state, step = restore_state(spec, workdir, mesh=mesh)
  return model, state.ema_params, step


def guide(how: SamplingSpec, model, params, mesh: jax.sharding.Mesh | None = None):
  """(model, params) to sample: the diffusion model's own without how.classifier_workdir, else
  `ClassifierGuided(model, classifier, how.classifier_scale)` with params {'diffusion': params,
  'classifier': the classifier's EMA params}. Raises ValueError, before any sampling, when the
  classifier does not fit the model (`noisy_classifier.check_guidance`) or classifier-free
  guidance is asked of an unconditional model. mesh: where the classifier's parameters are
  put (None: every device)."""
  if how.classifier_workdir is None:
    return model, params
  mesh = parallel.make_mesh() if mesh is None else mesh
  classifier, classifier_params, step = _classifier_run(str(how.classifier_workdir), mesh)
  if how.guidance_weight and not model.num_classes:
    raise ValueError("guidance_weight (classifier-free guidance) needs a class-conditional "
                     "diffusion model; with an unconditional one and a classifier, set "
                     "guidance_weight=0 and use classifier_scale.")
  guided = noisy_classifier_lib.ClassifierGuided(diffusion=model, classifier=classifier,
                                                 scale=how.classifier_scale)
  ends = np.asarray(noisy_classifier_lib.schedule_endpoints(model, params))
  clf_ends = np.asarray(noisy_classifier_lib.schedule_endpoints(classifier, classifier_params))
  if np.max(np.abs(ends - clf_ends)) > SCHEDULE_TOLERANCE:
    logger.warning("The classifier in %s was trained on a schedule with gamma(0), gamma(1) = "
                   "%.4f, %.4f; the diffusion model's are %.4f, %.4f: set the classifier "
                   "config's model.schedule='fixed_linear' and gamma_min/gamma_max to the "
                   "diffusion model's and train it again for guidance at the noise levels the "
                   "sampler visits.", how.classifier_workdir, *clf_ends, *ends)
  logger.info("classifier guidance: scale %g, classifier %s (step %d)", how.classifier_scale,
              how.classifier_workdir, step)
  params = {"diffusion": params,
            "classifier": jax.device_put(classifier_params, parallel.replicated(mesh))}
  return guided, params
