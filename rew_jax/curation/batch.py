"""Curation through a service's batch path (`curation.mode_of_calls = "batch"`): the OpenAI
Batch API (backend `openai`), or Gemini batch prediction through google-genai (backend
`gemini`, `rew_jax.curation.batch_gemini`).

    report = batch.curate(config, workdir)   # what run.curate does in batch mode

Per candidates shard, in rounds: every record is curated by the same `core.Curator` as the
online path, against a backend that answers from the replies batch jobs returned
(`ReplayBackend`). A call whose reply is not there yet stops that record's round
(`Pending`); the round's pending prompts (the same request bodies the online backend would
POST) go into one batch job: a request JSONL in the workdir, uploaded, then the job created.
The next round, after the job ends, replays each record from the start, so parse re-asks
and multi_call's follow-up calls become later rounds, and prompts, schemas, validation and
name resolution are the online path's. The finished shard goes through the shard engine's
journal, dead letters and commit (`rew_jax.curation.shards`): the records are the online
path's, byte for byte.

Workdir state, W/curation/batch/<candidates shard, no suffix>.json (written atomically):
the jobs of the shard, each with its input file, batch id and custom ids, journaled
before the job is polled and, with its input file id, before it is created. A driver
killed at any point resumes polling the jobs it submitted; a job whose creation may have
gone out unrecorded is looked up by its input file among the service's batches before a
new one is created. So a shard's requests are never submitted twice. Each job's output and
error files are saved beside it, so a rerun needs no download.

A request that failed (error file, non-2xx transient status), expired, or came back as an
unreadable line is re-submitted in the next round's job, up to `curation.max_attempts`
submissions; then the record is `FAILED` as after the online path's retries (left for a
rerun). A 4xx reply is rejected as online.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import requests
import tenacity

from rew_jax import storage
from rew_jax.curation import core
from rew_jax.curation import section
from rew_jax.curation import shards
from rew_jax.curation.backends import base
from rew_jax.errors import ConfigError

BATCH_DIR = "batch"
TERMINAL = ("completed", "failed", "expired", "cancelled")
ENDPOINT = "/v1/chat/completions"
MODES_OF_CALLS = ("online", "batch")


class Pending(Exception):
  """The reply to this prompt is not known yet: it goes into the next batch job."""

  def __init__(self, key: str, prompt):
    super().__init__(key)
    self.key, self.prompt = key, prompt


def prompt_key(index: int, prompt) -> str:
  """A prompt's identity within a shard: record, kind and parse re-ask (the text of each is
  a pure function of these)."""
  return f"{index}-{prompt.kind}-{prompt.attempt}"


def custom_id(shard: int, key: str, submission: int) -> str:
  """Unique per record, prompt and submission (a re-submission gets submission + 1)."""
  return f"s{shard}-{key}-a{submission}"


def key_of(cid: str) -> str:
  return cid.split("-", 1)[1].rsplit("-a", 1)[0]


# ------------------------------------------------------------------------- replies


def reply_from_body(status: int, body) -> base.Reply:
  """A batch output line's response, read as the online backend reads an HTTP reply;
  raises TransientError / RequestRejected / BackendError like it."""
  text = body if isinstance(body, str) else json.dumps(body)
  base.classify_status(status, text, None, "openai")
  try:
    choice = body["choices"][0]
    content = choice["message"]["content"]
  except (KeyError, IndexError, TypeError):
    raise base.RequestRejected("bad_reply", f"HTTP {status} body is not a chat completion: "
                               f"{text[:120]!r}") from None
  if content is None:
    content = choice["message"].get("refusal") or ""
  usage = body.get("usage") or {}
  num = lambda v: v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 0
  return base.Reply(content if isinstance(content, str) else str(content),
                    input_tokens=num(usage.get("prompt_tokens")),
                    output_tokens=num(usage.get("completion_tokens")))


def read_results(text: str) -> dict[str, object]:
  """custom id → a Reply, a RequestRejected, or None (to re-submit), from an output or
  error file. Unreadable lines are skipped: their requests are re-submitted."""
  out: dict[str, object] = {}
  for line in text.splitlines():
    try:
      row = json.loads(line)
      cid = row["custom_id"]
      if not isinstance(cid, str):
        continue
    except (ValueError, KeyError, TypeError):
      continue
    resp = row.get("response") or {}
    if row.get("error") or not isinstance(resp, dict) or "status_code" not in resp:
      out[cid] = None
      continue
    try:
      out[cid] = reply_from_body(int(resp["status_code"]), resp.get("body"))
    except base.TransientError:
      out[cid] = None
    except base.RequestRejected as e:
      out[cid] = e
  return out


class ReplayBackend(base.Backend):
  """Answers from the replies batch jobs returned; raises `Pending` for the others and
  TransientError for prompts submitted `max_attempts` times without a reply."""

  def __init__(self, index: int, replies: dict, exhausted: set, name: str = "openai"):
    self.index, self.replies, self.exhausted = index, replies, exhausted
    self.name = name

  def generate(self, prompt, timeout_s):
    key = prompt_key(self.index, prompt)
    got = self.replies.get(key)
    if isinstance(got, base.Reply):
      return got
    if isinstance(got, base.RequestRejected):
      raise got
    if key in self.exhausted:
      raise base.TransientError("batch", f"no reply after every submission of {key}")
    raise Pending(key, prompt)


# ------------------------------------------------------------------------- the service


@dataclasses.dataclass
class Client:
  """The OpenAI Batch API at `base_url` (…/v1). Transient HTTP faults are retried.

  A batch service is what this class provides: `line(custom id, request body)` and
  `read_results(file text)` for its file formats; `upload`, `create`, `get` (a job state
  with the OpenAI names: status in TERMINAL when done, output_file_id, error_file_id,
  request_counts), `find` (the job made from a journaled job's input) and `content` (a file's text).
  """
  base_url: str
  headers: dict
  timeout_s: float = 60.0
  max_attempts: int = 6
  backoff_initial_s: float = 1.0
  backoff_max_s: float = 60.0

  def _request(self, method: str, path: str, **kw) -> requests.Response:
    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(self.max_attempts),
        wait=tenacity.wait_exponential_jitter(initial=self.backoff_initial_s,
                                              max=self.backoff_max_s),
        retry=tenacity.retry_if_exception_type(base.TransientError), reraise=True)
    for attempt in retrying:
      with attempt:
        try:
          resp = requests.request(method, self.base_url.rstrip("/") + path,
                                  headers=self.headers, timeout=self.timeout_s, **kw)
        except requests.Timeout as e:
          raise base.TransientError("timeout", f"{method} {path}") from e
        except requests.ConnectionError as e:
          raise base.TransientError("connection", f"{method} {path}: {type(e).__name__}") from e
        base.classify_status(resp.status_code, resp.text,
                             base.parse_retry_after(resp.headers.get("Retry-After")), "openai")
    return resp

  def upload(self, name: str, data: bytes) -> str:
    resp = self._request("POST", "/files", data={"purpose": "batch"},
                         files={"file": (name, data, "application/jsonl")})
    return resp.json()["id"]

  def create(self, input_file_id: str, window: str, metadata: dict) -> dict:
    return self._request("POST", "/batches", json={
        "input_file_id": input_file_id, "endpoint": ENDPOINT, "completion_window": window,
        "metadata": metadata}).json()

  def get(self, batch_id: str) -> dict:
    return self._request("GET", f"/batches/{batch_id}").json()

  def find(self, job: dict, pages: int = 20) -> dict | None:
    """The batch made from the journaled job's input file, if the service lists one
    (newest first)."""
    input_file_id = job["input_file_id"]
    params = {"limit": 100}
    for _ in range(pages):
      try:
        page = self._request("GET", "/batches", params=params).json()
        data = page.get("data", [])
      except (base.RequestRejected, ValueError, AttributeError):
        return None
      found = next((b for b in data if b.get("input_file_id") == input_file_id), None)
      if found is not None or not page.get("has_more") or not data:
        return found
      params["after"] = data[-1]["id"]
    return None

  def content(self, file_id: str) -> str:
    return self._request("GET", f"/files/{file_id}/content").text

  @staticmethod
  def line(cid: str, body: dict) -> str:
    return json.dumps({"custom_id": cid, "method": "POST", "url": ENDPOINT, "body": body},
                      ensure_ascii=False) + "\n"

  read_results = staticmethod(read_results)


def client_from_config(c, backend):
  """The batch service of the backend: the OpenAI Batch API, or Gemini's."""
  if backend.name == "gemini":
    from rew_jax.curation import batch_gemini  # pylint: disable=g-import-not-at-top
    return batch_gemini.Service(backend, c)
  headers = {}
  key = base.api_key(backend.cfg["api_key_env"], "openai", required=False)
  if key:
    headers["Authorization"] = f"Bearer {key}"
  return Client(backend.cfg["base_url"], headers, timeout_s=c.timeout_s,
                max_attempts=c.max_attempts, backoff_initial_s=c.backoff_initial_s,
                backoff_max_s=c.backoff_max_s)


def wait_for(client: Client, batch_id: str, initial_s: float, max_s: float,
             sleep=time.sleep) -> dict:
  """Polls the job with exponential backoff until it is terminal; → its last state."""
  retrying = tenacity.Retrying(
      retry=tenacity.retry_if_result(lambda b: b.get("status") not in TERMINAL),
      wait=tenacity.wait_exponential(multiplier=initial_s, min=initial_s, max=max_s),
      stop=tenacity.stop_never, sleep=sleep)
  return retrying(client.get, batch_id)


# ------------------------------------------------------------------------- one shard


def _now() -> str:
  return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class ShardJobs:
  """A shard's jobs and the replies they returned, persisted in the workdir."""

  def __init__(self, directory: str, shard_name: str):
    self.dir = directory
    self.stem = os.path.splitext(shard_name)[0]
    self.path = os.path.join(directory, f"{self.stem}.json")
    self.jobs = (json.loads(storage.read_text(self.path))["jobs"]
                 if storage.exists(self.path) else [])

  def save(self) -> None:
    storage.write_text(self.path, json.dumps({"jobs": self.jobs}, indent=1))

  def file(self, n: int, what: str) -> str:
    return os.path.join(self.dir, f"{self.stem}-job{n}.{what}.jsonl")

  def replies(self, client) -> dict:
    """prompt key → Reply or RequestRejected, from every finished job's saved files."""
    out = {}
    for n, job in enumerate(self.jobs):
      for what in ("output", "errors"):
        if job.get("status") in TERMINAL and storage.exists(self.file(n, what)):
          for cid, got in client.read_results(storage.read_text(self.file(n, what))).items():
            if got is not None:
              out.setdefault(key_of(cid), got)
    return out

  def submissions(self, since: int = 0) -> dict[str, int]:
    """prompt key → how many jobs (from job `since` on) it was sent in."""
    count: dict[str, int] = {}
    for job in self.jobs[since:]:
      for cid in job["custom_ids"]:
        count[key_of(cid)] = count.get(key_of(cid), 0) + 1
    return count


def request_files(shard: int, keys, bodies: dict, counts: dict, max_requests: int,
                  max_bytes: int, line=Client.line) -> list[tuple[list[str], list[str]]]:
  """The pending prompts as request lines, in record order, cut into files of at most
  `max_requests` lines and `max_bytes` bytes (the service's limits); → [(custom ids,
  lines)]."""
  files: list[tuple[list[str], list[str]]] = []
  size = 0
  for key in sorted(keys, key=lambda k: [int(p) if p.isdigit() else p for p in k.split("-")]):
    cid = custom_id(shard, key, counts.get(key, 0))
    text = line(cid, bodies[key])
    n = len(text.encode())
    if not files or len(files[-1][0]) >= max_requests or size + n > max_bytes:
      files.append(([], []))
      size = 0
    files[-1][0].append(cid)
    files[-1][1].append(text)
    size += n
  return files


def submit(jobs: ShardJobs, client: Client, cids: list[str], lines: list[str],
           window: str) -> None:
  """One job: input file written and uploaded, then the job created, each step journaled
  before the next."""
  n = len(jobs.jobs)
  path = jobs.file(n, "input")
  storage.write_text(path, "".join(lines))
  job = {"custom_ids": cids, "input": os.path.basename(path), "status": "uploading"}
  jobs.jobs.append(job)
  jobs.save()
  job["input_file_id"] = client.upload(os.path.basename(path), storage.read_bytes(path))
  job["status"] = "creating"
  jobs.save()
  _create(jobs, client, job, window)


def _create(jobs: ShardJobs, client: Client, job: dict, window: str) -> None:
  made = client.create(job["input_file_id"], window, {"rew_jax_input": job["input"]})
  job.update(batch_id=made["id"], status=made.get("status", "validating"),
             submitted_at=_now())
  jobs.save()


def finish_jobs(jobs: ShardJobs, client: Client, c, window: str, sleep=time.sleep) -> None:
  """Brings every journaled job to a terminal state and saves its files: a job a killed
  driver left uploading is re-uploaded, one left creating is looked up before creating."""
  for n, job in enumerate(jobs.jobs):
    if job["status"] in TERMINAL:
      continue
    if job["status"] == "uploading":
      job["input_file_id"] = client.upload(job["input"],
                                           storage.read_bytes(jobs.file(n, "input")))
      job["status"] = "creating"
      jobs.save()
    if job["status"] == "creating":
      found = client.find(job)
      if found is not None:
        job.update(batch_id=found["id"], status=found.get("status", "validating"),
                   submitted_at=_now())
        jobs.save()
      else:
        _create(jobs, client, job, window)
    state = wait_for(client, job["batch_id"], c.batch_poll_initial_s, c.batch_poll_max_s,
                     sleep)
    for what, field in (("output", "output_file_id"), ("errors", "error_file_id")):
      if state.get(field):
        storage.write_text(jobs.file(n, what), client.content(state[field]))
    job.update(status=state["status"], completed_at=_now(),
               request_counts=state.get("request_counts") or {})
    if state.get("errors"):  # Why a job failed as a whole (validation): for the report.
      job["errors"] = state["errors"]
    jobs.save()


def curate_round(items, screened: dict, curator: core.Curator, replies: dict,
                 exhausted: set, backend) -> tuple[dict, dict, dict]:
  """Replays every item against the replies; → (outcomes of finished items, pending prompt
  key → item index, prompt key → request body)."""
  finished, pending, bodies = {}, {}, {}
  for item in items:
    image, mime = screened[item.index]
    curator.backend = ReplayBackend(item.index, replies, exhausted, backend.name)
    try:
      finished[item.index] = curator.curate(item, image, mime)
    except Pending as p:
      pending[p.key] = item.index
      bodies[p.key] = backend.payload(p.prompt)
    except base.TransientError as e:
      finished[item.index] = shards.failed_outcome(item, e)
  return finished, pending, bodies


def curate_shard(plan_: shards.Plan, i: int, curator: core.Curator, client: Client, backend,
                 *, sleep=time.sleep) -> dict:
  """Shard i through batch jobs, then its journal, dead letters and commit as online."""
  c = plan_.curation
  window = c.batch_completion_window
  items = plan_.items(i)
  journal_path = plan_.journal_path(i)
  done = shards.read_journal(journal_path)
  todo, screened = [], {}
  for item in shards.journal_todo(journal_path, done, items):
    image, mime, left_out = shards.screen(item, plan_.image_root, plan_.dedup)
    if left_out is not None:
      done[item.index] = left_out
    else:
      todo.append(item)
      screened[item.index] = (image, mime)
  jobs = ShardJobs(os.path.join(plan_.paths["curation"], BATCH_DIR),
                   os.path.basename(plan_.shards[i]))
  failed: dict[int, core.Outcome] = {}
  # A rerun gives the requests of earlier runs max_attempts more submissions, as online
  # (the jobs a killed driver left unfinished count as this run's).
  since = next((n for n, j in enumerate(jobs.jobs) if j["status"] not in TERMINAL),
               len(jobs.jobs))
  while True:
    finish_jobs(jobs, client, c, window, sleep)
    counts = jobs.submissions(since)
    exhausted = {k for k, n in counts.items() if n >= c.max_attempts}
    finished, pending, bodies = curate_round(todo, screened, curator, jobs.replies(client),
                                             exhausted, backend)
    if not pending:
      break
    for cids, lines in request_files(i, pending, bodies, jobs.submissions(),
                                     c.batch_max_requests, c.batch_max_bytes, client.line):
      submit(jobs, client, cids, lines, window)
  for index, out in finished.items():
    (failed if out.status == shards.FAILED else done)[index] = out
  shards.write_journal(journal_path, items, done)
  letters = shards.dead_letter_lines(items, {**done, **failed})
  storage.write_text(plan_.dead_letter_path(i),
                     "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in letters))
  if not failed:
    shards.commit_shard(plan_.out_path(i), items, done, plan_.image_root, backend.name)
  return {"name": plan_.names[i], "records": len(items), "jobs": len(jobs.jobs),
          "failed": len(failed)}


# ------------------------------------------------------------------------- the run


def check(config) -> None:
  c = config.curation
  if c.mode_of_calls not in MODES_OF_CALLS:
    raise ConfigError(f"curation.mode_of_calls {c.mode_of_calls!r} is not one of "
                      f"{MODES_OF_CALLS}")
  if c.mode_of_calls == "batch" and c.backend not in ("openai", "gemini"):
    raise ConfigError(f"curation.mode_of_calls 'batch' works with the backends 'openai' "
                      f"(the OpenAI Batch API) and 'gemini' (Gemini batch prediction), not "
                      f"{c.backend!r}")


def batch_prices(c) -> tuple[float, float]:
  """USD per million tokens in batch mode: the section's, else half the online price."""
  pin = c.batch_price_per_mtok_in
  pout = c.batch_price_per_mtok_out
  return (pin if pin >= 0 else c.price_per_mtok_in / 2,
          pout if pout >= 0 else c.price_per_mtok_out / 2)


def timeline(plan_: shards.Plan) -> list[dict]:
  """Every job of the run: shard, batch id, status, requests, submitted/completed times."""
  directory = os.path.join(plan_.paths["curation"], BATCH_DIR)
  rows = []
  for shard in plan_.shards:
    jobs = ShardJobs(directory, os.path.basename(shard))
    for n, job in enumerate(jobs.jobs):
      rows.append({"shard": os.path.basename(shard), "job": n,
                   "batch_id": job.get("batch_id", ""), "status": job["status"],
                   "requests": len(job["custom_ids"]),
                   "request_counts": job.get("request_counts", {}),
                   "submitted_at": job.get("submitted_at", ""),
                   "completed_at": job.get("completed_at", "")})
  return rows


def batch_figures(plan_: shards.Plan, usage: dict) -> dict:
  """The report's `batch` block: tokens, cost at the batch and at the online price, jobs."""
  c = plan_.curation
  pin, pout = batch_prices(c)
  tin, tout = usage["input_tokens"], usage["output_tokens"]
  jobs = timeline(plan_)
  return {"mode_of_calls": "batch", "input_tokens": tin, "output_tokens": tout,
          "price_per_mtok_in": pin, "price_per_mtok_out": pout,
          "cost_usd_batch": round((tin * pin + tout * pout) / 1e6, 4),
          "cost_usd_online": round((tin * c.price_per_mtok_in +
                                    tout * c.price_per_mtok_out) / 1e6, 4),
          "jobs": len(jobs),
          "resubmitted_requests": _resubmitted(plan_),
          "timeline": jobs}


def _resubmitted(plan_: shards.Plan) -> int:
  directory = os.path.join(plan_.paths["curation"], BATCH_DIR)
  return sum(sum(n - 1 for n in ShardJobs(directory, os.path.basename(s)).submissions().values())
             for s in plan_.shards)


def curate(config, workdir: str, *, restart: bool = False, backend=None,
           verbose: bool = True, sleep=time.sleep) -> dict:
  """Runs (or resumes) the curation through batch jobs; → the report (with `batch`)."""
  from rew_jax.curation import report as report_lib  # pylint: disable=g-import-not-at-top
  check(config)
  c = config.curation
  plan_ = shards.plan(config, workdir, restart)
  batch_dir = os.path.join(plan_.paths["curation"], BATCH_DIR)
  if restart:
    storage.rmtree(batch_dir)
  storage.makedirs(batch_dir)
  if backend is None:
    backend = section.backend_from_config(config, plan_.paths)
  start = time.time()
  try:
    client = client_from_config(c, backend)
    todo = plan_.todo()
    if todo:
      # No sleeping between a Curator's retries: a retry here is a later job, not a call.
      curator = core.Curator(backend, shards.open_kb(plan_), core.Settings.from_config(c),
                             sleep=lambda _: None)
      for i in todo:
        result = curate_shard(plan_, i, curator, client, backend, sleep=sleep)
        if verbose:
          print(f"curate (batch): {result['name']}: {result['records']} records, "
                f"{result['jobs']} jobs, {result['failed']} failed", flush=True)
  finally:
    backend.close()
  shards.write_manifest(plan_)
  result = shards.report(plan_, seconds=time.time() - start)
  result["batch"] = batch_figures(plan_, result["usage"])
  report_lib.add_batch(result, plan_.paths["curation"])
  return result

