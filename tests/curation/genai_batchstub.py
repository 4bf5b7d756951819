"""A stub of the Gemini Developer API on 127.0.0.1, speaking what google-genai sends for
batch prediction beside online generateContent: the resumable file upload (start, then
"upload, finalize" on the session URL), models/{m}:batchGenerateContent, batches/{id} get
and list, files/{id}:download. Each batch request line and each online call is answered by
the same `answer(request body)`, so both paths see the same replies.

Faults, per job (by creation order, 0-based), as in batchstub.py:
  fail_lines[job] = n     the first n lines come back with an error status instead
  malformed[job] = n      the first n result lines are not JSON
  expire = {job, ...}     the job expires: half its lines answered, the others absent
  hold = True             jobs stay running until it is set back to False
"""

import http.server
import json
import threading
import urllib.parse


class GenaiBatchStub:

  def __init__(self, answer):
    self.answer = answer  # generateContent request body -> (status, response body)
    self.files, self.batches = {}, {}  # "files/…" -> bytes; "batches/…" -> operation dict
    self.created = []  # (batch name, keys of its input)
    self.online_calls = 0
    self.online_bodies = []  # Every online request body, as received.
    self.fail_lines, self.malformed, self.expire = {}, {}, set()
    self.hold = False
    self._sessions = {}
    self._lock = threading.Lock()
    stub = self

    class Handler(http.server.BaseHTTPRequestHandler):
      protocol_version = "HTTP/1.1"

      def log_message(self, *args):
        pass

      def _send(self, status, payload, headers=(), ctype="application/json"):
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers:
          self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

      def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        path = urllib.parse.urlparse(self.path).path
        command = self.headers.get("X-Goog-Upload-Command", "")
        if path.endswith(":generateContent"):
          with stub._lock:
            stub.online_calls += 1
            stub.online_bodies.append(json.loads(raw))
          return self._send(*stub.answer(json.loads(raw)))
        if path.endswith("/files") and command == "start":
          meta = json.loads(raw or b"{}").get("file", {})
          with stub._lock:
            session = f"/upload-session/{len(stub._sessions)}"
            stub._sessions[session] = meta
          host = self.headers["Host"]
          return self._send(200, {}, [("X-Goog-Upload-URL", f"http://{host}{session}")])
        if path in stub._sessions and "finalize" in command:
          with stub._lock:
            name = f"files/f{len(stub.files)}"
            stub.files[name] = raw
          return self._send(200, {"file": {"name": name, "mimeType": "jsonl",
                                           "sizeBytes": str(len(raw)), "state": "ACTIVE",
                                           "displayName": stub._sessions[path].get(
                                               "displayName", "")}},
                            [("X-Goog-Upload-Status", "final")])
        if path.endswith(":batchGenerateContent"):
          model = path.split("/models/")[1].split(":")[0]
          return self._send(200, stub._create(model, json.loads(raw)["batch"]))
        self._send(404, {"error": {"code": 404, "message": path, "status": "NOT_FOUND"}})

      def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        parts = url.path.strip("/").split("/")
        with stub._lock:
          if parts[-1] == "batches":
            ops = sorted(stub.batches.values(), key=lambda b: -int(b["name"][8:]))
            return self._send(200, {"operations": ops})
          if len(parts) >= 2 and parts[-2] == "batches":
            b = stub.batches.get(f"batches/{parts[-1]}")
            if b is None:
              return self._send(404, {"error": {"code": 404, "message": "no such batch",
                                                "status": "NOT_FOUND"}})
            stub._advance(b)
            return self._send(200, b)
          if parts[-1].endswith(":download"):
            name = "files/" + parts[-1][:-len(":download")]
            return self._send(200, stub.files[name], ctype="application/octet-stream")
        self._send(404, {"error": {"code": 404, "message": url.path, "status": "NOT_FOUND"}})

    self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.httpd.daemon_threads = True
    self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
    self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                    daemon=True)
    self._thread.start()

  def _lines(self, b):
    return [json.loads(l) for l in self.files[b["_input"]].splitlines() if l]

  def _create(self, model, batch):
    with self._lock:
      name = f"batches/{len(self.batches)}"
      op = {"name": name, "_input": batch["inputConfig"]["fileName"], "_job": len(self.created),
            "metadata": {"@type": "type.googleapis.com/google.ai.generativelanguage.v1beta."
                                  "GenerateContentBatch",
                         "name": name, "model": f"models/{model}",
                         "displayName": batch.get("displayName", ""),
                         "state": "BATCH_STATE_PENDING"}}
      self.batches[name] = op
      self.created.append((name, [l["key"] for l in self._lines(op)]))
      self.requests = getattr(self, "requests", []) + [l["request"] for l in self._lines(op)]
    return op

  def _advance(self, b):
    """PENDING → RUNNING → SUCCEEDED or EXPIRED (unless held), writing the responses file."""
    meta = b["metadata"]
    if meta["state"] == "BATCH_STATE_PENDING":
      meta["state"] = "BATCH_STATE_RUNNING"
      return
    if meta["state"] != "BATCH_STATE_RUNNING" or self.hold:
      return
    job, lines = b["_job"], self._lines(b)
    cut = len(lines) // 2 if job in self.expire else len(lines)
    out = []
    for n, line in enumerate(lines[:cut]):
      if n < self.fail_lines.get(job, 0):
        out.append({"key": line["key"], "error": {"code": 13, "message": "internal"}})
      elif n < self.malformed.get(job, 0):
        out.append('{"key": "%s", "respo' % line["key"])
      else:
        status, body = self.answer(line["request"])
        out.append({"key": line["key"], "response": body} if status == 200 else
                   {"key": line["key"], "error": {"code": status, "message": "rejected"}})
    name = f"files/r{len(self.files)}"
    self.files[name] = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n"
                               for r in out).encode()
    meta["output"] = {"responsesFile": name}
    meta["state"] = "BATCH_STATE_EXPIRED" if job in self.expire else "BATCH_STATE_SUCCEEDED"

  def close(self):
    self.httpd.shutdown()
    self.httpd.server_close()
