"""The loop: periodic actions, exact resume, the NaN guard, data read once."""
import hashlib
import signal

import jax
import numpy as np
import pytest

from helpers_train import restore_saved_state, tiny_config
from vdm_jax import checkpoint, config as config_lib, data, logging_utils, parallel, training
from vdm_jax.training import loop as loop_lib


@pytest.fixture(autouse=True)
def _no_env_data_dir(monkeypatch):
  monkeypatch.delenv("VDM_DATA_DIR", raising=False)


def test_every_is_due_at_multiples_and_at_the_last_step():
  every = training.Every(3)
  assert [s for s in range(1, 11) if every.due(s, 10)] == [3, 6, 9, 10]
  assert [every.next_due(s, 10) for s in (0, 2, 3, 8, 9)] == [3, 3, 6, 9, 10]
  never = training.Every(0)
  assert [s for s in range(1, 11) if never.due(s, 10)] == [10]
  assert never.next_due(4, 10) == 10


def _record_data(monkeypatch):
  """Records the splits the loop loads and the batches it draws (hashes per iterator)."""
  loads, seen = [], {}
  load, batches = data.load_arrays, data.train_batches

  def recording_load(name, split, data_dir=None):
    loads.append(split)
    return load(name, split, data_dir)

  def recording_batches(images, labels, batch_size, **kw):
    key = (kw.get("start_batch", 0), len(seen))
    seen[key] = []
    for b in batches(images, labels, batch_size, **kw):
      seen[key].append(hashlib.sha1(b["image"].tobytes()).hexdigest())
      yield b

  monkeypatch.setattr(loop_lib.data, "load_arrays", recording_load)
  monkeypatch.setattr(loop_lib.data, "train_batches", recording_batches)
  return loads, seen


@pytest.mark.heavy   # three whole runs (train, eval, samples): ~2 minutes on 2 CPU cores
def test_resume_equals_an_uninterrupted_run(tmp_path, monkeypatch):
  loads, seen = _record_data(monkeypatch)
  # Class-conditional with label dropout, so the label path is exercised too.
  common = {"model.num_classes": 10, "model.label_dropout": 0.3,
            "training.checkpoint_every": 3}
  spec6 = config_lib.resolve(tiny_config(**{"training.num_steps": 6, **common}))
  spec3 = config_lib.resolve(tiny_config(**{"training.num_steps": 3, **common}))
  straight, resumed = tmp_path / "straight", tmp_path / "resumed"
  training.train_and_evaluate(spec6, straight)
  training.train_and_evaluate(spec3, resumed)      # stops after step 3 (and checkpoints it)
  training.train_and_evaluate(spec6, resumed)      # resumes at step 3

  # Each run reads each split once.
  assert loads == ["train", "test"] * 3
  (k_a, a), (k_b, b), (k_c, c) = seen.items()
  assert (k_a[0], k_b[0], k_c[0]) == (0, 0, 3)        # start_batch = the restored step
  assert len(a) == 6 and len(b) == 3 and len(c) == 3  # batches consumed
  assert b == a[:3] and c == a[3:]                    # the same data order

  for step in (3, 6):
    s_straight, s_resumed = restore_saved_state(straight, spec6, step), restore_saved_state(resumed, spec6, step)
    assert int(s_straight.step) == int(s_resumed.step) == step
    for x, y in zip(jax.tree_util.tree_leaves(s_straight), jax.tree_util.tree_leaves(s_resumed)):
      np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-6, atol=1e-6)
  # ... and it did train: the parameters moved.
  init = training.create_state(spec6.model.build(), training.make_optimizer(spec6.optimizer, 6),
                               0, parallel.make_mesh())
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
  # The workdir's config.json is the resolved config.
  assert config_lib.resolve(config_lib.from_json((resumed / "config.json").read_text())) == spec6


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
  spec = config_lib.resolve(tiny_config(**{
      "training.num_steps": 6, "training.checkpoint_every": 1, "optimizer.lr": 1e30,
      "optimizer.warmup_steps": 0, "optimizer.grad_clip": 0.0}))
  with pytest.raises(training.TrainingDiverged, match=r"Training diverged at step 2: loss") as err:
    training.train_and_evaluate(spec, tmp_path)
  assert "last good checkpoint (step 1)" in str(err.value)
  # The cause named from the settings, before any generic advice.
  assert ("Likely causes: config.optimizer.lr=1e+30 is far above the usual 1e-4 to 3e-3; "
          "gradient clipping is off") in str(err.value)
  ckpt = checkpoint.Checkpointer(tmp_path / "checkpoints")
  assert ckpt.all_steps() == [1]
  ckpt.close()
  state = restore_saved_state(tmp_path, spec, 1)
  assert int(state.step) == 1
  assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(state.params))
  records = logging_utils.read_metrics(tmp_path)
  assert [r["step"] for r in records if "train/bpd" in r] == [1]


def test_sigterm_at_a_logging_step_logs_it_and_saves_it(tmp_path, monkeypatch):
  # A real SIGTERM, sent by the step that makes step 4 (a logging step, not a checkpoint step).
  compiled = loop_lib.step_lib.compiled_train_step

  def signalling_train_step(*args, **kwargs):
    step_fn = compiled(*args, **kwargs)

    def run(state, batch):
      if int(state.step) == 3:
        # Only the loop's handler may receive it (the default one would end the test process).
        assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN)
        signal.raise_signal(signal.SIGTERM)
      return step_fn(state, batch)
    return run

  monkeypatch.setattr(loop_lib.step_lib, "compiled_train_step", signalling_train_step)
  spec = config_lib.resolve(tiny_config(**{"training.num_steps": 8, "training.log_every": 2,
                                           "training.checkpoint_every": 3}))
  result = training.train_and_evaluate(spec, tmp_path)
  assert result["preempted"] and result["step"] == 4
  records = logging_utils.read_metrics(tmp_path)
  # The resumed run starts after step 4, so step 4 is logged now or never.
  assert [r["step"] for r in records if "train/bpd" in r] == [2, 4]
  assert [r["step"] for r in records if r.get("event") == "preempted"] == [4]
  ckpt = checkpoint.Checkpointer(tmp_path / "checkpoints")
  assert ckpt.all_steps() == [3, 4]
  ckpt.close()


def test_missing_data_fails_before_anything_is_written(tmp_path):
  spec = config_lib.resolve(tiny_config(**{"data.name": "mnist",
                                           "data.data_dir": str(tmp_path / "nodata")}))
  with pytest.raises(FileNotFoundError) as direct:
    data.get_dataset("mnist", "train", 8, data_dir=str(tmp_path / "nodata"))
  with pytest.raises(FileNotFoundError) as err:
    training.train_and_evaluate(spec, tmp_path / "w")
  assert str(err.value) == str(direct.value)
  assert "Dataset 'mnist' split 'train' was not found" in str(err.value)
  assert not (tmp_path / "w").exists()
