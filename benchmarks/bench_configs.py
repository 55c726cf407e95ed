"""The benchmarks' named configs (`CONFIGS`: quickstart, small, paper), their defaults, and
`build_config`: a named config (or a run's config.json) with the command line's overrides."""
from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

from experiments.configs import base, quickstart  # noqa: E402
from vdm_jax import config as config_lib  # noqa: E402
from vdm_jax.training import workdir as workdir_lib  # noqa: E402



def _vdm_unet_config(dataset, image_shape, batch_size, **network):
  """base.get_config() with the vdm_unet network (`network`: its attributes that differ from
  base.py's, which are the paper's network) rematerialised, one optimizer step per call, the
  official VDM optimizer settings (base.py's AdamW, lr 2e-4, clipping at 1, EMA 0.9999, with 100
  warm-up steps) and evaluation batches of the training batch's size."""
  c = base.get_config()
  c.data.name = dataset
  c.model.network = "vdm_unet"
  c.model.image_shape = image_shape
  c.model.vdm_unet.update(remat=True, **network)
  c.training.update(batch_size=batch_size, steps_per_call=1)
  c.optimizer.warmup_steps = 100
  c.eval.batch_size = batch_size
  return c


def small_config():
  """The reference small model (the official code's small VDM network, 1.32M parameters).
  remat=True: 2.8 instead of 4.3 GiB peak and no slower on CPU (benchmarks/README.md)."""
  return _vdm_unet_config("fashion_mnist", (28, 28, 1), 64, n_embd=64, n_layer=4)


def paper_config():
  """The paper's CIFAR-10 network (30.6M parameters), batch 8. remat=True: 2.4 instead of
  6.2 GiB peak and no slower on CPU (benchmarks/README.md)."""
  return _vdm_unet_config("cifar10", (32, 32, 3), 8)


def quickstart_config():
  return quickstart.get_config()


CONFIGS = {"quickstart": quickstart_config, "small": small_config, "paper": paper_config}
# Default sampling chain length and timed repeats per config (the paper model costs seconds per
# reverse step for 16 images on a CPU).
SAMPLE_T = {"quickstart": 20, "small": 20, "paper": 4}
SAMPLE_REPEATS = {"quickstart": 3, "small": 3, "paper": 1}


def _parse_bool(s: str) -> bool:
  if s.lower() in ("1", "true", "yes", "on"):
    return True
  if s.lower() in ("0", "false", "no", "off"):
    return False
  raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


def _positive_int(s: str) -> int:
  if not s.isdigit() or int(s) < 1:
    raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {s!r}")
  return int(s)


def _apply_override(cfg, item: str) -> None:
  """'model.vdm_unet.n_layer=8' -> cfg.model.vdm_unet.n_layer = 8 (value parsed as a literal)."""
  key, _, raw = item.partition("=")
  try:
    value = ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    value = raw
  path = key.split(".")
  node = cfg
  for depth, name in enumerate(path):
    if not hasattr(node, "keys") or name not in node:
      where = ".".join(path[:depth]) or "the config"
      keys = ", ".join(sorted(node.keys())) if hasattr(node, "keys") else "none, not a dict"
      raise SystemExit(f"--set {item}: {where} has no key {name!r} (its keys: {keys})")
    if depth < len(path) - 1:
      node = node[name]
  try:
    node[path[-1]] = value
  except TypeError as e:  # ConfigDict keeps each field's type
    raise SystemExit(f"--set {item}: {e}") from None


def build_config(args) -> config_lib.RunSpec:
  """The named config (or `<workdir>/config.json`) with the flags' overrides, resolved for one
  device; an invalid result exits with `config.resolve`'s message."""
  if getattr(args, "workdir", None) and (Path(args.workdir) / workdir_lib.CONFIG_FILE).is_file():
    # A trained run: its own resolved config, so that the checkpoint matches the model.
    cfg = workdir_lib.read_config(args.workdir)
  else:
    cfg = CONFIGS[args.config]()
  net = cfg.model.network
  if args.batch_size:
    cfg.training.batch_size = args.batch_size
  if args.dtype:
    cfg.model.dtype = args.dtype
  if args.remat is not None:
    cfg.model[net]["remat"] = args.remat
  if args.scan is not None:
    if net != "vdm_unet":
      raise SystemExit("--scan applies to the vdm_unet network only")
    cfg.model[net]["scan"] = args.scan
  for item in args.set or ():
    _apply_override(cfg, item)
  try:
    return config_lib.resolve(cfg, num_devices=1, num_processes=1)
  except (TypeError, ValueError) as e:
    raise SystemExit(f"invalid config: {e}") from None
