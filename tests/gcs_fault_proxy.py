"""A reverse proxy on 127.0.0.1 that puts storage faults between a client and the emulator.

    proxy = FaultProxy(emulator.port)             # serves proxy.url, forwards every request
    proxy.add(Fault("status", times=3, status=503, path=r"/o/run%2Fckpt"))  # 3 × 503
    proxy.add(Fault("reset", times=1, method="PUT", forward=True))  # applied, reply lost
    proxy.add(Fault("stall", times=1, stall_s=2.0))  # the reply held back 2 s
    proxy.injected                                # Counter: {"503": 3, "reset": 1, ...}
    proxy.log                                     # Seen(method, target, outcome, client)

The gcs clients (gcsfs, tensorstore, google-cloud-storage) reach it through the emulator's
variables pointed at `proxy.url`. A rule hits the requests whose method and URL (decoded)
match it, `every`-th one of them, until it has hit `times` (None: forever); a request no
rule hits is forwarded untouched. No installed library injects HTTP faults (the emulator has
no fault hooks, and test proxies such as mitmproxy are not dependencies here), hence this
file: http.server for the client side, http.client to the emulator.
"""

from __future__ import annotations

import collections
import dataclasses
import http.client
import http.server
import re
import socket
import socketserver
import struct
import threading
import time
import urllib.parse
from typing import NamedTuple

# Hop-by-hop headers (RFC 9110 §7.6.1): they describe one connection, not the message.
_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te",
        "trailer", "upgrade", "content-length"}


@dataclasses.dataclass
class Fault:
  """One rule. kind: "status" (reply `status` with a GCS error body), "reset" (close the
  connection with a TCP RST and no reply) or "stall" (hold the reply `stall_s` seconds).
  `forward`: whether the emulator gets the request first. A reset then leaves the client
  unable to know whether it happened; a stall without it ends in a reset, the request lost.
  Defaults: a reset does not forward, a stall does."""
  kind: str
  times: int | None = 1
  status: int = 503
  stall_s: float = 0.0
  method: str | None = None
  path: str | None = None        # A regex searched in the decoded path and query.
  every: int = 1
  forward: bool | None = None
  seen: int = 0
  hit: int = 0

  def __post_init__(self):
    if self.kind not in ("status", "reset", "stall"):
      raise ValueError(f"unknown fault kind {self.kind!r}")
    if self.forward is None:
      self.forward = self.kind == "stall"

  def takes(self, method: str, target: str) -> bool:
    """Whether this rule hits the request (counting it as seen when it matches)."""
    if self.times is not None and self.hit >= self.times:
      return False
    if self.method and method != self.method:
      return False
    if self.path and not re.search(self.path, target):
      return False
    self.seen += 1
    if self.seen % self.every:
      return False
    self.hit += 1
    return True

  @property
  def label(self) -> str:
    return str(self.status) if self.kind == "status" else self.kind


class Seen(NamedTuple):
  method: str
  target: str   # Path and query, decoded.
  outcome: str  # "ok", or the fault's label.
  client: str   # The first word of its User-Agent: "python-gcsfs/…", "tensorstore/…".


def _error_body(status: int) -> bytes:
  reason = {429: "rateLimitExceeded", 503: "backendError"}.get(status, "error")
  message = http.client.responses.get(status, "error")
  return (f'{{"error": {{"code": {status}, "message": "{message}", '
          f'"errors": [{{"reason": "{reason}", "message": "{message}"}}]}}}}').encode()


class _Handler(http.server.BaseHTTPRequestHandler):
  protocol_version = "HTTP/1.1"  # Keep-alive: clients reuse connections, as with GCS.
  server: "_Server"

  def log_message(self, *args) -> None:  # The proxy's own log is `FaultProxy.log`.
    pass

  def setup(self) -> None:
    super().setup()
    # Headers and body go out in two writes: with Nagle's algorithm and the client's delayed
    # ACK, each reply would wait 40 ms.
    self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

  def _body(self) -> bytes:
    if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
      parts = []
      while True:
        size = int(self.rfile.readline().split(b";")[0], 16)
        if not size:
          while self.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass  # Trailers.
          return b"".join(parts)
        parts.append(self.rfile.read(size))
        self.rfile.readline()
    return self.rfile.read(int(self.headers.get("Content-Length") or 0))

  def _reset(self) -> None:
    # SO_LINGER 0: close() sends RST, the abrupt end a client sees from a dropped connection.
    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    self.close_connection = True
    self.connection.close()

  def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
    upstream = http.client.HTTPConnection("127.0.0.1", self.server.upstream_port, timeout=60)
    try:
      upstream.connect()
      upstream.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
      headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP | {"expect"}}
      headers["Content-Length"] = str(len(body))
      upstream.request(self.command, self.path, body=body, headers=headers)
      reply = upstream.getresponse()
      return reply.status, reply.getheaders(), reply.read()
    finally:
      upstream.close()

  def _reply(self, status: int, headers, body: bytes) -> None:
    self.send_response(status)
    for key, value in headers:
      if key.lower() not in _HOP:
        self.send_header(key, value)
    self.send_header("Content-Length", str(len(body)))
    self.end_headers()
    if self.command != "HEAD":
      self.wfile.write(body)

  def _handle(self) -> None:
    body = self._body()
    target = urllib.parse.unquote(self.path)
    agent = (self.headers.get("User-Agent") or "-").split()[0]
    fault = self.server.proxy._take(self.command, target, agent)  # pylint: disable=protected-access
    if fault is not None and fault.kind == "status":
      return self._reply(fault.status, [("Content-Type", "application/json")],
                         _error_body(fault.status))
    if fault is not None and not fault.forward:
      if fault.kind == "stall":
        time.sleep(fault.stall_s)
      return self._reset()
    reply = self._forward(body)
    if fault is not None and fault.kind == "reset":
      return self._reset()
    if fault is not None:  # A stall.
      time.sleep(fault.stall_s)
    try:
      self._reply(*reply)
    except OSError:  # The client gave up during the stall.
      self.close_connection = True

  do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
  daemon_threads = True
  allow_reuse_address = True
  upstream_port: int
  proxy: "FaultProxy"

  def handle_error(self, request, client_address) -> None:
    pass  # A client that hangs up mid-request is no error of the proxy's.


class FaultProxy:
  """Serves `url` in a thread until `close()`; forwards to 127.0.0.1:`upstream_port`."""

  def __init__(self, upstream_port: int):
    self._server = _Server(("127.0.0.1", 0), _Handler)
    self._server.upstream_port, self._server.proxy = upstream_port, self
    self.port = self._server.server_address[1]
    self.url = f"http://127.0.0.1:{self.port}"
    self._lock = threading.Lock()
    self.rules: list[Fault] = []
    self.injected: collections.Counter = collections.Counter()
    self.log: list[Seen] = []
    self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
    self._thread.start()

  def add(self, *faults: Fault) -> "FaultProxy":
    with self._lock:
      self.rules.extend(faults)
    return self

  def clear(self) -> None:
    """Drops the rules, the counts and the log: the next requests pass untouched."""
    with self._lock:
      self.rules.clear()
      self.injected.clear()
      self.log.clear()

  def _take(self, method: str, target: str, client: str) -> Fault | None:
    with self._lock:
      fault = next((f for f in self.rules if f.takes(method, target)), None)
      if fault is not None:
        self.injected[fault.label] += 1
      self.log.append(Seen(method, target, fault.label if fault else "ok", client))
      return fault

  def faults_by_client(self) -> collections.Counter:
    """(fault label, client name without its version) → how many were injected."""
    with self._lock:
      return collections.Counter((s.outcome, s.client.split("/")[0]) for s in self.log
                                 if s.outcome != "ok")

  def close(self) -> None:
    self._server.shutdown()
    self._server.server_close()
    self._thread.join(timeout=5)

  def __enter__(self) -> "FaultProxy":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
