"""The training system: optimizer, objective, exact resume, the NaN guard, config errors."""
import hashlib
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from helpers_train import tiny_config
from vdm_jax import checkpoint, data, likelihood, logging_utils, parallel, train
from vdm_jax import model as model_lib


@pytest.fixture(autouse=True)
def _no_env_data_dir(monkeypatch):
  monkeypatch.delenv("VDM_DATA_DIR", raising=False)


# ----------------------------------------------------------------------------- optimizer


def test_weight_decay_mask_spares_biases_norms_and_schedule():
  config = tiny_config(**{"model.schedule": "learned_linear"})
  model = model_lib.from_config(config.model)
  params = jax.eval_shape(lambda: model_lib.init(model, jax.random.PRNGKey(0)))["params"]
  mask = train.decay_mask(params)
  flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(mask)}
  assert flat["['gamma_module']['endpoints']['gamma_min']"] is False
  assert flat["['gamma_module']['endpoints']['log_range']"] is False
  decayed = [k for k, v in flat.items() if v]
  spared = [k for k, v in flat.items() if not v]
  assert decayed and all(k.endswith("['kernel']") for k in decayed)
  assert all(k.endswith(("['bias']", "['scale']")) or "gamma_module" in k for k in spared)
  assert any(k.endswith("['scale']") for k in spared) and any(k.endswith("['bias']")
                                                              for k in spared)


def test_weight_decay_applies_only_where_masked():
  params = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))},
            "gamma_module": {"w": {"kernel": jnp.ones((2, 2))}}}
  opt = train.make_optimizer(dict(lr=0.1, warmup_steps=0, decay="none", weight_decay=0.5,
                                  grad_clip=0.0), 10)
  zero = jax.tree_util.tree_map(jnp.zeros_like, params)
  updates, _ = opt.update(zero, opt.init(params), params)
  np.testing.assert_allclose(updates["dense"]["kernel"], -0.1 * 0.5 * np.ones((2, 2)), rtol=1e-6)
  np.testing.assert_array_equal(updates["dense"]["bias"], 0.0)
  np.testing.assert_array_equal(updates["gamma_module"]["w"]["kernel"], 0.0)


def test_learning_rate_warmup_and_decay():
  for decay, end in (("none", 1e-3), ("linear", 0.0), ("cosine", 0.0)):
    lr = train.learning_rate_schedule(dict(lr=1e-3, warmup_steps=10, decay=decay), 110)
    np.testing.assert_allclose(float(lr(0)), 1e-4, rtol=1e-5)
    np.testing.assert_allclose(float(lr(4)), 5e-4, rtol=1e-5)
    np.testing.assert_allclose(float(lr(9)), 1e-3, rtol=1e-5)
    np.testing.assert_allclose(float(lr(110)), end, atol=1e-12)
  cos = train.learning_rate_schedule(dict(lr=1e-3, warmup_steps=10, decay="cosine"), 110)
  lin = train.learning_rate_schedule(dict(lr=1e-3, warmup_steps=10, decay="linear"), 110)
  np.testing.assert_allclose(float(cos(60)), 5e-4, rtol=1e-5)
  np.testing.assert_allclose(float(lin(35)), 7.5e-4, rtol=1e-5)
  with pytest.raises(ValueError, match="config.optimizer.decay must be one of"):
    train.learning_rate_schedule(dict(lr=1e-3, decay="step"), 10)


def test_gradient_clipping_by_global_norm():
  params = {"kernel": jnp.zeros((4,))}
  grads = {"kernel": jnp.full((4,), 10.0)}     # global norm 20
  for clip, expected_norm in ((1.0, 1.0), (0.0, 20.0)):
    opt = train.make_optimizer(dict(lr=1.0, warmup_steps=0, weight_decay=0.0, grad_clip=clip),
                               10)
    _, state = opt.update(grads, opt.init(params), params)
    # Adam's first moment after one step is (1 - b1) times the (clipped) gradient.
    mu = optax.tree.get(state, "mu")
    np.testing.assert_allclose(float(jnp.linalg.norm(mu["kernel"])), 0.1 * expected_norm,
                               rtol=1e-5)


def test_ema_decay_warms_up_to_the_rate():
  np.testing.assert_allclose(float(train.ema_decay(0.999, 0)), 0.1, rtol=1e-6)
  np.testing.assert_allclose(float(train.ema_decay(0.999, 10**6)), 0.999, rtol=1e-6)


# ----------------------------------------------------------------------------- objective


def test_loss_fn_objective_and_bpd_metrics():
  config = tiny_config()
  model = model_lib.from_config(config.model)
  params = train.init_state(model, train.optimizer_and_schedule(config.optimizer, 2)[0], 0,
                            parallel.make_mesh()).params
  batch = next(data.get_dataset("fashion_mnist", "train", 8, seed=0))
  key = jax.random.PRNGKey(3)
  objective, metrics = jax.jit(lambda p, b, k: train.loss_fn(model, p, b, k))(params, batch, key)
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
  obj_s, met_s = jax.jit(lambda p, b, k: train.loss_fn(simple, p, b, k))(params, batch, key)
  np.testing.assert_allclose(float(met_s["train/bpd"]), float(metrics["train/bpd"]), rtol=1e-5)
  assert abs(float(obj_s) - float(objective)) > 1e-3 * abs(float(objective))
  assert 0 < float(metrics["train/bpd"]) < 20


# ----------------------------------------------------------------------------- the loop


def _record_batches(monkeypatch):
  """Wraps data.get_dataset as train.py sees it; returns {(split, start_batch): [batch hashes]}."""
  seen = {}
  original = data.get_dataset

  def recording(name, split, batch_size, **kw):
    it = original(name, split, batch_size, **kw)
    key = (split, kw.get("start_batch", 0), len(seen))
    seen[key] = []

    def gen():
      for b in it:
        seen[key].append(hashlib.sha1(b["image"].tobytes()).hexdigest())
        yield b
    return gen()

  monkeypatch.setattr(train.data, "get_dataset", recording)
  return seen


def _restore(workdir, config, step):
  model = model_lib.from_config(config.model)
  opt, _ = train.optimizer_and_schedule(config.optimizer, config.training.num_steps)
  ckpt = checkpoint.Checkpointer(workdir / "checkpoints")
  state, _ = ckpt.restore(train.abstract_state(model, opt, 0, parallel.make_mesh()), step=step)
  ckpt.close()
  return jax.device_get(state)


def test_resume_equals_an_uninterrupted_run(tmp_path, monkeypatch):
  seen = _record_batches(monkeypatch)
  # Class-conditional with label dropout, so the label path is exercised too.
  common = {"model.num_classes": 10, "model.label_dropout": 0.3,
            "training.checkpoint_every": 3}
  cfg6 = tiny_config(**{"training.num_steps": 6, **common})
  cfg3 = tiny_config(**{"training.num_steps": 3, **common})
  straight, resumed = tmp_path / "straight", tmp_path / "resumed"
  train.train_and_evaluate(cfg6, str(straight))
  train.train_and_evaluate(cfg3, str(resumed))      # stops after step 3 (and checkpoints it)
  train.train_and_evaluate(cfg6, str(resumed))      # resumes at step 3

  train_runs = [(k, v) for k, v in seen.items() if k[0] == "train" and len(v)]
  (k_a, a), (k_b, b), (k_c, c) = train_runs
  assert (k_a[1], k_b[1], k_c[1]) == (0, 0, 3)       # start_batch = the restored step
  assert len(a) == 6 and len(b) == 3 and len(c) == 3  # batches consumed
  assert b == a[:3] and c == a[3:]                    # the same data order

  for step in (3, 6):
    s_straight, s_resumed = _restore(straight, cfg6, step), _restore(resumed, cfg6, step)
    assert int(s_straight.step) == int(s_resumed.step) == step
    for x, y in zip(jax.tree_util.tree_leaves(s_straight), jax.tree_util.tree_leaves(s_resumed)):
      np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-6, atol=1e-6)
  # ... and it did train: the parameters moved.
  init = train.init_state(model_lib.from_config(cfg6.model),
                          train.optimizer_and_schedule(cfg6.optimizer, 6)[0], 0,
                          parallel.make_mesh())
  leaves = jax.tree_util.tree_leaves
  assert max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in
             zip(leaves(s_resumed.params), leaves(init.params))) > 1e-4

  records = logging_utils.read_metrics(resumed)
  train_steps = [r["step"] for r in records if "train/bpd" in r]
  assert train_steps == [1, 2, 3, 4, 5, 6]
  np.testing.assert_allclose(
      [r["train/bpd"] for r in logging_utils.read_metrics(straight) if "train/bpd" in r],
      [r["train/bpd"] for r in records if "train/bpd" in r], rtol=1e-5)
  starts = [r for r in records if r.get("event") == "start"]
  assert [r["step"] for r in starts] == [0, 3] and starts[0]["weighting"] == "elbo"
  evals = [r for r in records if "eval/bpd" in r]
  assert [r["step"] for r in evals] == [3, 6]
  assert all(np.isfinite(r["eval/bpd"]) and r["eval/bpd_se"] > 0 for r in evals)
  assert evals[0]["eval/num_images"] == 2000   # eval.max_batches=1 of 2000
  assert (resumed / "samples" / "step_6.png").exists()


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
  config = tiny_config(**{"training.num_steps": 6, "training.checkpoint_every": 1,
                          "optimizer.lr": 1e30, "optimizer.warmup_steps": 0,
                          "optimizer.grad_clip": 0.0})
  with pytest.raises(train.TrainingDiverged, match=r"Training diverged at step 2: loss") as err:
    train.train_and_evaluate(config, str(tmp_path))
  assert "last good checkpoint (step 1)" in str(err.value)
  ckpt = checkpoint.Checkpointer(tmp_path / "checkpoints")
  assert ckpt.all_steps() == [1]
  ckpt.close()
  state = _restore(tmp_path, config, 1)
  assert int(state.step) == 1
  assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(state.params))
  records = logging_utils.read_metrics(tmp_path)
  assert [r["step"] for r in records if "train/bpd" in r] == [1]


# ----------------------------------------------------------------------------- bad configs


@pytest.mark.parametrize("overrides, error, message", [
    ({"model.gamma_min": 5.0, "model.gamma_max": 5.0}, ValueError,
     r"config.model.gamma_min \(5.0\) must be < config.model.gamma_max \(5.0\): set "
     r"--config.model.gamma_min below --config.model.gamma_max"),
    ({"training.batch_size": 12}, ValueError,
     r"config.training.batch_size=12 is not divisible by the number of devices \(8\): set "
     r"config.training.batch_size to a multiple of 8"),
    ({"eval.batch_size": 100}, ValueError,
     r"config.eval.batch_size=100 is not divisible by the number of devices \(8\)"),
    ({"model.image_shape": (32, 32, 3)}, ValueError,
     r"config.model.image_shape=\(32, 32, 3\) does not match dataset 'fashion_mnist', whose "
     r"images are \(28, 28, 1\): set config.model.image_shape = \(28, 28, 1\)"),
    ({"model.num_classes": 26}, ValueError,
     r"config.model.num_classes=26 but dataset 'fashion_mnist' has 10 classes"),
    ({"optimizer.decay": "exponential"}, ValueError, r"config.optimizer.decay must be one of"),
    ({"model.weighting": "bogus"}, ValueError, r"config.model.weighting must be one of"),
    ({"training.label_dropout": 0.1}, ValueError, r"set config.model.label_dropout instead"),
])
def test_bad_config_fails_before_compute_saying_what_to_change(tmp_path, overrides, error,
                                                               message):
  with pytest.raises(error, match=message):
    train.train_and_evaluate(tiny_config(**overrides), str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()   # nothing was written, nothing computed


def test_missing_data_error_passes_through_unchanged(tmp_path):
  config = tiny_config(**{"data.name": "mnist", "data.data_dir": str(tmp_path / "nodata")})
  with pytest.raises(FileNotFoundError) as direct:
    data.get_dataset("mnist", "train", 8, data_dir=str(tmp_path / "nodata"))
  with pytest.raises(FileNotFoundError) as err:
    train.train_and_evaluate(config, str(tmp_path / "w"))
  assert str(err.value) == str(direct.value)
  assert "Dataset 'mnist' split 'train' was not found" in str(err.value)
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("name", ["quickstart", "fashion_mnist", "mnist", "emnist", "cifar10",
                                  "cifar10_paper"])
def test_every_config_validates_and_documents_itself(name):
  import importlib
  module = importlib.import_module(f"experiments.configs.{name}")
  assert f"--config=experiments/configs/{name}.py" in module.__doc__
  assert "Hardware:" in module.__doc__ and "Result" in module.__doc__
  config = module.get_config()
  for group in ("data", "model", "training", "optimizer", "eval", "sampling"):
    assert group in config
  for key in ("seed", "batch_size", "num_steps", "steps_per_call", "log_every", "eval_every",
              "checkpoint_every", "sample_every", "keep_checkpoints"):
    assert key in config.training, key
  for key in ("lr", "warmup_steps", "decay", "weight_decay", "ema_rate", "grad_clip"):
    assert key in config.optimizer, key
  assert config.model.weighting == "elbo" and config.model.schedule_objective == "elbo"
  model = train.validate_config(config, parallel.make_mesh())
  assert type(model.network).__name__ == {"unet": "UNet", "vdm_unet": "VDMScoreNet"}[
      config.model.network]


def test_paper_config_is_the_papers_model():
  from experiments.configs import cifar10_paper
  c = cifar10_paper.get_config()
  assert (c.model.network, c.model.vdm_unet.n_embd, c.model.vdm_unet.n_layer) == \
      ("vdm_unet", 128, 32)
  assert c.model.vdm_unet.with_fourier_features and c.model.vdm_unet.dropout == 0.1
  assert (c.model.schedule, c.model.gamma_min, c.model.gamma_max) == \
      ("learned_linear", -13.3, 5.0)
  assert (c.training.batch_size, c.training.num_steps) == (128, 10_000_000)
  assert (c.optimizer.lr, c.optimizer.ema_rate, c.optimizer.weight_decay) == (2e-4, 0.9999, 0.01)
