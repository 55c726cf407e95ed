"""Official clu checkpoints: finding the newest (`find_checkpoint`), reading the msgpack train
state (`read_train_state`) and converting its parameters (`load_checkpoint`)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import flax
import numpy as np

from vdm_jax import model as model_lib
from vdm_jax.interop.official.weights import convert

# The official clu checkpoint's file names: <folder>/ckpt-<n>.flax, and the TensorFlow record
# `<folder>/checkpoint` naming the newest complete one.
_CKPT_FILE = re.compile(r"ckpt-(\d+)\.flax")
_CKPT_RECORD = re.compile(r'^model_checkpoint_path:\s*"([^"]*)"', re.M)


def find_checkpoint(path: str | Path) -> Path:
  """The official checkpoint file for `path`: the file itself, or in a folder (clu's
  `<workdir>/checkpoints-0`) the ckpt-<n>.flax that its `checkpoint` record names as the newest
  complete one, or without a record the highest <n>."""
  p = Path(path).expanduser()
  if p.is_file():
    return p
  if not p.is_dir():
    raise FileNotFoundError(f"{p}: no such file or folder; expected an official VDM checkpoint "
                            "(ckpt-<n>.flax) or the folder holding it (<workdir>/checkpoints-0).")
  record = p / "checkpoint"
  if record.is_file():
    match = _CKPT_RECORD.search(record.read_text(errors="replace"))
    if match:
      named = p / (Path(match.group(1)).name + ".flax")
      if not named.is_file():
        raise FileNotFoundError(f"{record} names {match.group(1)!r} as the newest checkpoint, "
                                f"but {named} is missing; pass the .flax file to use instead.")
      return named
  numbered = sorted((int(m.group(1)), f) for f in p.iterdir()
                    if (m := _CKPT_FILE.fullmatch(f.name)) and f.is_file())
  if not numbered:
    raise FileNotFoundError(f"{p} holds no ckpt-<n>.flax file: an official VDM checkpoint folder "
                            "(<workdir>/checkpoints-0) holds ckpt-<n>.flax files and a "
                            "'checkpoint' record.")
  return numbered[-1][1]


def read_train_state(path: str | Path) -> tuple[Path, dict]:
  """(file, state dict) of an official checkpoint: the msgpack-serialised train state with
  step, params, ema_params and opt_state (arrays as numpy). Raises ValueError naming the file
  when it is not one (e.g. truncated)."""
  file = find_checkpoint(path)
  raw = file.read_bytes()
  expected = ("expected the msgpack train state (step, params, ema_params, opt_state) that the "
              "official code's clu checkpoint writes as ckpt-<n>.flax")
  try:
    state = flax.serialization.msgpack_restore(raw)
  except Exception as e:  # msgpack raises several types for cut or foreign bytes
    raise ValueError(f"{file} ({len(raw)} bytes) is not a readable checkpoint ({type(e).__name__}:"
                     f" {e}); {expected}. A file cut short (an interrupted copy) reads like "
                     "this.") from None
  if not isinstance(state, dict) or not {"step", "params", "ema_params"} <= set(state):
    found = sorted(state) if isinstance(state, dict) else type(state).__name__
    raise ValueError(f"{file} holds {found}; {expected}.")
  return file, state


def load_checkpoint(path: str | Path, official_model_config: Any, *, ema: bool = True,
                    image_shape=None) -> tuple[model_lib.VDM, dict, dict]:
  """(model, variables, meta) from an official VDM checkpoint.

  Args:
    path: a ckpt-<n>.flax file, or the folder holding them (`find_checkpoint`: the newest).
    official_model_config: the official VDMConfig fields the checkpoint was trained with.
    ema: the EMA parameters (what the official code evaluates and samples) when True, else the
      raw parameters.
    image_shape: as in `convert`.

  Returns:
    model and variables as `convert`; meta: {'path': the file, 'step': optimizer steps,
    'params': 'ema_params' or 'params'}.
  """
  file, state = read_train_state(path)
  which = "ema_params" if ema else "params"
  try:
    model, variables = convert({"params": state[which]}, official_model_config,
                               image_shape=image_shape)
  except ValueError as e:
    raise ValueError(f"{file} ({which}): {e}") from None
  return model, variables, {"path": str(file), "step": int(np.asarray(state["step"])),
                            "params": which}
