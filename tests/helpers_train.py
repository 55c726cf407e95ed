"""Tiny configs shared by the training-system tests (real 28x28 Fashion-MNIST, tiny network),
and waiting on runs in other processes."""
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np

from experiments.configs import quickstart
from vdm_jax import checkpoint, config as config_lib, parallel, training


def tiny_config(**overrides) -> ml_collections.ConfigDict:
  """A network with ~30k parameters, batch 8, periodic events off, eval on the first 2000 test
  images only; 2 steps by default."""
  c = quickstart.get_config()
  c.model.unet = dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), dropout=0.0,
                      with_fourier_features=False, input_skip=False)
  c.model.gamma_min = -10.0
  c.training.update(dict(seed=0, batch_size=8, num_steps=2, steps_per_call=1, log_every=1,
                         eval_every=0, checkpoint_every=0, sample_every=0, keep_checkpoints=3))
  c.optimizer.update(dict(lr=1e-3, warmup_steps=2, decay="none", ema_rate=0.9))
  c.eval.update(dict(num_time_samples=1, batch_size=2000, max_batches=1))
  c.sampling.update(dict(T=3, num_samples=4))
  for key, value in overrides.items():
    group, name = key.split(".", 1)
    c[group][name] = value
  return c


def tiny_model_and_params(**overrides):
  """(resolved spec, model, freshly initialised params) of `tiny_config(**overrides)`."""
  spec = config_lib.resolve(tiny_config(**overrides))
  model = spec.model.build()
  state = training.create_state(model, training.make_optimizer(spec.optimizer, 2), 0,
                                parallel.make_mesh())
  return spec, model, state.params


def restore_saved_state(workdir, spec, step):
  """The train state a run saved at `step` in `<workdir>/checkpoints`, on the host."""
  model = spec.model.build()
  opt = training.make_optimizer(spec.optimizer, spec.training.num_steps)
  ckpt = checkpoint.Checkpointer(Path(workdir) / "checkpoints")
  state, _ = ckpt.restore(training.abstract_state(model, opt, parallel.make_mesh()), step=step)
  ckpt.close()
  return jax.device_get(state)


def straight_and_resumed(make_spec, root, steps=4, **common):
  """Runs `make_spec(**{"training.num_steps": steps, **common})` straight in <root>/straight,
  and stopped halfway then resumed in <root>/resumed; returns (spec, straight, resumed, the
  straight run's last record)."""
  spec = make_spec(**{"training.num_steps": steps, **common})
  half = make_spec(**{"training.num_steps": steps // 2, **common})
  straight, resumed = Path(root) / "straight", Path(root) / "resumed"
  last = training.train_and_evaluate(spec, straight)
  training.train_and_evaluate(half, resumed)
  training.train_and_evaluate(spec, resumed)
  return spec, straight, resumed, last


def assert_same_saved_states(a_dir, b_dir, spec, steps):
  """The train states two runs saved at each of `steps` are equal leaf by leaf, bit for bit."""
  for step in steps:
    a, b = restore_saved_state(a_dir, spec, step), restore_saved_state(b_dir, spec, step)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def write_config_file(path, **overrides):
  """Writes a config file for `python -m experiments.train` whose get_config() is
  `tiny_config(**overrides)`; returns the path."""
  tests = Path(__file__).resolve().parent
  path.write_text(
      f"import sys\nsys.path.insert(0, {str(tests)!r})\nfrom helpers_train import tiny_config\n"
      f"\n\ndef get_config():\n  return tiny_config(**{overrides!r})\n")
  return path


def wait_for_checkpoint(procs, workdir, step, timeout=300):
  """Blocks until checkpoint `step` (or a later one) of `workdir` is complete, while every
  process of `procs` (Popen objects with stderr captured) still runs; returns that step."""
  deadline = time.time() + timeout
  directory = Path(workdir) / "checkpoints"
  while time.time() < deadline:
    for p in procs:
      assert p.poll() is None, f"a process ended early:\n{p.stderr.read()[-3000:]}"
    done = [int(p.name) for p in directory.glob("*") if p.name.isdigit()
            and checkpoint.is_complete(p)] if directory.exists() else []
    if done and max(done) >= step:
      return max(done)
    time.sleep(0.05)
  raise AssertionError(f"no checkpoint {step} within {timeout}s")
