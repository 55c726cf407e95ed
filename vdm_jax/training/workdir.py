"""The workdir's guards: one run at a time, and the resolved config written only once a resume
is known to be compatible.

    with WorkdirLock(workdir):          # raises WorkdirInUseError naming the holder
      ...

The lock is an exclusive `flock` on `<workdir>/lock`, a file that records the holder's host, pid
and start time. The kernel releases it when the holder exits, however it exits (kill -9
included), so a lock left by a dead process is recovered by the next run without any cleanup.
On a shared filesystem the lock works across hosts where the filesystem supports `flock`
(local disks, NFSv4, Lustre); in a multi-process run only process 0 takes it.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Mapping

import jax
import ml_collections

from vdm_jax import config as config_lib
from vdm_jax.config import RunSpec

LOCK_FILE = "lock"
CONFIG_FILE = "config.json"


class WorkdirInUseError(RuntimeError):
  """Another live run holds the workdir."""


class CheckpointMismatchError(ValueError):
  """The checkpoint was written by a run with another dataset, seed or image shape."""


class WorkdirLock:
  """An exclusive lock on a workdir, taken before anything in it is written."""

  def __init__(self, workdir: str | os.PathLike):
    self.workdir = Path(workdir)
    self.path = self.workdir / LOCK_FILE
    self._fd: int | None = None

  def acquire(self) -> None:
    if jax.process_index() != 0:
      return
    self.workdir.mkdir(parents=True, exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "an unknown process"
      os.close(fd)
      raise WorkdirInUseError(
          f"{self.workdir} is in use by another run ({holder}); wait for it to finish, stop it, "
          "or use another --workdir.") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                              "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)
    self._fd = fd

  def release(self) -> None:
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None

  def __enter__(self) -> "WorkdirLock":
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()


def checkpoint_meta(spec: RunSpec) -> dict[str, Any]:
  """What a checkpoint records about the run that wrote it (compared on resume)."""
  return {"global_batch_size": spec.training.batch_size, "seed": spec.training.seed,
          "dataset": spec.data.name, "image_shape": list(spec.model.image_shape)}


def check_resume(spec: RunSpec, meta: Mapping[str, Any], step: int, directory: Path,
                 allow_changes: bool = False) -> list[str]:
  """Compares this config with the checkpoint's record; returns the differences.

  Raises CheckpointMismatchError listing them unless `allow_changes` (then the caller warns).
  A different global batch is allowed (the data order after it differs).
  """
  now = checkpoint_meta(spec)
  differences = [f"{key}: checkpoint {meta[key]!r}, config {now[key]!r}"
                 for key in ("dataset", "seed", "image_shape")
                 if key in meta and meta[key] != now[key]]
  if differences and not allow_changes:
    raise CheckpointMismatchError(
        f"The checkpoint at step {step} in {directory} was written by a run with other "
        f"settings ({'; '.join(differences)}). Resume with the settings it was written with, "
        "use a new --workdir, or pass --allow_config_change to resume anyway.")
  return differences


def write_config(spec: RunSpec, workdir: Path) -> None:
  """`<workdir>/config.json` = the resolved config, replaced atomically (process 0)."""
  if jax.process_index() == 0:
    tmp = workdir / (CONFIG_FILE + ".tmp")
    tmp.write_text(spec.to_json())
    os.replace(tmp, workdir / CONFIG_FILE)


def read_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
  """The config a training run wrote to `<workdir>/config.json` (`config.from_json`), to
  evaluate or sample its checkpoints with the model they were trained with."""
  path = Path(workdir) / CONFIG_FILE
  if not path.is_file():
    raise FileNotFoundError(
        f"No {path}: {workdir} is not the folder of a training run (a run writes its config "
        "there when it starts). Pass the workdir of a run, or its config (--config=<file>).")
  return config_lib.from_json(path.read_text())
