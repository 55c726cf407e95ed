"""Learning the schedule by variance minimisation vs a fixed linear schedule, same endpoints.

    python -m experiments.schedule_variance --workdir=/tmp/schedule_variance

Trains the quickstart model twice with the same seed, data order and steps: once with
`fixed_linear` and once with the learnable `monotone_net` under schedule_objective="variance".
Then, for each, prints the test bpd (with its standard error) and the spread of the one-sample
diffusion-loss estimate (`losses.diffusion_loss_std`: per test image, the standard deviation over
independent (t, eps) draws, averaged over images), as one JSON object.
"""
from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
from absl import app, flags

from experiments.configs import quickstart
from vdm_jax import config as config_lib
from vdm_jax import data, likelihood, losses, training
from vdm_jax import model as model_lib

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Folder for the two runs.")
flags.DEFINE_integer("num_steps", None, "Training steps per run (default: the quickstart's).")
flags.DEFINE_integer("num_images", 256, "Test images for the estimator's spread.")
flags.DEFINE_integer("num_draws", 64, "Independent (t, eps) draws per image.")
flags.mark_flag_as_required("workdir")

VARIANTS = {
    "fixed_linear": dict(schedule="fixed_linear", schedule_objective="elbo"),
    "monotone_net_variance": dict(schedule="monotone_net", schedule_objective="variance"),
}


def estimator_spread(model, params, images, key, num_draws):
  """Mean over images of the std (nats) of the diffusion-loss estimate, and its standard error."""
  eps_fn, gamma_fn = model_lib.pure_fns(model, {"params": params})

  @jax.jit
  def spread(x_int, k):
    return losses.diffusion_loss_std(eps_fn, gamma_fn, x_int, k, num_draws=num_draws,
                                     data=model.data)

  stds = np.concatenate([np.asarray(spread(images[i:i + 64], jax.random.fold_in(key, i)))
                         for i in range(0, len(images), 64)])
  return float(stds.mean()), float(stds.std(ddof=1) / np.sqrt(len(stds)))


def main(argv):
  del argv
  images, _ = data.load_arrays("fashion_mnist", "test")
  images = images[:FLAGS.num_images]
  num_dims = int(np.prod(images.shape[1:]))
  report = {}
  for name, overrides in VARIANTS.items():
    config = quickstart.get_config()
    config.model.update(overrides)
    if FLAGS.num_steps:
      config.training.num_steps = FLAGS.num_steps
    spec = config_lib.resolve(config)
    workdir = Path(FLAGS.workdir) / name
    result = training.train_and_evaluate(spec, workdir)
    model, state, step = training.restore_state(spec, workdir)
    mean_std, se = estimator_spread(model, state.ema_params, images, jax.random.PRNGKey(0),
                                    FLAGS.num_draws)
    gamma = model.apply({"params": state.ema_params}, np.linspace(0, 1, 5, dtype=np.float32),
                        method=model.gamma)
    report[name] = {
        "step": step,
        "eval/bpd": result["eval/bpd"], "eval/bpd_se": result["eval/bpd_se"],
        "diffusion_std_nats": mean_std, "diffusion_std_nats_se": se,
        "diffusion_std_bpd": float(likelihood.nats_to_bpd(mean_std, num_dims)),
        "gamma_at_t=0,.25,.5,.75,1": [round(float(g), 3) for g in gamma],
    }
  print(json.dumps(report, indent=2))
  (Path(FLAGS.workdir) / "report.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
  app.run(main)
