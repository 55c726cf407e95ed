"""Orbax checkpoints of the whole train state, with exact resume and a guard against bad ones.

Layout: `<workdir>/checkpoints/<step>/` holds two orbax items,

  * `state`: the train state pytree (step, params, EMA params, optimizer state, rng), saved with
    `ocp.args.StandardSave` and restored onto the shardings of a target;
  * `meta`: JSON (`ocp.args.JsonSave`): step, a fingerprint of the state's structure (paths,
    shapes, dtypes), and whatever the caller adds (e.g. the global batch size).

Saving is asynchronous (orbax writes in a background thread after copying the arrays off the
devices); `wait()` blocks until it is on disk. Orbax writes each step into a temporary folder and
renames it when complete, so a crash mid-write normally leaves nothing that looks like a step.
A step folder can still be unusable (copied or synced partially, a disk that filled up, a file
cut short): `restore()` without a step checks orbax's commit marker and the readability of the
data, and falls back to the previous step with a warning naming both, moving the bad folder to
`<directory>.incomplete/` so that training can write that step again.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp

logger = logging.getLogger(__name__)

COMMIT_MARKER = "commit_success.txt"      # written by orbax when a step is finalised
STEP_METADATA = "_CHECKPOINT_METADATA"    # orbax's per-step metadata, with a commit timestamp


def structure_fingerprint(tree: Any) -> str:
  """A short hash of a pytree's paths, shapes and dtypes (not its values)."""
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  desc = [(jax.tree_util.keystr(p), tuple(np.shape(x)), str(np.dtype(x.dtype))) for p, x in leaves]
  return hashlib.sha256(repr(desc).encode()).hexdigest()[:16]


def is_complete(step_dir: str | os.PathLike) -> bool:
  """Whether orbax finished writing this step folder (its commit marker, or a commit timestamp
  in its step metadata, plus both items' folders)."""
  step_dir = Path(step_dir)
  if not (step_dir / "state").is_dir() or not (step_dir / "meta").is_dir():
    return False
  if (step_dir / COMMIT_MARKER).is_file():
    return True
  try:
    meta = json.loads((step_dir / STEP_METADATA).read_text())
  except (OSError, ValueError):
    return False
  return bool(meta.get("commit_timestamp_nsecs"))


class IncompatibleCheckpointError(ValueError):
  """The checkpoint holds a state of another structure (a different model or optimizer)."""


class Checkpointer:
  """Saves and restores train states in `directory` (one sub-folder per step).

  Args:
    directory: where the step folders go (created if missing).
    max_to_keep: keep the last k steps (None keeps all).
    async_save: write in a background thread.
  """

  def __init__(self, directory: str | os.PathLike, max_to_keep: int | None = 3,
               async_save: bool = True):
    self.directory = Path(directory).absolute()
    self.max_to_keep = max_to_keep
    self._async = async_save
    self._manager = self._make_manager()

  def _make_manager(self) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=self.max_to_keep, create=True, enable_async_checkpointing=self._async)
    return ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "meta": ocp.JsonCheckpointHandler()})

  # ------------------------------------------------------------------------- saving

  def save(self, step: int, state: Any, meta: Mapping[str, Any] | None = None) -> None:
    """Saves `state` as step `step` (asynchronously; see `wait`)."""
    meta = dict(meta or {})
    meta.update(step=int(step), structure=structure_fingerprint(state))
    self._manager.save(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)

  def wait(self) -> None:
    """Blocks until every pending save is on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self.wait()
    self._manager.close()

  # ------------------------------------------------------------------------- reading

  def all_steps(self) -> list[int]:
    """Every step folder present (complete or not), ascending."""
    self._manager.reload()
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    """The newest step folder that looks complete (`is_complete`), or None."""
    for step in reversed(self.all_steps()):
      if is_complete(self.directory / str(step)):
        return step
    return None

  def read_meta(self, step: int) -> dict:
    """The JSON metadata of a step."""
    return dict(self._manager.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))["meta"])

  def restore(self, target: Any, step: int | None = None) -> tuple[Any, dict] | None:
    """Restores a state shaped (and sharded) like `target`.

    Args:
      target: a pytree of `jax.ShapeDtypeStruct` (with shardings) or arrays, structured like the
        saved state (e.g. `jax.eval_shape` of the state builder, with shardings attached).
      step: a specific step, or None for the newest usable one: step folders that are incomplete
        or unreadable are skipped (warning) and moved to `<directory>.incomplete/`.

    Returns:
      (state, meta), or None when there is no checkpoint (step=None only).

    Raises:
      FileNotFoundError: `step` given but not present or not complete.
      IncompatibleCheckpointError: the checkpoint's structure differs from `target`'s.
    """
    if step is not None:
      path = self.directory / str(step)
      if not is_complete(path):
        complete = [s for s in self.all_steps() if is_complete(self.directory / str(s))]
        raise FileNotFoundError(f"No complete checkpoint for step {step} in {self.directory} "
                                f"(complete steps: {complete}).")
      return self._restore_step(step, target)

    skipped: list[tuple[int, str]] = []
    for s in reversed(self.all_steps()):
      path = self.directory / str(s)
      if not is_complete(path):
        skipped.append((s, "incomplete: orbax never finalised it (no commit marker)"))
        continue
      try:
        result = self._restore_step(s, target)
      except IncompatibleCheckpointError:
        raise
      except Exception as e:  # unreadable data: a truncated or corrupt file
        skipped.append((s, f"unreadable: {type(e).__name__}: {str(e)[:300]}"))
        continue
      self._set_aside(skipped, restored=s)
      return result
    self._set_aside(skipped, restored=None)
    return None

  def _restore_step(self, step: int, target: Any) -> tuple[Any, dict]:
    meta = self.read_meta(step)
    expected = structure_fingerprint(target)
    if meta.get("structure") not in (None, expected):
      raise IncompatibleCheckpointError(
          f"The checkpoint at step {step} in {self.directory} holds a train state of another "
          "structure (different parameter shapes, network or optimizer) than the current config "
          "builds. Use the config it was written with, or a new --workdir.")
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target)))
    return restored["state"], meta

  def _set_aside(self, skipped: list[tuple[int, str]], restored: int | None) -> None:
    """Moves the skipped step folders out of the way, with a warning naming both steps."""
    if not skipped:
      return
    aside = self.directory.parent / (self.directory.name + ".incomplete")
    for s, why in skipped:
      src = self.directory / str(s)
      dst = aside / f"{s}-{time.strftime('%Y%m%d-%H%M%S')}"
      if jax.process_index() == 0 and src.exists():
        aside.mkdir(parents=True, exist_ok=True)
        shutil.move(str(src), str(dst))
      fallback = (f"resuming from step {restored} instead" if restored is not None
                  else "no usable checkpoint is left, starting from scratch")
      logger.warning("Checkpoint step %d in %s is %s; skipped, %s (moved it to %s).", s,
                     self.directory, why, fallback, dst)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices("vdm_jax.checkpoint.set_aside")
    self._manager.reload()
