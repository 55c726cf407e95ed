"""Real Fashion-MNIST for the tests, got the way a user of the package gets it.

`install_fashion_mnist` runs once per session (conftest.py), under the environment pytest was
started with, before the tests' own settings apply. It takes the four published files from the
first place `vdm_jax.data` would read them: a local folder (VDM_DATA_DIR, Debian's
dataset-fashion-mnist), the download cache (VDM_DATA_CACHE or ~/.cache/vdm_jax, where the
README's quickstart puts them), else a download into that cache (not with VDM_DATA_OFFLINE=1).
It writes them, checked against the published sha256, into the session's own empty download
cache. So every test, and every process a test starts, finds Fashion-MNIST with no
configuration and without a network, while no test writes to the user's folders.
"""
from __future__ import annotations

import hashlib
import struct
from pathlib import Path

from vdm_jax.data import download, get_spec, sources

NAME = "fashion_mnist"
# Debian's copy holds the published deflate streams under a rewritten 10-byte gzip header (no
# file name, the packaging time); the published header (file name, these mtimes, OS Unix)
# restores the published bytes exactly, so their sha256 is the registry's.
_PUBLISHED_MTIME = {"train": 1504176606, "t10k": 1504176627}

# The session's folder of the four published files (set by `install_fashion_mnist`), and where
# they came from.
SESSION_DIR: Path | None = None
ORIGIN = "not looked for"


def published_bytes(path: Path) -> bytes:
  """The published bytes of a Fashion-MNIST .gz file, from a published or a Debian copy."""
  raw = path.read_bytes()
  if raw[:4] == b"\x1f\x8b\x08\x00":      # a bare header: Debian's
    header = (b"\x1f\x8b\x08\x08" + struct.pack("<I", _PUBLISHED_MTIME[path.name.split("-")[0]])
              + b"\x00\x03" + path.name[:-3].encode() + b"\x00")
    return header + raw[10:]
  return raw


def _find() -> tuple[list[Path], str]:
  """The four files (train then test: images, labels) and a line saying where from."""
  spec = get_spec(NAME)
  files, origins = [], []
  for split in ("train", "test"):
    local = sources.find_local_files(NAME, split)
    cached = None if local is not None else download.cached_files(spec, split)
    if local is not None:
      found, origin = local, f"local folder {local[0].parent}"
    elif cached is not None:
      found, origin = cached, f"download cache {download.cache_root()}"
    else:
      found, origin = download.fetch(spec, split), f"downloaded into {download.cache_root()}"
    files += found
    origins.append(origin)
  return files, "; ".join(dict.fromkeys(origins))


def install_fashion_mnist(session_cache: Path) -> None:
  """Writes the published Fashion-MNIST files into `<session_cache>/fashion_mnist/`, sets
  SESSION_DIR and ORIGIN. If they cannot be found, SESSION_DIR stays None and ORIGIN says why
  and what to do (the tests reading the data then fail with the data's own error)."""
  global SESSION_DIR, ORIGIN
  spec = get_spec(NAME)
  published = {r.name: r.sha256 for r in spec.downloads}
  try:
    files, origin = _find()
  except (FileNotFoundError, download.DownloadUnavailable) as e:
    ORIGIN = (f"NOT FOUND ({e}): the tests that train on it fail. Install Debian's "
              "dataset-fashion-mnist, run the README's quickstart once with network access, or "
              "run the tests with network access and VDM_DATA_OFFLINE unset.")
    return
  folder = session_cache / spec.download_dir
  folder.mkdir(parents=True, exist_ok=True)
  for path in files:
    content = published_bytes(path)
    digest = hashlib.sha256(content).hexdigest()
    if digest != published[path.name]:
      raise ValueError(f"{path} is not the published {path.name}: sha256 {digest}, published "
                       f"{published[path.name]}. Remove it (or point VDM_DATA_DIR elsewhere).")
    (folder / path.name).write_bytes(content)
  SESSION_DIR, ORIGIN = folder, origin


def fashion_mnist_dir() -> Path:
  """The session's folder of the four published Fashion-MNIST files (read them, never write)."""
  if SESSION_DIR is None:
    raise FileNotFoundError(f"Fashion-MNIST for the tests: {ORIGIN}")
  return SESSION_DIR


def published_fashion_mnist() -> dict[str, bytes]:
  """{file name: bytes} of the four Fashion-MNIST files as published."""
  return {path.name: path.read_bytes() for path in sorted(fashion_mnist_dir().glob("*.gz"))}
