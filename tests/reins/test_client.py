"""reins.client and `reins submit`/`reins jobs` against the real app served over HTTP on loopback.

The app runs in uvicorn in a thread, with a private Redis and the mock worker, so server-sent events, redirects and
retries go over real sockets. The mock worker serves only tiny-wan: jobs for tiny-wan-i2v stay queued, and tests
that need exact progress drive those jobs through the job store themselves.
"""

from __future__ import annotations

import io
import json
import math
import os
import queue
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from redis import Redis

from app.jobs import JobStore
from app.protocol import DeletedJob, Job, JobList
from reins.client import ReinsAPIError, ReinsClient, ReinsConnectionError, WaitTimeout, parse_retry_after
from reins.video import probe_mp4
from tests.conftest import TENANT_KEYS, WorkerProcess, settings_from

ALPHA_KEY = TENANT_KEYS["alpha"]


# Servers: the app in uvicorn, and a stand-in for the storage host of presigned URLs.


@contextmanager
def serve_in_thread(app) -> Iterator[str]:
    """Serve the ASGI app with uvicorn on a free loopback port; yield its base URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_config=None, log_level="warning", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start; see the log above")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


class RedirectingStorage:
    """The app's storage, except that presigned URLs point at `redirect_base` while it is set.

    While it is None, `presigned_url` returns None and the app streams videos itself.
    """

    def __init__(self, inner) -> None:
        self.inner = inner
        self.redirect_base: str | None = None

    def presigned_url(self, key: str, expires_seconds: int) -> str | None:
        if self.redirect_base is None:
            return None
        return f"{self.redirect_base}/{key}?X-Signature=test-signature&X-Expires={expires_seconds}"

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


@dataclass
class RecordingServer:
    """An HTTP server that serves files from `root` and records the path and headers of every request."""

    url: str
    root: Path
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)


@pytest.fixture(scope="module")
def env(service_env):
    return {**service_env, "REINS_KEY_PREFIX": "client-" + uuid.uuid4().hex[:8]}


@pytest.fixture(scope="module")
def recorder(env) -> Iterator[RecordingServer]:
    recording = RecordingServer(url="", root=Path(env["REINS_STORAGE_DIR"]))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            recording.requests.append((self.path, dict(self.headers.items())))
            path = recording.root / self.path.split("?")[0].lstrip("/")
            if not path.is_file():
                self.send_error(404)
                return
            data = path.read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "video/mp4")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    recording.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield recording
    server.shutdown()
    server.server_close()


@dataclass
class Api:
    url: str
    storage: RedirectingStorage


@pytest.fixture(scope="module")
def api(env) -> Iterator[Api]:
    from app.main import create_app

    settings = settings_from(env).model_copy(update={"events_poll_seconds": 0.02, "content_delivery": "redirect"})
    app = create_app(settings)
    storage = RedirectingStorage(app.state.storage)
    app.state.storage = storage
    with serve_in_thread(app) as url:
        yield Api(url, storage)


@pytest.fixture(scope="module")
def worker(env, tmp_path_factory):
    process = WorkerProcess({**env, "REINS_WORKER_MODELS": '["tiny-wan"]'},
                            tmp_path_factory.mktemp("logs") / "worker.log", mock=True)
    process.wait_until_listening(Redis.from_url(env["REINS_REDIS_URL"]))
    yield process
    process.stop()


@pytest.fixture(scope="module")
def job_store(env) -> JobStore:
    return JobStore(Redis.from_url(env["REINS_REDIS_URL"]), env["REINS_KEY_PREFIX"],
                    int(env["REINS_JOB_TTL_SECONDS"]))


# A transport that forwards to the real server and lets a test replace or break responses.


@dataclass
class SentRequest:
    method: str
    path: str
    headers: httpx.Headers
    at: float


Rule = Callable[[httpx.Request, httpx.BaseTransport], "httpx.Response | None"]


class ScriptedTransport(httpx.BaseTransport):
    """Records every request, then applies the first rule that returns a response (or raises); otherwise forwards
    the request over HTTP."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.sent: list[SentRequest] = []
        self.rules: list[Rule] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(SentRequest(request.method, request.url.path, request.headers.copy(), time.monotonic()))
        for rule in self.rules:
            response = rule(request, self.inner)
            if response is not None:
                return response
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()

    def requests_to(self, method: str, path: str) -> list[SentRequest]:
        return [sent for sent in self.sent if sent.method == method and sent.path == path]


def error_response(status: int, code: str, retry_after: str | None) -> httpx.Response:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return httpx.Response(status, headers=headers, json={"error": {"code": code, "message": code, "field": None}})


def fail_generate(times: int, status: int, code: str, retry_after: str | None) -> Rule:
    """Return an error response to the next `times` POST /v1/generate requests, without reaching the server."""
    remaining = [times]

    def rule(request: httpx.Request, inner: httpx.BaseTransport) -> httpx.Response | None:
        if request.url.path == "/v1/generate" and remaining[0] > 0:
            remaining[0] -= 1
            return error_response(status, code, retry_after)
        return None

    return rule


def lose_first_generate_response() -> Rule:
    """Let the next POST /v1/generate reach the server, then drop its response as a reset connection would."""
    lost = []

    def rule(request: httpx.Request, inner: httpx.BaseTransport) -> httpx.Response | None:
        if request.url.path != "/v1/generate" or lost:
            return None
        response = inner.handle_request(request)
        response.read()
        response.close()
        assert response.status_code == 202, response.text
        lost.append(response.status_code)
        raise httpx.ReadError("connection reset by the test after the server responded", request=request)

    return rule


class CutAfterFirstChunk(httpx.SyncByteStream):
    def __init__(self, stream: httpx.SyncByteStream) -> None:
        self.stream = stream

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.stream:
            yield chunk
            raise httpx.ReadError("event stream cut by the test")

    def close(self) -> None:
        self.stream.close()


def cut_event_streams(request: httpx.Request, inner: httpx.BaseTransport) -> httpx.Response | None:
    if not request.url.path.endswith("/events"):
        return None
    response = inner.handle_request(request)
    return httpx.Response(response.status_code, headers=response.headers, stream=CutAfterFirstChunk(response.stream))


@pytest.fixture
def transport() -> ScriptedTransport:
    return ScriptedTransport()


@pytest.fixture
def client(api, transport) -> Iterator[ReinsClient]:
    with ReinsClient(api.url, ALPHA_KEY, transport=transport) as reins_client:
        yield reins_client


def png_bytes(width: int = 40, height: int = 24) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def submit_parked(client: ReinsClient, prompt: str = "a red ball") -> Job:
    """Submit an image-to-video job, which no worker serves, so it stays queued."""
    return client.submit("tiny-wan-i2v", prompt, image=png_bytes())


def wait_in_thread(client: ReinsClient, job_id: str, **options) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["job"] = client.wait(job_id, **options)
        except Exception as error:  # handed to the test thread, which asserts on it
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


# Submit, wait, download.


def test_round_trip_writes_requested_frames(client, worker, tmp_path):
    job = client.submit("tiny-wan", "a red car", num_frames=13, num_inference_steps=8, seed=3)
    assert isinstance(job, Job)
    assert job.status == "queued"
    assert job.request.num_frames == 13

    reported: list[Job] = []
    final = client.wait(job.id, timeout=60, on_progress=reported.append)
    assert final.status == "completed"
    assert final.result is not None
    progress = [update.progress for update in reported]
    assert progress == sorted(progress)
    assert progress[-1] == 1.0
    assert reported[-1].status == "completed"

    path = client.download(job.id, tmp_path / "clip.mp4")
    assert path == tmp_path / "clip.mp4"
    assert probe_mp4(path)["frames"] == 13
    assert path.stat().st_size == final.result.bytes
    assert list(tmp_path.iterdir()) == [path]


def test_wait_reports_each_progress_change(client, job_store):
    job = submit_parked(client)
    reported: queue.Queue = queue.Queue()
    thread, outcome = wait_in_thread(client, job.id, timeout=30,
                                     on_progress=lambda update: reported.put((update.status, update.progress)))

    assert reported.get(timeout=10) == ("queued", 0.0)
    job_store.start(job.id)
    assert reported.get(timeout=10) == ("in_progress", 0.0)
    for progress in (0.25, 0.5, 0.75):
        job_store.update(job.id, progress=progress)
        assert reported.get(timeout=10) == ("in_progress", progress)
    job_store.finish(job.id, "alpha", "completed", progress=1.0)
    assert reported.get(timeout=10) == ("completed", 1.0)

    thread.join(10)
    assert outcome["job"].status == "completed"
    assert reported.empty()


def test_wait_polls_when_stream_breaks(client, transport, job_store):
    job = submit_parked(client)
    job_store.start(job.id)  # in_progress: the server sends X-Poll-Interval-Ms 500
    first_poll_answered = threading.Event()

    def note_first_poll(request: httpx.Request, inner: httpx.BaseTransport) -> httpx.Response | None:
        if request.url.path != f"/v1/jobs/{job.id}" or first_poll_answered.is_set():
            return None
        response = inner.handle_request(request)
        content = response.read()
        first_poll_answered.set()
        return httpx.Response(response.status_code, headers=response.headers, content=content)

    transport.rules += [cut_event_streams, note_first_poll]
    reported: list[tuple[str, float]] = []
    thread, outcome = wait_in_thread(client, job.id, timeout=30,
                                     on_progress=lambda update: reported.append((update.status, update.progress)))

    assert first_poll_answered.wait(10)
    job_store.finish(job.id, "alpha", "completed", progress=1.0)
    thread.join(10)

    assert outcome["job"].status == "completed"
    assert reported[0] == ("in_progress", 0.0)
    assert reported[-1] == ("completed", 1.0)
    assert len(transport.requests_to("GET", f"/v1/jobs/{job.id}/events")) == 1
    polls = transport.requests_to("GET", f"/v1/jobs/{job.id}")
    assert len(polls) >= 2
    assert polls[1].at - polls[0].at >= 0.45


def test_wait_times_out_with_last_state(client):
    job = submit_parked(client)
    started = time.monotonic()
    with pytest.raises(WaitTimeout) as raised:
        client.wait(job.id, timeout=0.5)
    assert time.monotonic() - started < 5
    assert raised.value.job is not None
    assert raised.value.job.status == "queued"
    assert job.id in str(raised.value)


# Retries.


def test_lost_response_reuses_idempotency_key(client, transport):
    prompt = f"lost response {uuid.uuid4().hex}"
    transport.rules.append(lose_first_generate_response())
    job = client.submit("tiny-wan-i2v", prompt, image=png_bytes())

    posts = transport.requests_to("POST", "/v1/generate")
    assert len(posts) == 2
    key = posts[0].headers.get("idempotency-key")
    assert key
    assert posts[1].headers.get("idempotency-key") == key
    matching = [listed.id for listed in client.iter_jobs() if listed.request.prompt == prompt]
    assert matching == [job.id]


def test_given_idempotency_key_returns_first_job(client, transport):
    key = f"test-{uuid.uuid4().hex}"
    first = client.submit("tiny-wan-i2v", "a blue ball", image=png_bytes(), idempotency_key=key)
    second = client.submit("tiny-wan-i2v", "a blue ball", image=png_bytes(), idempotency_key=key)
    assert second.id == first.id
    assert [sent.headers["idempotency-key"] for sent in transport.requests_to("POST", "/v1/generate")] == [key, key]


def test_429_and_503_wait_for_retry_after(client, transport):
    transport.rules.append(fail_generate(1, 429, "rate_limited", "1"))
    transport.rules.append(fail_generate(1, 503, "service_unavailable", "0"))
    job = submit_parked(client)

    posts = transport.requests_to("POST", "/v1/generate")
    assert len(posts) == 3
    assert posts[1].at - posts[0].at >= 1.0
    assert posts[2].at - posts[1].at < 1.0
    assert client.get(job.id).id == job.id


def test_retries_are_bounded(api, transport):
    transport.rules.append(fail_generate(100, 503, "service_unavailable", "0"))
    with ReinsClient(api.url, ALPHA_KEY, max_retries=2, transport=transport) as client:
        with pytest.raises(ReinsAPIError) as raised:
            client.submit("tiny-wan", "a red car")
    assert raised.value.status == 503
    assert raised.value.code == "service_unavailable"
    assert raised.value.retry_after == 0.0
    assert len(transport.requests_to("POST", "/v1/generate")) == 3


def test_long_retry_after_is_raised_at_once(api, transport):
    transport.rules.append(fail_generate(100, 503, "model_unavailable", "3600"))
    with ReinsClient(api.url, ALPHA_KEY, max_retry_wait=5, transport=transport) as client:
        with pytest.raises(ReinsAPIError) as raised:
            client.submit("tiny-wan", "a red car")
    assert raised.value.retry_after == 3600.0
    assert len(transport.requests_to("POST", "/v1/generate")) == 1


def test_unreachable_server_raises_connection_error():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens on the port once the socket is closed.
    with ReinsClient(f"http://127.0.0.1:{port}", ALPHA_KEY, max_retries=1) as client:
        with pytest.raises(ReinsConnectionError) as raised:
            client.get("job_missing")
    assert "2 attempt(s)" in str(raised.value)
    assert ALPHA_KEY not in str(raised.value)


@pytest.mark.parametrize(("header", "seconds"), [("3", 3.0), ("0", 0.0), ("-2", 0.0), ("soon", None), (None, None)])
def test_parse_retry_after(header, seconds):
    assert parse_retry_after(header) == seconds


def test_parse_retry_after_http_date():
    from email.utils import formatdate

    seconds = parse_retry_after(formatdate(time.time() + 30, usegmt=True))
    assert 28 <= seconds <= 31


# Errors.


def test_invalid_field_raises_api_error(client, transport):
    with pytest.raises(ReinsAPIError) as raised:
        client.submit("tiny-wan", "a red car", num_frames=4)
    assert raised.value.status == 422
    assert raised.value.code == "invalid_request"
    assert raised.value.field == "num_frames"
    assert "num_frames" in raised.value.message
    assert ALPHA_KEY not in str(raised.value)
    assert len(transport.requests_to("POST", "/v1/generate")) == 1

    with pytest.raises(ReinsAPIError) as unknown:
        client.submit("tiny-wan", "a red car", num_frame=9)
    assert unknown.value.field == "num_frame"


def test_wrong_key_raises_401(api):
    with ReinsClient(api.url, "key-wrong-0123456789") as client:
        with pytest.raises(ReinsAPIError) as raised:
            client.list()
    assert raised.value.status == 401
    assert raised.value.code == "unauthorized"
    assert "key-wrong" not in str(raised.value)


def test_api_key_from_environment(api, monkeypatch):
    monkeypatch.setenv("REINS_API_KEY", ALPHA_KEY)
    with ReinsClient(api.url) as client:
        assert isinstance(client.list(limit=1), JobList)
        assert ALPHA_KEY not in repr(client)
    monkeypatch.delenv("REINS_API_KEY")
    with pytest.raises(ValueError, match="REINS_API_KEY"):
        ReinsClient(api.url)


# Download.


def test_download_redirect_omits_authorization(client, api, recorder, transport, worker, tmp_path):
    job = client.wait(client.submit("tiny-wan", "a red car", seed=5).id, timeout=60)
    api.storage.redirect_base = recorder.url
    try:
        path = client.download(job.id, tmp_path / "redirected.mp4")
    finally:
        api.storage.redirect_base = None

    assert path.read_bytes() == (recorder.root / f"{job.id}.mp4").read_bytes()
    received = [headers for request_path, headers in recorder.requests if request_path.startswith(f"/{job.id}.mp4")]
    assert len(received) == 1
    headers = received[0]
    assert "authorization" not in {name.lower() for name in headers}
    assert not any(ALPHA_KEY in value for value in headers.values())
    content_requests = transport.requests_to("GET", f"/v1/jobs/{job.id}/content")
    assert content_requests[0].headers["authorization"] == f"Bearer {ALPHA_KEY}"
    redirected = transport.requests_to("GET", f"/{job.id}.mp4")
    assert len(redirected) == 1
    assert "authorization" not in redirected[0].headers


def test_download_of_unfinished_job_writes_nothing(client, tmp_path):
    job = submit_parked(client)
    with pytest.raises(ReinsAPIError) as raised:
        client.download(job.id, tmp_path / "never.mp4")
    assert raised.value.status == 409
    assert raised.value.code == "job_not_completed"
    assert list(tmp_path.iterdir()) == []


# Cancel, delete, list.


def test_cancel_then_delete(client, tmp_path):
    image = tmp_path / "input.png"
    image.write_bytes(png_bytes(40, 24))
    job = client.submit("tiny-wan-i2v", "a red ball", image=image)
    assert job.request.input_image is not None
    assert (job.request.input_image.source_width, job.request.input_image.source_height) == (40, 24)

    cancelled = client.cancel(job.id)
    assert cancelled.status == "cancelled"
    assert client.wait(job.id, timeout=10).status == "cancelled"

    deleted = client.delete(job.id)
    assert isinstance(deleted, DeletedJob)
    assert (deleted.id, deleted.deleted) == (job.id, True)
    with pytest.raises(ReinsAPIError) as missing:
        client.get(job.id)
    assert (missing.value.status, missing.value.code, missing.value.field) == (404, "job_not_found", "id")
    with pytest.raises(ReinsAPIError) as cancel_missing:
        client.cancel(job.id)
    assert cancel_missing.value.status == 404


def test_iter_jobs_follows_pages(api, transport):
    with ReinsClient(api.url, TENANT_KEYS["beta"], transport=transport) as client:
        submitted = [submit_parked(client, f"page {index}").id for index in range(5)]
        every = client.list(limit=100)
        assert every.has_more is False
        before = len(transport.requests_to("GET", "/v1/jobs"))

        listed = [job.id for job in client.iter_jobs(page_size=2)]

    assert listed == [job.id for job in every.data]
    assert listed[:5] == submitted[::-1]
    assert len(set(listed)) == len(listed)
    pages = len(transport.requests_to("GET", "/v1/jobs")) - before
    assert pages == math.ceil(len(listed) / 2)


# The command line.


def run_reins(api: Api, *arguments: str) -> subprocess.CompletedProcess:
    """Run `reins` as a subprocess, the way a user runs it, with the API's URL and tenant alpha's key."""
    env = {**os.environ, "REINS_API_URL": api.url, "REINS_API_KEY": ALPHA_KEY}
    return subprocess.run([sys.executable, "-m", "reins.cli", "--log-level", "WARNING", *arguments], env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_submit_writes_mp4(api, worker, tmp_path):
    out = tmp_path / "clips" / "car.mp4"
    result = run_reins(api, "submit", "--model", "tiny-wan", "--prompt", "a red car", "--num-frames", "13",
                       "--steps", "6", "--seed", "4", "--out", str(out))
    assert result.returncode == 0, result.stderr
    job = json.loads(result.stdout)
    assert job["status"] == "completed"
    assert probe_mp4(out)["frames"] == 13
    assert f"submitted {job['id']}" in result.stderr
    progress_lines = [line.split() for line in result.stderr.splitlines() if line.startswith(job["id"])]
    assert progress_lines[-1] == [job["id"], "completed", "100.0%"]
    assert f"wrote {out}" in result.stderr


def test_cli_submit_invalid_field_exits_2(api):
    result = run_reins(api, "submit", "--model", "tiny-wan", "--prompt", "a red car", "--num-frames", "4")
    assert result.returncode == 2
    assert "num_frames" in result.stderr
    assert result.stdout == ""


def test_cli_submit_failed_job_exits_1(api, worker, tmp_path):
    out = tmp_path / "never.mp4"
    result = run_reins(api, "submit", "--model", "tiny-wan", "--prompt", "FAIL on purpose", "--out", str(out))
    assert result.returncode == 1, result.stderr
    job = json.loads(result.stdout)
    assert job["status"] == "failed"
    assert job["error"]["code"] == "internal_error"
    assert f"job {job['id']} failed" in result.stderr
    assert not out.exists()


@dataclass
class CommandResult:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def run_in_process(api, monkeypatch, capsys) -> Callable[..., CommandResult]:
    """Run `reins` through reins.cli.main in this process, which skips the second or two a subprocess needs to
    import the command line, and return its exit code and output."""
    import app.logs
    from reins.cli import main

    # main() would replace the root logger's handlers, which pytest's log capture relies on.
    monkeypatch.setattr(app.logs, "configure_logging", lambda *arguments: None)
    monkeypatch.setenv("REINS_API_URL", api.url)
    monkeypatch.setenv("REINS_API_KEY", ALPHA_KEY)

    def run(*arguments: str, api_key: str | None = ALPHA_KEY) -> CommandResult:
        if api_key is None:
            monkeypatch.delenv("REINS_API_KEY")
        capsys.readouterr()
        try:
            returncode = main(list(arguments))
        except SystemExit as stopped:
            returncode = stopped.code
        output = capsys.readouterr()
        return CommandResult(returncode, output.out, output.err)

    return run


def test_cli_without_key_exits_2(run_in_process):
    result = run_in_process("jobs", "list", api_key=None)
    assert result.returncode == 2
    assert "REINS_API_KEY" in result.stderr


def test_cli_jobs_commands(run_in_process, client, worker, tmp_path):
    done = client.wait(client.submit("tiny-wan", "a red car", num_frames=5).id, timeout=60)
    parked = submit_parked(client)

    got = run_in_process("jobs", "get", done.id)
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["id"] == done.id

    out = tmp_path / "got.mp4"
    downloaded = run_in_process("jobs", "download", done.id, "--out", str(out))
    assert downloaded.returncode == 0, downloaded.stderr
    assert probe_mp4(out)["frames"] == 5

    listed = run_in_process("jobs", "list", "--limit", "1")
    assert listed.returncode == 0, listed.stderr
    page = json.loads(listed.stdout)
    assert page["object"] == "list"
    assert len(page["data"]) == 1

    every = run_in_process("jobs", "list", "--limit", "2", "--all")
    assert every.returncode == 0, every.stderr
    assert [job["id"] for job in json.loads(every.stdout)] == [job.id for job in client.iter_jobs()]

    waited = run_in_process("jobs", "wait", done.id)
    assert waited.returncode == 0, waited.stderr
    assert json.loads(waited.stdout)["status"] == "completed"

    cancelled = run_in_process("jobs", "cancel", parked.id)
    assert cancelled.returncode == 0, cancelled.stderr
    assert json.loads(cancelled.stdout)["status"] == "cancelled"

    waited_cancelled = run_in_process("jobs", "wait", parked.id)
    assert waited_cancelled.returncode == 1

    deleted = run_in_process("jobs", "delete", parked.id)
    assert deleted.returncode == 0, deleted.stderr
    assert json.loads(deleted.stdout) == {"id": parked.id, "object": "job.deleted", "deleted": True}

    missing = run_in_process("jobs", "get", parked.id)
    assert missing.returncode == 2
    assert f"no job with id '{parked.id}'" in missing.stderr
