"""Checkpoints: exact round trip, keep-last-k, and skipping a half-written step."""
import json
import logging
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vdm_jax import checkpoint, parallel, training


def make_state(value: float, shape=(3, 4)) -> training.TrainState:
  params = {"dense": {"kernel": jnp.full(shape, value), "bias": jnp.arange(shape[-1]) * value},
            "gamma_module": {"endpoints": {"gamma_min": jnp.float32(-13.3)}}}
  tx = optax.adamw(1e-3, mask=training.decay_mask)
  return training.TrainState(step=jnp.int32(int(value)), params=params,
                          ema_params=jax.tree_util.tree_map(lambda x: x * 0.5, params),
                          opt_state=tx.init(params), rng=jax.random.PRNGKey(int(value)))


def target_like(state, mesh=None):
  mesh = mesh or parallel.make_mesh()
  repl = parallel.replicated(mesh)
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl), state)


def assert_trees_equal(a, b):
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_is_exact_and_keeps_last_k(tmp_path):
  ckpt = checkpoint.Checkpointer(tmp_path / "checkpoints", max_to_keep=2)
  for step in (1, 2, 3):
    ckpt.save(step, make_state(float(step)), {"global_batch_size": 8})
  ckpt.wait()
  assert ckpt.all_steps() == [2, 3] and ckpt.latest_step() == 3
  state, meta = ckpt.restore(target_like(make_state(0.0)))
  assert_trees_equal(state, make_state(3.0))
  assert meta["step"] == 3 and meta["global_batch_size"] == 8
  # Restored leaves carry the target's (replicated, 8-device) sharding.
  assert state.params["dense"]["kernel"].sharding.is_fully_replicated
  assert len(state.params["dense"]["kernel"].sharding.device_set) == 8
  state2, _ = ckpt.restore(target_like(make_state(0.0)), step=2)
  assert_trees_equal(state2, make_state(2.0))
  with pytest.raises(FileNotFoundError, match="No complete checkpoint for step 7"):
    ckpt.restore(target_like(make_state(0.0)), step=7)
  ckpt.close()


def test_empty_directory_restores_nothing(tmp_path):
  ckpt = checkpoint.Checkpointer(tmp_path / "checkpoints")
  assert ckpt.latest_step() is None
  assert ckpt.restore(target_like(make_state(0.0))) is None
  ckpt.close()


def _truncate_data_files(step_dir: Path) -> int:
  """Cuts every array data file of the 'state' item to a few bytes; returns how many."""
  n = 0
  for f in (step_dir / "state").rglob("*"):
    if f.is_file() and f.parent.name == "d":
      with open(f, "r+b") as fh:
        fh.truncate(3)
      n += 1
  return n


# Orbax's reader leaves a callback on its closed event loop after failing on the truncated file.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("damage", ["no_commit_marker", "truncated_file"])
def test_half_written_checkpoint_is_skipped_with_a_message(tmp_path, caplog, damage):
  directory = tmp_path / "checkpoints"
  ckpt = checkpoint.Checkpointer(directory, max_to_keep=5)
  ckpt.save(1, make_state(1.0))
  ckpt.save(2, make_state(2.0))
  ckpt.close()
  # A later step left half-written: a copy of step 2 named 3, then damaged.
  shutil.copytree(directory / "2", directory / "3")
  if damage == "no_commit_marker":
    (directory / "3" / checkpoint.COMMIT_MARKER).unlink(missing_ok=True)   # not every orbax writes one
    meta_file = directory / "3" / checkpoint.STEP_METADATA
    meta = json.loads(meta_file.read_text())
    meta["commit_timestamp_nsecs"] = None
    meta_file.write_text(json.dumps(meta))
  else:
    assert _truncate_data_files(directory / "3") > 0

  ckpt = checkpoint.Checkpointer(directory, max_to_keep=5)
  with caplog.at_level(logging.WARNING, logger="vdm_jax.checkpoint"):
    state, meta = ckpt.restore(target_like(make_state(0.0)))
  assert meta["step"] == 2
  assert_trees_equal(state, make_state(2.0))
  messages = [r.getMessage() for r in caplog.records if r.name == "vdm_jax.checkpoint"]
  assert len(messages) == 1, messages
  assert "Checkpoint step 3" in messages[0] and "resuming from step 2 instead" in messages[0]
  assert ("incomplete" if damage == "no_commit_marker" else "unreadable") in messages[0]
  # The bad step was moved aside, so that step 3 can be written again.
  assert not (directory / "3").exists()
  assert len(list((tmp_path / "checkpoints.incomplete").iterdir())) == 1
  ckpt.save(3, make_state(3.0))
  ckpt.wait()
  assert ckpt.latest_step() == 3
  assert_trees_equal(ckpt.restore(target_like(make_state(0.0)))[0], make_state(3.0))
  ckpt.close()


def test_checkpoint_of_another_structure_is_an_error_not_skipped(tmp_path):
  ckpt = checkpoint.Checkpointer(tmp_path / "checkpoints")
  ckpt.save(1, make_state(1.0))
  ckpt.wait()
  with pytest.raises(checkpoint.IncompatibleCheckpointError, match="another structure"):
    ckpt.restore(target_like(make_state(0.0, shape=(5, 4))))
  assert ckpt.all_steps() == [1]   # not moved away
  ckpt.close()


def _data_files(step_dir: Path) -> list[Path]:
  return sorted((f for f in (step_dir / "state").rglob("*") if f.is_file() and f.parent.name == "d"),
                key=lambda f: f.stat().st_size)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_bytes_flipped_in_a_data_file_fall_back_to_the_previous_step(tmp_path, caplog):
  directory = tmp_path / "checkpoints"
  ckpt = checkpoint.Checkpointer(directory, max_to_keep=5)
  big = (64, 64)     # chunks large enough that a flip lands inside compressed array data
  ckpt.save(1, make_state(1.0, big))
  ckpt.save(2, make_state(2.0, big))
  ckpt.close()
  # Every data file: which one holds which array (and which bytes of it are read) depends on
  # orbax's layout, which changes between releases.
  for victim in _data_files(directory / "2"):
    raw = bytearray(victim.read_bytes())
    for i in range(len(raw) // 2, min(len(raw), len(raw) // 2 + 4)):
      raw[i] ^= 0xFF
    victim.write_bytes(bytes(raw))

  ckpt = checkpoint.Checkpointer(directory, max_to_keep=5)
  with caplog.at_level(logging.WARNING, logger="vdm_jax.checkpoint"):
    state, meta = ckpt.restore(target_like(make_state(0.0, big)))
  assert meta["step"] == 1
  assert_trees_equal(state, make_state(1.0, big))
  [message] = [r.getMessage() for r in caplog.records if r.name == "vdm_jax.checkpoint"]
  assert "Checkpoint step 2" in message and "resuming from step 1 instead" in message
  assert "corrupt" in message or "unreadable" in message
  ckpt.close()


def test_checksum_mismatch_is_detected_and_names_the_array(tmp_path, caplog):
  directory = tmp_path / "checkpoints"
  ckpt = checkpoint.Checkpointer(directory, max_to_keep=5)
  ckpt.save(1, make_state(1.0))
  ckpt.save(2, make_state(2.0))
  ckpt.close()
  # Data that decodes but differs from what was saved: the record says other bytes were saved.
  meta_file = directory / "2" / "meta" / "metadata"
  meta = json.loads(meta_file.read_text())
  key = ".params['dense']['kernel']"
  assert key in meta["checksums"]
  meta["checksums"][key] = "00000000"
  meta_file.write_text(json.dumps(meta))
  ckpt = checkpoint.Checkpointer(directory, max_to_keep=5)
  with pytest.raises(checkpoint.CorruptCheckpointError, match=r"corrupt: 1 array\(s\) differ "
                     r"from the checksums saved with the step \(first: .params\['dense'\]"):
    ckpt.restore(target_like(make_state(0.0)), step=2)
  with caplog.at_level(logging.WARNING, logger="vdm_jax.checkpoint"):
    state, meta = ckpt.restore(target_like(make_state(0.0)), set_aside=False)
  assert meta["step"] == 1 and (directory / "2").exists()   # eval / sample move nothing
  ckpt.close()


def test_no_usable_step_is_an_error_listing_them_and_moves_nothing(tmp_path):
  directory = tmp_path / "checkpoints"
  ckpt = checkpoint.Checkpointer(directory, max_to_keep=5)
  ckpt.save(1, make_state(1.0))
  ckpt.close()
  (directory / "1" / checkpoint.COMMIT_MARKER).unlink(missing_ok=True)   # not every orbax writes one
  meta_file = directory / "1" / checkpoint.STEP_METADATA
  meta_file.write_text(json.dumps(dict(json.loads(meta_file.read_text()),
                                       commit_timestamp_nsecs=None)))
  ckpt = checkpoint.Checkpointer(directory, max_to_keep=5)
  with pytest.raises(checkpoint.NoUsableCheckpointError,
                     match=r"holds step folders but none of them restores \(step 1: incomplete.*"
                     r"Nothing was moved.*--start_over"):
    ckpt.restore(target_like(make_state(0.0)))
  assert (directory / "1").exists()
  moved = ckpt.set_aside_all()
  assert list(moved) == [1] and not (directory / "1").exists() and moved[1].exists()
  assert ckpt.restore(target_like(make_state(0.0))) is None
  ckpt.close()


def test_transient_io_errors_are_retried_then_raised(tmp_path, monkeypatch):
  monkeypatch.setattr(checkpoint, "_RETRY_WAIT_S", 0.0)
  ckpt = checkpoint.Checkpointer(tmp_path / "checkpoints")
  ckpt.save(1, make_state(1.0))
  ckpt.wait()
  real, calls = ckpt._manager.restore, []

  def flaky(step, args=None):
    calls.append(step)
    if "state" in args and len(calls) < 4:
      raise PermissionError("stale file handle")
    return real(step, args=args)

  monkeypatch.setattr(ckpt._manager, "restore", flaky)
  state, _ = ckpt.restore(target_like(make_state(0.0)))    # fails once, then reads
  assert_trees_equal(state, make_state(1.0))
  calls.clear()
  monkeypatch.setattr(checkpoint, "_RETRIES", 1)
  with pytest.raises(PermissionError, match=r"failed 1 times: stale file handle"):
    ckpt.restore(target_like(make_state(0.0)))
  assert ckpt.all_steps() == [1]   # a transient error sets nothing aside
  ckpt.close()
