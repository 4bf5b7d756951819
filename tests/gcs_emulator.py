"""A local Google Cloud Storage emulator for the tests of `gs://` paths.

`gcp-storage-emulator` (the `test` extra) serves the GCS JSON API on 127.0.0.1; gcsfs (hence
`etils.epath`), tensorstore (orbax) and google-cloud-storage (tensorboardX) all reach it
through the variables of `Emulator.env`, which subprocesses inherit.

Run as a script, this module starts the emulator with one fix: its media downloads lack the
`x-goog-generation` header that real GCS sends. tensorstore reads an object's generation
from it and makes it the condition of its next write; without it every rewrite of an
orbax (OCDBT) checkpoint manifest fails with "Malformed StorageGeneration".
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class Emulator:
  """`with Emulator(bucket) as emu:` serves `gs://bucket` in memory until the block ends."""

  def __init__(self, bucket: str = "rew-test"):
    self.bucket = bucket
    self.port = _free_port()
    url = f"http://127.0.0.1:{self.port}"
    self.env = {
        "STORAGE_EMULATOR_HOST": url,           # gcsfs and google-cloud-storage.
        # gcsfs otherwise probes the bucket over gRPC and waits 60 s for an answer.
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        "TENSORSTORE_GCS_HTTP_URL": url,        # tensorstore (orbax checkpoints).
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test",
    }
    self._proc = None

  def __enter__(self) -> "Emulator":
    # Its log goes to a file: it writes a line per request, and a pipe nobody reads would
    # fill up and stop the server mid-test.
    self._log = tempfile.TemporaryFile()
    self._proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "start", "--host=127.0.0.1",
         f"--port={self.port}", "--in-memory", f"--default-bucket={self.bucket}"],
        stdout=self._log, stderr=subprocess.STDOUT)
    deadline = time.time() + 30
    while True:
      try:
        socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
        break
      except OSError:
        if self._proc.poll() is not None or time.time() > deadline:
          self._log.seek(0)
          raise RuntimeError("the GCS emulator did not start: " +
                             self._log.read().decode(errors="replace")[-2000:])
        time.sleep(0.1)
    return self

  def __exit__(self, *exc) -> None:
    self._proc.terminate()
    try:
      self._proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
      self._proc.kill()
      self._proc.wait()
    self._log.close()

  def url(self, path: str = "") -> str:
    return f"gs://{self.bucket}/{path}".rstrip("/")

  def apply(self, environ=os.environ) -> None:
    environ.update(self.env)

  def env_via(self, url: str) -> dict[str, str]:
    """`env` with the emulator's URL replaced by `url` (a proxy in front of it)."""
    own = f"http://127.0.0.1:{self.port}"
    return {k: url if v == own else v for k, v in self.env.items()}


def _serve_with_generation_headers() -> None:
  from gcp_storage_emulator import __main__ as emulator_main  # pylint: disable=g-import-not-at-top
  from gcp_storage_emulator import server  # pylint: disable=g-import-not-at-top
  from gcp_storage_emulator.handlers import objects  # pylint: disable=g-import-not-at-top
  download = objects.download

  def download_with_generation(request, response, storage, *args, **kwargs):
    download(request, response, storage, *args, **kwargs)
    try:
      obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
    except Exception:  # Not found: the original handler has set the status.
      return
    response["x-goog-generation"] = str(obj["generation"])
    response["x-goog-metageneration"] = str(obj["metageneration"])

  objects.download = download_with_generation  # What `get ...?alt=media` calls.
  for _, handlers in server.HANDLERS:
    for method, handler in list(handlers.items()):
      if handler is download:
        handlers[method] = download_with_generation
  emulator_main.main(sys.argv[1:])


if __name__ == "__main__":
  _serve_with_generation_headers()
