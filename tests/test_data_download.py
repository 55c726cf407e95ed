"""vdm_jax.data.download: files fetched from a local HTTP server (127.0.0.1) standing in for the
published hosts through VDM_DATA_MIRROR: checksums, the cache, the offline and failure errors, and
downloads that fail half-way."""
import dataclasses
import functools
import gzip
import hashlib
import http.server
import importlib.util
import io
import os
import socket
import sys
import tarfile
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from helpers_data import fashion_mnist_dir, published_fashion_mnist
from test_data_formats import idx_bytes, write_cifar
from vdm_jax import data
from vdm_jax.data import download, formats
from vdm_jax.data import registry as registry_module

class FileServer:
  """Serves `files` ({URL path: bytes}) on 127.0.0.1, logging each request's path.

  A path in `cut_once` is answered once with its full Content-Length but only half its bytes,
  then the connection is closed: a transfer interrupted mid-file.
  """

  def __init__(self):
    self.files: dict[str, bytes] = {}
    self.requests: list[str] = []
    self.cut_once: set[str] = set()
    owner = self

    class Handler(http.server.BaseHTTPRequestHandler):
      def do_GET(self):
        owner.requests.append(self.path)
        body = owner.files.get(self.path)
        if body is None:
          self.send_error(404)
          return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.path in owner.cut_once:
          owner.cut_once.discard(self.path)
          self.wfile.write(body[:len(body) // 2])
          self.close_connection = True
          return
        self.wfile.write(body)

      def log_message(self, *args):  # keep the test output clean
        pass

    self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
    self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                   daemon=True)
    self.thread.start()

  def close(self):
    self.httpd.shutdown()
    self.httpd.server_close()


@pytest.fixture(scope="module")
def fashion_files():
  return published_fashion_mnist()


@pytest.fixture
def server():
  s = FileServer()
  yield s
  s.close()


@pytest.fixture
def env(monkeypatch, tmp_path, server):
  """Downloads allowed, into an empty cache, from the server as mirror; no local copy visible."""
  monkeypatch.delenv("VDM_DATA_OFFLINE", raising=False)
  monkeypatch.delenv("VDM_DATA_DIR", raising=False)
  monkeypatch.setenv("VDM_DATA_NO_SYSTEM_DIRS", "1")
  monkeypatch.setenv("VDM_DATA_CACHE", str(tmp_path / "cache"))
  monkeypatch.setenv("VDM_DATA_MIRROR", server.url + "/mirror/")
  return tmp_path / "cache"


@pytest.fixture
def fashion_server(server, fashion_files):
  server.files.update({f"/mirror/fashion_mnist/{n}": b for n, b in fashion_files.items()})
  return server


def sha256(content: bytes) -> str:
  return hashlib.sha256(content).hexdigest()


def leftovers(folder: Path) -> list[str]:
  """Temporary files of downloads under `folder`."""
  return sorted(p.name for p in folder.rglob("*.part"))


# ----------------------------------------------------------------------------- the published files


def test_registry_has_the_published_fashion_mnist_sha256(fashion_files):
  spec = data.get_spec("fashion_mnist")
  assert {r.name: r.sha256 for r in spec.downloads} == {
      n: sha256(b) for n, b in fashion_files.items()}
  assert {len(b) for b in fashion_files.values()} == {26421880, 29515, 4422102, 5148}


@pytest.mark.skipif(importlib.util.find_spec("tensorflow_datasets") is None,
                    reason="tensorflow-datasets (the test extra) not installed")
def test_registry_urls_and_sha256_match_tensorflow_datasets():
  """tensorflow-datasets verifies its own downloads of these datasets against these values."""
  checksums = Path(importlib.util.find_spec("tensorflow_datasets").origin).parent / "url_checksums"
  for name, tfds_file in (("mnist", "mnist"), ("fashion_mnist", "fashion_mnist"),
                          ("cifar10", "cifar10"), ("emnist/letters", "emnist")):
    known = {line.split("\t")[0]: line.split("\t")[2]
             for line in (checksums / f"{tfds_file}.txt").read_text().splitlines() if line}
    for remote in data.get_spec(name).downloads:
      assert known[remote.url] == remote.sha256, remote.url


# ----------------------------------------------------------------------------- Fashion-MNIST


def test_download_checks_caches_and_uses_the_mirror_layout(env, fashion_server, capsys):
  x_test, y_test = data.load_arrays("fashion_mnist", "test")
  expected = formats.read_idx_split([fashion_mnist_dir() / "t10k-images-idx3-ubyte.gz",
                                     fashion_mnist_dir() / "t10k-labels-idx1-ubyte.gz"])
  np.testing.assert_array_equal(x_test, expected[0])
  np.testing.assert_array_equal(y_test, expected[1])
  assert fashion_server.requests == ["/mirror/fashion_mnist/t10k-images-idx3-ubyte.gz",
                                     "/mirror/fashion_mnist/t10k-labels-idx1-ubyte.gz"]
  folder = env / "fashion_mnist"
  assert sorted(p.name for p in folder.iterdir()) == ["t10k-images-idx3-ubyte.gz",
                                                      "t10k-labels-idx1-ubyte.gz"]
  spec_sha = {r.name: r.sha256 for r in data.get_spec("fashion_mnist").downloads}
  for path in folder.iterdir():
    assert sha256(path.read_bytes()) == spec_sha[path.name]
  err = capsys.readouterr().err  # not a terminal: a line per file instead of a bar
  assert f"downloading {fashion_server.url}/mirror/fashion_mnist/t10k-images-idx3-ubyte.gz" in err
  assert "t10k-labels-idx1-ubyte.gz: 5148 bytes, sha256 verified" in err

  # Cached: no request, the same arrays; the train split fetches its own two files only.
  x_again, _ = data.load_arrays("fashion_mnist", "test")
  np.testing.assert_array_equal(x_again, x_test)
  assert len(fashion_server.requests) == 2
  x_train, _ = data.load_arrays("fashion_mnist", "train")
  assert x_train.shape == (60000, 28, 28, 1)
  assert fashion_server.requests[2:] == ["/mirror/fashion_mnist/train-images-idx3-ubyte.gz",
                                         "/mirror/fashion_mnist/train-labels-idx1-ubyte.gz"]
  assert leftovers(env) == []


def test_progress_bar_on_a_terminal(env, fashion_server, monkeypatch):
  class Terminal(io.StringIO):
    def isatty(self):
      return True
  monkeypatch.setattr(sys, "stderr", Terminal())
  spec = data.get_spec("fashion_mnist")
  files = download.fetch(spec, "test")
  assert [f.name for f in files] == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
  out = sys.stderr.getvalue()
  assert "t10k-labels-idx1-ubyte.gz: 100%" in out and "downloading" not in out


def test_offline_error_lists_the_urls(env, fashion_server, monkeypatch):
  monkeypatch.setenv("VDM_DATA_OFFLINE", "1")
  with pytest.raises(FileNotFoundError) as e:
    data.load_arrays("fashion_mnist", "test")
  message = str(e.value)
  mirror_url = f"{fashion_server.url}/mirror/fashion_mnist/t10k-images-idx3-ubyte.gz"
  for part in ("Dataset 'fashion_mnist' split 'test' was not found",
               "Download: not tried, VDM_DATA_OFFLINE=1 is set; it fetches", mirror_url,
               "t10k-labels-idx1-ubyte.gz  (sha256 67da17c76eaffca5446c3361aaab5c3cd6d1c26",
               f"{env / 'fashion_mnist'} (the download cache, VDM_DATA_CACHE)",
               "apt-get install dataset-fashion-mnist"):
    assert part in message, part
  assert "train-images" not in message
  monkeypatch.delenv("VDM_DATA_MIRROR")
  with pytest.raises(FileNotFoundError, match="http://fashion-mnist.s3-website.eu-central-1"
                     r".amazonaws.com/t10k-images-idx3-ubyte.gz"):
    data.load_arrays("fashion_mnist", "test")
  assert fashion_server.requests == []


def test_no_network_and_http_errors_are_file_not_found(env, server, monkeypatch):
  with socket.socket() as s:  # a port nothing listens on
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  monkeypatch.setenv("VDM_DATA_MIRROR", f"http://127.0.0.1:{port}")
  with pytest.raises(FileNotFoundError, match=r"(?s)Download: downloading http://127.0.0.1:"
                     rf"{port}/mnist/t10k-images-idx3-ubyte.gz failed: .*refused.*it fetches"):
    data.load_arrays("mnist", "test")
  monkeypatch.setenv("VDM_DATA_MIRROR", server.url)  # the server has no MNIST
  with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte.gz failed: HTTP 404"):
    data.load_arrays("mnist", "test")
  assert server.requests == ["/mnist/t10k-images-idx3-ubyte.gz"]
  assert leftovers(env) == [] and not (env / "mnist" / "t10k-images-idx3-ubyte.gz").exists()


def test_checksum_mismatch_deletes_the_file(env, fashion_server, fashion_files):
  path = "/mirror/fashion_mnist/t10k-labels-idx1-ubyte.gz"
  altered = bytearray(fashion_files["t10k-labels-idx1-ubyte.gz"])
  altered[100] ^= 1
  fashion_server.files[path] = bytes(altered)
  with pytest.raises(download.ChecksumError) as e:
    data.load_arrays("fashion_mnist", "test")
  expected = sha256(fashion_files["t10k-labels-idx1-ubyte.gz"])
  assert str(e.value).startswith(
      f"t10k-labels-idx1-ubyte.gz downloaded from {fashion_server.url}{path} has sha256 "
      f"{sha256(bytes(altered))}, expected {expected}; the file was deleted.")
  assert not (env / "fashion_mnist" / "t10k-labels-idx1-ubyte.gz").exists()
  assert leftovers(env) == []


def test_interrupted_download_leaves_nothing_and_a_retry_succeeds(env, fashion_server):
  path = "/mirror/fashion_mnist/t10k-images-idx3-ubyte.gz"
  fashion_server.cut_once.add(path)
  with pytest.raises(FileNotFoundError,
                     match=r"failed: the connection closed after 2211051 of 4422102 bytes"):
    data.load_arrays("fashion_mnist", "test")
  assert not (env / "fashion_mnist" / "t10k-images-idx3-ubyte.gz").exists()
  assert leftovers(env) == []
  images, _ = data.load_arrays("fashion_mnist", "test")
  assert images.shape == (10000, 28, 28, 1)
  assert fashion_server.requests == [path, path, "/mirror/fashion_mnist/t10k-labels-idx1-ubyte.gz"]


def test_stale_partial_file_is_removed_and_never_read(env, fashion_server):
  folder = env / "fashion_mnist"
  folder.mkdir(parents=True)
  stale = folder / ".t10k-images-idx3-ubyte.gz.abc.part"
  stale.write_bytes(b"half")
  fresh = folder / ".t10k-labels-idx1-ubyte.gz.abc.part"  # as if another process were writing it
  fresh.write_bytes(b"half")
  old = stale.stat().st_mtime - 3600
  os.utime(stale, (old, old))
  data.load_arrays("fashion_mnist", "test")
  assert leftovers(env) == [fresh.name]


# ----------------------------------------------------------------------------- archives


def _cifar_records(n, seed):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (n, 3, 32, 32), np.uint8), rng.integers(0, 10, n)


@pytest.fixture
def registry(monkeypatch):
  """The registry, restored after the test."""
  monkeypatch.setattr(registry_module, "_SPECS", dict(registry_module._SPECS))
  return registry_module._SPECS


def test_cifar_archive_extracted_per_split_and_fetched_once(env, server, registry, tmp_path):
  """A small tarball laid out like cifar-10-binary.tar.gz (files of 7 records)."""
  parts = {f"data_batch_{i}.bin": _cifar_records(7, i) for i in range(1, 6)}
  parts["test_batch.bin"] = _cifar_records(7, 0)
  src = tmp_path / "src"
  for name, (chw, labels) in parts.items():
    write_cifar(src / "cifar-10-batches-bin" / name, chw, labels)
  buffer = io.BytesIO()
  with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
    tf.add(src / "cifar-10-batches-bin", arcname="cifar-10-batches-bin")
  archive = buffer.getvalue()
  server.files["/mirror/cifar10/cifar-10-binary.tar.gz"] = archive
  registry["small_cifar10"] = dataclasses.replace(
      data.get_spec("cifar10"), reader=functools.partial(formats.read_cifar10_split,
                                                         records_per_file=None),
      downloads=(data.RemoteFile("https://example.org/cifar-10-binary.tar.gz", sha256(archive),
                                 archive_dir="cifar-10-batches-bin"),))

  images, labels = data.load_arrays("small_cifar10", "test")
  np.testing.assert_array_equal(images, parts["test_batch.bin"][0].transpose(0, 2, 3, 1))
  np.testing.assert_array_equal(labels, parts["test_batch.bin"][1])
  folder = env / "cifar10" / "cifar-10-batches-bin"
  assert sorted(p.name for p in folder.iterdir()) == ["test_batch.bin"]
  images, labels = data.load_arrays("small_cifar10", "train")
  np.testing.assert_array_equal(labels, np.concatenate(
      [parts[f"data_batch_{i}.bin"][1] for i in range(1, 6)]))
  assert len(list(folder.iterdir())) == 6
  assert server.requests == ["/mirror/cifar10/cifar-10-binary.tar.gz"]
  assert leftovers(env) == []


def test_zip_archive_like_emnist(env, server, registry):
  """A zip laid out like EMNIST's gzip.zip: gzip/emnist-<split>-*.gz, images stored transposed."""
  upright = np.random.default_rng(3).integers(0, 256, (5, 28, 28), np.uint8)
  buffer = io.BytesIO()
  with zipfile.ZipFile(buffer, "w") as zf:
    zf.writestr("gzip/emnist-letters-test-images-idx3-ubyte.gz",
                gzip.compress(idx_bytes(upright.transpose(0, 2, 1))))
    zf.writestr("gzip/emnist-letters-test-labels-idx1-ubyte.gz",
                gzip.compress(idx_bytes(np.array([1, 2, 3, 26, 5]))))
  archive = buffer.getvalue()
  server.files["/mirror/emnist/gzip.zip"] = archive
  registry["small_emnist"] = dataclasses.replace(
      data.get_spec("emnist/letters"),
      downloads=(data.RemoteFile("https://example.org/gzip.zip", sha256(archive),
                                 archive_dir="gzip"),))
  images, labels = data.load_arrays("small_emnist", "test")
  np.testing.assert_array_equal(images[..., 0], upright)
  np.testing.assert_array_equal(labels, [0, 1, 2, 25, 4])
  assert (env / "emnist" / "gzip.zip").is_file()
  # The train split is not in this archive: a clear error, nothing extracted under its names.
  with pytest.raises(ValueError, match="gzip.zip lacks gzip/emnist-letters-train-images"):
    data.load_arrays("small_emnist", "train")
  assert sorted(p.name for p in (env / "emnist" / "gzip").iterdir()) == [
      "emnist-letters-test-images-idx3-ubyte.gz", "emnist-letters-test-labels-idx1-ubyte.gz"]


# ----------------------------------------------------------------------------- specs


@pytest.mark.parametrize("kwargs,match", [
    (dict(url="https://x.org/a.gz", sha256="ABC"), "64 lower-case hex digits"),
    (dict(url="x.org/a.gz", sha256="0" * 64), "http.s. or file address"),
    (dict(url="https://x.org/a.gz", sha256="0" * 64, archive_dir="d"), "is not an archive"),
])
def test_bad_remote_file_is_a_clear_error(kwargs, match):
  with pytest.raises(ValueError, match=match):
    data.RemoteFile(**kwargs)


def test_downloads_must_cover_the_files():
  spec = data.get_spec("mnist")
  with pytest.raises(ValueError, match=r"provide no file for t10k-labels-idx1-ubyte.gz \(test\)"):
    dataclasses.replace(spec, downloads=spec.downloads[:3])
  with pytest.raises(ValueError, match="download_dir must be a folder name"):
    dataclasses.replace(spec, download_dir="a/b")
