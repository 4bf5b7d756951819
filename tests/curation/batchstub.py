"""A stub OpenAI-compatible server on 127.0.0.1 with the Batch API beside the online
chat completions: POST /v1/files, POST/GET /v1/batches, GET /v1/batches/{id},
GET /v1/files/{id}/content. Each batch request line is answered by the same `answer(body)`
as an online call, so both paths see the same replies.

Faults, per job (by creation order, 0-based):
  fail_lines[job] = n     the first n lines go to the error file instead
  malformed[job] = n      the first n lines of the output are not JSON
  expire = {job, ...}     the job expires: half its lines answered, the rest in the errors
  hold = True             jobs stay in_progress until it is set back to False
Online calls wait `online_latency_s` before their reply (the benchmark's slow endpoint).
"""

import email.parser
import email.policy
import http.server
import json
import threading
import time
import urllib.parse


class BatchStub:

  def __init__(self, answer, online_latency_s: float = 0.0):
    self.answer = answer  # chat request body -> (status, reply body)
    self.online_latency_s = online_latency_s  # An online call's wait before its reply.
    self.files = {}       # id -> bytes
    self.batches = {}     # id -> dict
    self.created = []     # (batch id, custom ids of its input)
    self.online_calls = 0
    self.fail_lines, self.malformed, self.expire = {}, {}, set()
    self.hold = False
    self._lock = threading.Lock()
    stub = self

    class Handler(http.server.BaseHTTPRequestHandler):
      protocol_version = "HTTP/1.1"

      def log_message(self, *args):
        pass

      def _send(self, status, payload, ctype="application/json"):
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

      def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        path = urllib.parse.urlparse(self.path).path
        if path == "/v1/chat/completions":
          with stub._lock:
            stub.online_calls += 1
          time.sleep(stub.online_latency_s)
          self._send(*stub.answer(json.loads(raw)))
        elif path == "/v1/files":
          self._send(200, stub._upload(self.headers["Content-Type"], raw))
        elif path == "/v1/batches":
          self._send(200, stub._create(json.loads(raw)))
        else:
          self._send(404, {"error": {"message": path}})

      def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        parts = url.path.strip("/").split("/")
        with stub._lock:
          if url.path == "/v1/batches":
            self._send(200, {"object": "list", "data": list(stub.batches.values())})
          elif parts[:2] == ["v1", "batches"] and len(parts) == 3:
            b = stub.batches.get(parts[2])
            if b is None:
              return self._send(404, {"error": {"message": "no such batch"}})
            stub._advance(b)
            self._send(200, b)
          elif parts[:2] == ["v1", "files"] and len(parts) == 4 and parts[3] == "content":
            self._send(200, stub.files[parts[2]], "application/jsonl")
          else:
            self._send(404, {"error": {"message": url.path}})

    self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.httpd.daemon_threads = True
    self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
    self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                    daemon=True)
    self._thread.start()

  def _upload(self, ctype, raw):
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {ctype}\r\n\r\n".encode() + raw)
    fields = {p.get_param("name", header="content-disposition"): p.get_payload(decode=True)
              for p in msg.iter_parts()}
    assert fields["purpose"] == b"batch", fields.get("purpose")
    with self._lock:
      fid = f"file-{len(self.files)}"
      self.files[fid] = fields["file"]
    return {"id": fid, "object": "file", "purpose": "batch", "bytes": len(fields["file"])}

  def _create(self, req):
    assert req["endpoint"] == "/v1/chat/completions" and req["completion_window"] == "24h"
    with self._lock:
      lines = [json.loads(l) for l in self.files[req["input_file_id"]].splitlines() if l]
      bid = f"batch_{len(self.batches)}"
      self.batches[bid] = {"id": bid, "object": "batch", "status": "validating",
                           "input_file_id": req["input_file_id"], "job": len(self.created),
                           "output_file_id": None, "error_file_id": None,
                           "request_counts": {"total": len(lines), "completed": 0,
                                              "failed": 0}}
      self.created.append((bid, [l["custom_id"] for l in lines]))
    return self.batches[bid]

  def _advance(self, b):
    """validating → in_progress → terminal (unless held), writing the result files."""
    if b["status"] == "validating":
      b["status"] = "in_progress"
      return
    if b["status"] != "in_progress" or self.hold:
      return
    job = b["job"]
    lines = [json.loads(l) for l in self.files[b["input_file_id"]].splitlines() if l]
    out, err = [], []
    cut = len(lines) // 2 if job in self.expire else len(lines)
    for n, line in enumerate(lines):
      if n >= cut:
        err.append({"id": f"r{n}", "custom_id": line["custom_id"], "response": None,
                    "error": {"code": "batch_expired", "message": "expired"}})
      elif n < self.fail_lines.get(job, 0):
        err.append({"id": f"r{n}", "custom_id": line["custom_id"], "response": None,
                    "error": {"code": "server_error", "message": "failed"}})
      elif n < self.malformed.get(job, 0):
        out.append('{"id": "r%d", "custom_id": "%s", "respo' % (n, line["custom_id"]))
      else:
        status, body = self.answer(line["body"])
        out.append({"id": f"r{n}", "custom_id": line["custom_id"],
                    "response": {"status_code": status, "request_id": f"q{n}", "body": body},
                    "error": None})
    dump = lambda rows: "".join((r if isinstance(r, str) else json.dumps(r)) + "\n"
                                for r in rows).encode()
    for rows, field in ((out, "output_file_id"), (err, "error_file_id")):
      if rows:
        fid = f"file-{len(self.files)}"
        self.files[fid] = dump(rows)
        b[field] = fid
    b["status"] = "expired" if job in self.expire else "completed"
    b["request_counts"] = {"total": len(lines), "completed": len(out), "failed": len(err)}

  def close(self):
    self.httpd.shutdown()
    self.httpd.server_close()
