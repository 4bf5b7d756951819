"""A stub LLM server on 127.0.0.1 speaking the OpenAI chat-completions and Gemini
generateContent wire formats, with scripted failures (status codes, slow replies)."""

import http.server
import json
import threading
import time


def openai_body(text, prompt_tokens=11, completion_tokens=7):
  return {"id": "x", "object": "chat.completion",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                       "finish_reason": "stop"}],
          "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}}


def gemini_body(text, prompt_tokens=13, completion_tokens=5):
  return {"candidates": [{"content": {"role": "model", "parts": [{"text": text}]},
                          "finishReason": "STOP", "index": 0}],
          "usageMetadata": {"promptTokenCount": prompt_tokens,
                            "candidatesTokenCount": completion_tokens,
                            "totalTokenCount": prompt_tokens + completion_tokens}}


class StubServer:
  """`script`: queued (status, body, headers, delay_s) answers, used first come;
  when empty, `default(path, request) -> (status, body, headers, delay_s)` answers."""

  def __init__(self, default):
    self.default = default
    self.script = []
    self.requests = []  # (path, headers, json body)
    self._lock = threading.Lock()
    stub = self

    class Handler(http.server.BaseHTTPRequestHandler):
      protocol_version = "HTTP/1.1"
      disable_nagle_algorithm = True  # Headers and body go out in two writes.

      def log_message(self, *args):
        pass

      def do_POST(self):
        length = int(self.headers.get("Content-Length", 0))
        raw = self.rfile.read(length)
        try:
          body = json.loads(raw)
        except ValueError:
          body = None
        with stub._lock:
          stub.requests.append((self.path, dict(self.headers), body))
          action = stub.script.pop(0) if stub.script else None
        status, payload, headers, delay = action or stub.default(self.path, body)
        if delay:
          time.sleep(delay)
        data = payload if isinstance(payload, bytes) else (
            payload.encode() if isinstance(payload, str) else json.dumps(payload).encode())
        try:
          self.send_response(status)
          self.send_header("Content-Type", "application/json")
          self.send_header("Content-Length", str(len(data)))
          for k, v in (headers or {}).items():
            self.send_header(k, v)
          self.end_headers()
          self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
          pass  # The client gave up (timeout test).

    self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.httpd.daemon_threads = True
    self.httpd.block_on_close = False  # Don't wait for a deliberately slow reply.
    self.port = self.httpd.server_address[1]
    self.url = f"http://127.0.0.1:{self.port}"
    self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                    daemon=True)
    self._thread.start()

  def close(self):
    self.httpd.shutdown()
    self.httpd.server_close()
