"""Orbax checkpoints of the whole train state, with exact resume and a guard against bad ones.

Layout: `<workdir>/checkpoints/<step>/` holds two orbax items,

  * `state`: the train state pytree (step, params, EMA params, optimizer state, rng), saved with
    `ocp.args.StandardSave` and restored onto the shardings of a target;
  * `meta`: JSON (`ocp.args.JsonSave`): step, a fingerprint of the state's structure (paths,
    shapes, dtypes), a content checksum of every array (of the bytes saved), and whatever the
    caller adds (e.g. the global batch size).

Saving is asynchronous (orbax writes in a background thread after copying the arrays off the
devices); `wait()` blocks until it is on disk. Orbax writes each step into a temporary folder and
renames it when complete, so a crash mid-write normally leaves nothing that looks like a step.
A step folder can still be unusable (copied or synced partially, a disk that filled up, a file
cut short, bytes changed on disk): `restore()` without a step checks orbax's commit marker, the
readability of the data and every array's checksum, and falls back to the previous step with a
warning naming both. Only such known-bad steps are set aside (moved to `<directory>.incomplete/`
so that training can write that step again, never deleted); an I/O error that may be transient
(permissions, a network filesystem timing out) is retried and then raised, and moves nothing.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import zlib
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


def array_checksums(tree: Any) -> dict[str, str]:
  """{path: checksum} of every array's bytes (host copy; shape and dtype included), the content
  record a checkpoint is verified against. crc32 is enough: the enemy is damage, not forgery."""
  out = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(jax.device_get(tree)):
    arr = np.ascontiguousarray(np.asarray(leaf))
    header = f"{arr.dtype.str}{arr.shape}".encode()
    out[jax.tree_util.keystr(path)] = f"{zlib.crc32(arr.tobytes(), zlib.crc32(header)):08x}"
  return out


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


class CorruptCheckpointError(ValueError):
  """A step's data does not match what was saved (checksum mismatch) or cannot be decoded."""


class NoUsableCheckpointError(FileNotFoundError):
  """Step folders exist but none of them restores."""


# I/O errors that may go away on their own (a network filesystem, a busy disk): retried, then
# raised. A missing file inside a complete step is damage, not one of these.
_TRANSIENT = (PermissionError, TimeoutError, ConnectionError, InterruptedError)
_RETRIES, _RETRY_WAIT_S = 3, 1.0


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
    meta.update(step=int(step), structure=structure_fingerprint(state),
                checksums=array_checksums(state))
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

  def restore(self, target: Any, step: int | None = None, *,
              set_aside: bool = True) -> tuple[Any, dict] | None:
    """Restores a state shaped (and sharded) like `target`, verified against its checksums.

    Args:
      target: a pytree of `jax.ShapeDtypeStruct` (with shardings) or arrays, structured like the
        saved state (e.g. `jax.eval_shape` of the state builder, with shardings attached).
      step: a specific step, or None for the newest usable one: steps that are incomplete,
        undecodable or fail their checksums are skipped with a warning naming the step and why.
      set_aside: move such steps to `<directory>.incomplete/` (training, so the step can be
        written again); False leaves every folder in place (eval / sample).

    Returns:
      (state, meta), or None when the directory holds no step folder at all (step=None only).

    Raises:
      FileNotFoundError: `step` given but not present or not complete.
      CorruptCheckpointError: `step` given and its data is damaged.
      NoUsableCheckpointError: step folders exist but none restores (lists them and why).
      IncompatibleCheckpointError: the checkpoint's structure differs from `target`'s.
      OSError: an I/O error that persisted over the retries.
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
      if not is_complete(self.directory / str(s)):
        skipped.append((s, "incomplete: orbax never finalised it (no commit marker)"))
        continue
      try:
        result = self._restore_step(s, target)
      except CorruptCheckpointError as e:
        skipped.append((s, str(e)))
        continue
      self._report_skipped(skipped, restored=s, set_aside=set_aside)
      return result
    if not skipped:
      return None
    self._report_skipped(skipped, restored=None, set_aside=False)
    listing = "; ".join(f"step {s}: {why}" for s, why in skipped)
    raise NoUsableCheckpointError(
        f"{self.directory} holds step folders but none of them restores ({listing}). Nothing "
        "was moved. To train from scratch anyway, move them away yourself, use a new --workdir, "
        "or pass --start_over (which moves them to "
        f"{self.directory.name}.incomplete/).")

  def _restore_step(self, step: int, target: Any) -> tuple[Any, dict]:
    """One step, read with retries for transient I/O errors and verified; raises
    CorruptCheckpointError for damaged data."""
    for attempt in range(_RETRIES):
      try:
        meta = self.read_meta(step)
        expected = structure_fingerprint(target)
        if meta.get("structure") not in (None, expected):
          raise IncompatibleCheckpointError(
              f"The checkpoint at step {step} in {self.directory} holds a train state of another "
              "structure (different parameter shapes, network or optimizer) than the current "
              "config builds. Use the config it was written with, or a new --workdir.")
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target)))["state"]
        break
      except IncompatibleCheckpointError:
        raise
      except _TRANSIENT as e:
        if attempt + 1 == _RETRIES:
          raise type(e)(f"Reading checkpoint step {step} in {self.directory} failed "
                        f"{_RETRIES} times: {e}") from e
        logger.warning("Reading checkpoint step %d failed (%s); retrying.", step, e)
        time.sleep(_RETRY_WAIT_S)
      except Exception as e:   # undecodable: a truncated, missing or damaged file
        raise CorruptCheckpointError(
            f"unreadable: {type(e).__name__}: {str(e)[:300]}") from e
    saved = meta.get("checksums")
    if saved is not None:
      found = array_checksums(restored)
      bad = sorted(k for k in saved if found.get(k) != saved[k])
      if bad:
        raise CorruptCheckpointError(
            f"corrupt: {len(bad)} array(s) differ from the checksums saved with the step "
            f"(first: {bad[0]})")
    return restored, meta

  def _report_skipped(self, skipped: list[tuple[int, str]], restored: int | None,
                      set_aside: bool) -> None:
    """A warning per skipped step naming the step, the reason and the fallback; with
    `set_aside` (and a step restored), moves those folders out of the way."""
    fallback = (f"resuming from step {restored} instead" if restored is not None
                else "no usable checkpoint")
    moved = self._move_aside([s for s, _ in skipped]) if set_aside and restored is not None \
        else {}
    for s, why in skipped:
      where = f" (moved it to {moved[s]})" if s in moved else ""
      logger.warning("Checkpoint step %d in %s is %s; skipped, %s%s.", s, self.directory, why,
                     fallback, where)

  def _move_aside(self, steps: list[int]) -> dict[int, Path]:
    aside = self.directory.parent / (self.directory.name + ".incomplete")
    moved = {}
    for s in steps:
      src = self.directory / str(s)
      moved[s] = aside / f"{s}-{time.strftime('%Y%m%d-%H%M%S')}"
      if jax.process_index() == 0 and src.exists():
        aside.mkdir(parents=True, exist_ok=True)
        shutil.move(str(src), str(moved[s]))
    if steps:
      if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("vdm_jax.checkpoint.set_aside")
      self._manager.reload()
    return moved

  def set_aside_all(self) -> dict[int, Path]:
    """Moves every step folder to `<directory>.incomplete/` (an explicit fresh start); returns
    {step: where it went}."""
    moved = self._move_aside(self.all_steps())
    for s, dst in moved.items():
      logger.warning("Checkpoint step %d in %s moved to %s for a fresh start.", s,
                     self.directory, dst)
    return moved
