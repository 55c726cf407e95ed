"""Fetching a dataset's published files into a local cache, checked against their sha256.

When no local folder holds a split, ``fetch`` downloads the files the split needs (its
``DatasetSpec.downloads``), verifies each one's SHA-256 and keeps it in the cache, where
``cached_files`` finds it next time without any request. Environment variables:

  VDM_DATA_CACHE    the cache folder (default ``~/.cache/vdm_jax``); a dataset's files go to
                    ``<cache>/<download_dir>/`` (``fashion_mnist``, ``mnist``, ``emnist``,
                    ``cifar10``), an archive's members to ``<cache>/<download_dir>/<archive_dir>/``.
  VDM_DATA_MIRROR   a base URL replacing the canonical hosts: a file then comes from
                    ``<mirror>/<download_dir>/<file name>``, e.g.
                    ``<mirror>/cifar10/cifar-10-binary.tar.gz``; still checked against the
                    same sha256.
  VDM_DATA_OFFLINE  ``1``: never download; ``fetch`` raises ``DownloadUnavailable``.

A file under its final name in the cache is always complete and verified: each download (and
each member extracted from an archive) is written to a temporary file in the same folder and
moved into place with ``os.replace`` only after it checked out. A failed, interrupted or
mismatching download leaves nothing under the final name. Only the standard library speaks HTTP.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import posixpath
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import tqdm

from vdm_jax.data.registry import DatasetSpec, RemoteFile

__all__ = [
    "CACHE_ENV",
    "ChecksumError",
    "DEFAULT_CACHE",
    "DownloadUnavailable",
    "MIRROR_ENV",
    "OFFLINE_ENV",
    "cache_folder",
    "cache_root",
    "cached_files",
    "env_flag",
    "fetch",
    "planned_urls",
]

CACHE_ENV = "VDM_DATA_CACHE"
MIRROR_ENV = "VDM_DATA_MIRROR"
OFFLINE_ENV = "VDM_DATA_OFFLINE"
DEFAULT_CACHE = "~/.cache/vdm_jax"
# Seconds a blocked connect or read may wait before the download counts as failed.
TIMEOUT_S = 60
_CHUNK_BYTES = 1 << 20
# A temporary file untouched this long belongs to a download that was killed: an active one
# writes at least every TIMEOUT_S seconds.
_STALE_PART_S = 10 * TIMEOUT_S


class DownloadUnavailable(Exception):
  """The files could not be downloaded (offline, no network, an HTTP error, cut short); the
  message says why. Nothing incomplete was left in the cache."""


class ChecksumError(ValueError):
  """A downloaded file's sha256 is not the published one; the file was deleted."""


def env_flag(name: str) -> bool:
  """Whether the environment variable `name` is set to a true value (1, true, yes, on)."""
  return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def cache_root() -> Path:
  """The download cache: ``VDM_DATA_CACHE`` or ``~/.cache/vdm_jax``."""
  return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


def _url(spec: DatasetSpec, remote: RemoteFile) -> str:
  """Where `remote` is fetched from: its canonical URL, or its place on the mirror."""
  mirror = os.environ.get(MIRROR_ENV, "").strip()
  if mirror:
    return f"{mirror.rstrip('/')}/{spec.download_dir}/{remote.name}"
  return remote.url


def _archive(spec: DatasetSpec) -> RemoteFile | None:
  """The spec's single archive, or None when its downloads are plain files."""
  return next((r for r in spec.downloads if r.archive_dir is not None), None)


def cache_folder(spec: DatasetSpec) -> Path | None:
  """The folder of the cache where a split's files lie once fetched; None without downloads."""
  if not spec.downloads:
    return None
  folder = cache_root() / spec.download_dir
  archive = _archive(spec)
  return folder / archive.archive_dir if archive is not None else folder


def _needed(spec: DatasetSpec, split: str) -> list[RemoteFile]:
  """The downloads that `split` needs: its own files, or the archive holding them."""
  archive = _archive(spec)
  if archive is not None:
    return [archive]
  return [next(r for r in spec.downloads if r.name in names) for names in spec.files[split]]


def planned_urls(spec: DatasetSpec, split: str) -> list[tuple[str, str]]:
  """(URL, sha256) of each file `fetch` would download for `split`, mirror applied."""
  return [(_url(spec, r), r.sha256) for r in _needed(spec, split)]


def cached_files(spec: DatasetSpec, split: str) -> list[Path] | None:
  """The split's files in the cache, in the order of ``spec.files[split]``, or None unless
  all of them are there. Makes no request."""
  folder = cache_folder(spec)
  if folder is None:
    return None
  found = [next((folder / n for n in names if (folder / n).is_file()), None)
           for names in spec.files[split]]
  return found if all(found) else None


# ----------------------------------------------------------------------------- atomic writes


def _remove_stale_parts(dest: Path) -> None:
  """Deletes temporary files of `dest` left by a killed download (untouched for a while)."""
  for part in dest.parent.glob(f".{dest.name}.*.part"):
    try:
      if time.time() - part.stat().st_mtime > _STALE_PART_S:
        part.unlink()
    except FileNotFoundError:  # another process finished or removed it meanwhile
      pass


class _Part:
  """A temporary file beside `dest`, moved onto it by ``commit``; deleted if not committed."""

  def __init__(self, dest: Path):
    self.dest = dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_parts(dest)
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    self.path = Path(name)
    self.file = os.fdopen(fd, "wb")

  def commit(self) -> None:
    self.file.close()
    os.replace(self.path, self.dest)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.file.close()
    self.path.unlink(missing_ok=True)  # a no-op after commit


# ----------------------------------------------------------------------------- downloading


def _size_text(num_bytes: int | None) -> str:
  return "size unknown" if num_bytes is None else f"{num_bytes / 2**20:.1f} MiB"


def _copy_response(response, out, name: str, total: int | None) -> tuple[int, str]:
  """Streams `response` into `out`; returns (bytes, sha256 hex). Bar on a terminal."""
  digest, received = hashlib.sha256(), 0
  bar = (tqdm.tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=name,
                   file=sys.stderr) if sys.stderr.isatty() else None)
  try:
    while chunk := response.read(_CHUNK_BYTES):
      out.write(chunk)
      digest.update(chunk)
      received += len(chunk)
      if bar is not None:
        bar.update(len(chunk))
  finally:
    if bar is not None:
      bar.close()
  return received, digest.hexdigest()


def _download(url: str, sha256: str, dest: Path) -> None:
  """Fetches `url` to `dest`, all or nothing, checked against `sha256`.

  Raises:
    DownloadUnavailable: the request failed or the transfer ended early (nothing kept).
    ChecksumError: the bytes arrived but their sha256 differs (nothing kept).
  """
  request = urllib.request.Request(url, headers={"User-Agent": "vdm_jax"})
  with _Part(dest) as part:
    try:
      with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        if not sys.stderr.isatty():
          print(f"vdm_jax: downloading {url} ({_size_text(total)}) to {dest}", file=sys.stderr,
                flush=True)
        received, actual = _copy_response(response, part.file, dest.name, total)
    except urllib.error.HTTPError as e:
      raise DownloadUnavailable(f"downloading {url} failed: HTTP {e.code} {e.reason}") from e
    except urllib.error.URLError as e:  # no network, refused, unknown host
      raise DownloadUnavailable(f"downloading {url} failed: {e.reason}") from e
    except (OSError, http.client.HTTPException) as e:  # timeouts, resets, cut short
      raise DownloadUnavailable(f"downloading {url} failed: {type(e).__name__}: {e}") from e
    if total is not None and received != total:
      raise DownloadUnavailable(f"downloading {url} failed: the connection closed after "
                                f"{received} of {total} bytes")
    if actual != sha256:
      raise ChecksumError(
          f"{dest.name} downloaded from {url} has sha256 {actual}, expected {sha256}; the file "
          "was deleted. Run again to retry; if it keeps happening, that address does not serve "
          f"the published file (check {MIRROR_ENV} if it is set).")
    part.commit()
  if not sys.stderr.isatty():
    print(f"vdm_jax: {dest.name}: {received} bytes, sha256 verified", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- archives


def _member_path(name: str) -> str:
  """An archive member's name, normalised (``./a//b`` -> ``a/b``) for comparison."""
  return posixpath.normpath(name).lstrip("/")


def _extract(archive_path: Path, archive_dir: str, wanted: dict[str, Path]) -> None:
  """Copies the members `wanted` ({name inside archive_dir: destination}) out of the archive,
  each written beside its destination and moved into place when complete.

  Raises:
    ValueError naming the archive and the members it lacks.
  """
  by_member = {_member_path(posixpath.join(archive_dir, n)): d for n, d in wanted.items()}
  done = set()
  if archive_path.name.endswith(".zip"):
    with zipfile.ZipFile(archive_path) as zf:
      for info in zf.infolist():
        dest = by_member.get(_member_path(info.filename))
        if dest is not None:
          with zf.open(info) as src, _Part(dest) as part:
            shutil.copyfileobj(src, part.file, _CHUNK_BYTES)
            part.commit()
          done.add(dest)
  else:
    with tarfile.open(archive_path, "r:*") as tf:
      for info in tf:  # one pass over the (possibly gzipped) stream
        dest = by_member.get(_member_path(info.name))
        if dest is not None and info.isfile():
          with tf.extractfile(info) as src, _Part(dest) as part:
            shutil.copyfileobj(src, part.file, _CHUNK_BYTES)
            part.commit()
          done.add(dest)
  missing = [m for m, d in by_member.items() if d not in done]
  if missing:
    raise ValueError(f"{archive_path} lacks {', '.join(missing)}; it matched its sha256, so the "
                     "dataset's spec names files the archive does not hold.")


# ----------------------------------------------------------------------------- entry point


def fetch(spec: DatasetSpec, split: str) -> list[Path]:
  """Downloads what the cache lacks of `split` and returns the split's files.

  Files already in the cache are not requested again. For an archive, the archive is kept in
  the cache (other splits are extracted from it later) and only this split's members are
  extracted.

  Args:
    spec: the dataset; its ``downloads`` must not be empty.
    split: ``"train"`` or ``"test"``.

  Returns:
    the files in the order of ``spec.files[split]``, all in ``cache_folder(spec)``.

  Raises:
    DownloadUnavailable: ``VDM_DATA_OFFLINE`` is set, the spec has no downloads, or a download
      failed (no network, an HTTP error, a connection closed early).
    ChecksumError: a downloaded file's sha256 is not the published one.
  """
  if not spec.downloads:
    raise DownloadUnavailable("none known for this dataset (its spec has no downloads)")
  if env_flag(OFFLINE_ENV):
    raise DownloadUnavailable(f"not tried, {OFFLINE_ENV}={os.environ[OFFLINE_ENV]} is set")
  folder = cache_root() / spec.download_dir
  for remote in _needed(spec, split):
    path = folder / remote.name
    if not path.is_file():
      _download(_url(spec, remote), remote.sha256, path)
  archive = _archive(spec)
  if archive is not None and cached_files(spec, split) is None:
    target = cache_folder(spec)
    _extract(folder / archive.name, archive.archive_dir,
             {names[0]: target / names[0] for names in spec.files[split]})
  return cached_files(spec, split)
