"""The objective and the train step's metrics."""
import math

import jax
import jax.numpy as jnp
import numpy as np

from helpers_train import tiny_config
from vdm_jax import config as config_lib
from vdm_jax import data, parallel, training


def test_loss_fn_objective_and_bpd_metrics():
  spec = config_lib.resolve(tiny_config())
  model = spec.model.build()
  params = training.create_state(model, training.make_optimizer(spec.optimizer, 2), 0,
                                 parallel.make_mesh()).params
  batch = next(data.get_dataset("fashion_mnist", "train", 8, seed=0))
  key = jax.random.PRNGKey(3)
  objective, metrics = jax.jit(lambda p, b, k: training.loss_fn(model, p, b, k))(params, batch,
                                                                                 key)
  k_sample, k_dropout = jax.random.split(key)
  loss = jax.jit(lambda p, x: model.apply({"params": p}, x, train=True, rngs={
      "sample": k_sample, "dropout": k_dropout}))(params, batch["image"])
  # With the default weighting the objective is the bound: the mean negative ELBO in nats.
  np.testing.assert_allclose(float(objective), float(jnp.mean(loss.total)), rtol=1e-5)
  np.testing.assert_allclose(float(metrics["train/loss"]), float(objective), rtol=1e-6)
  np.testing.assert_allclose(float(metrics["train/bpd"]),
                             float(objective) / (784 * math.log(2)), rtol=1e-5)
  parts = sum(float(metrics[f"train/{k}_bpd"]) for k in ("recon", "prior", "diffusion"))
  np.testing.assert_allclose(parts, float(metrics["train/bpd"]), rtol=1e-5)
  # Another weighting changes the objective, not the reported bound.
  simple = model.clone(weighting="simple")
  obj_s, met_s = jax.jit(lambda p, b, k: training.loss_fn(simple, p, b, k))(params, batch, key)
  np.testing.assert_allclose(float(met_s["train/bpd"]), float(metrics["train/bpd"]), rtol=1e-5)
  assert abs(float(obj_s) - float(objective)) > 1e-3 * abs(float(objective))
  assert 0 < float(metrics["train/bpd"]) < 20
