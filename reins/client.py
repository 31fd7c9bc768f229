"""A synchronous Python client for the REINS HTTP API: submit a generation, follow it, download the video.

    from reins.client import ReinsClient

    with ReinsClient("http://127.0.0.1:8000") as client:  # the key comes from REINS_API_KEY
        job = client.submit("tiny-wan", "a red car moving left", num_frames=9, seed=1)
        job = client.wait(job.id, on_progress=lambda job: print(job.status, job.progress))
        if job.status == "completed":
            client.download(job.id, "car.mp4")

Responses are the pydantic models of `app.protocol`. The module imports only httpx and pydantic, never torch,
diffusers or the worker, so it runs on machines without the model stack.
"""

from __future__ import annotations

import email.utils
import logging
import mimetypes
import os
import random
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Callable, Generator, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError

from app.protocol import TERMINAL_STATUSES, DeletedJob, Job, JobList

logger = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:8000"
API_URL_VARIABLE = "REINS_API_URL"
API_KEY_VARIABLE = "REINS_API_KEY"

# Statuses after which a request is sent again, honouring Retry-After: the server did not act on the request.
RETRYABLE_STATUSES = (429, 503)
# A retried POST /v1/generate can arrive while the first attempt with its Idempotency-Key is still being processed.
IDEMPOTENCY_IN_PROGRESS = "idempotent_request_in_progress"
# Poll interval when the server sends no X-Poll-Interval-Ms header.
DEFAULT_POLL_SECONDS = 1.0
# Shortest read timeout on the event stream: the server sends a keep-alive comment after 15 s without an event.
MIN_EVENT_READ_TIMEOUT = 30.0
MAX_REDIRECTS = 5

ProgressCallback = Callable[[Job], None]


class ReinsError(Exception):
    """Base class of the errors this client raises."""


class ReinsAPIError(ReinsError):
    """An error response of the API or of the storage host a download was redirected to.

    `code`, `message` and `field` come from the body `{"error": {"code", "message", "field"}}`. A body of another
    shape gets the code "http_error" and the start of the body as its message. `retry_after` is the Retry-After
    header in seconds, when the response had one.
    """

    def __init__(self, status: int, code: str, message: str, field: str | None = None, *,
                 retry_after: float | None = None, request_id: str | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.retry_after = retry_after
        self.request_id = request_id

    @classmethod
    def from_response(cls, response: httpx.Response) -> "ReinsAPIError":
        """Build the error from a response whose body has been read."""
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        request_id = response.headers.get("x-request-id")
        try:
            error = response.json()["error"]
            return cls(response.status_code, str(error["code"]), str(error["message"]), error.get("field"),
                       retry_after=retry_after, request_id=request_id)
        except (ValueError, KeyError, TypeError):
            pass
        text = response.text.strip()
        if len(text) > 200:
            text = text[:197] + "..."
        where = _without_query(response.request.url)
        message = f"{response.request.method} {where} returned {response.status_code}" + (f": {text}" if text else "")
        return cls(response.status_code, "http_error", message, retry_after=retry_after, request_id=request_id)


class ReinsConnectionError(ReinsError):
    """The server could not be reached, or the connection broke, after the client's retries."""


class WaitTimeout(ReinsError, TimeoutError):
    """`ReinsClient.wait` gave up before the job ended. `job` is the last state seen, or None."""

    def __init__(self, job_id: str, timeout: float, job: Job | None) -> None:
        state = f"still {job.status} at {job.progress:.0%}" if job is not None else "state unknown"
        super().__init__(f"job {job_id} did not finish within {timeout:g} s ({state}). Wait again to keep "
                         "following it")
        self.job_id = job_id
        self.timeout = timeout
        self.job = job


def parse_retry_after(value: str | None) -> float | None:
    """Return a Retry-After header (delay in seconds, or an HTTP date) as seconds from now, or None if invalid."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - datetime.now(timezone.utc)).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


def _without_query(url: httpx.URL) -> str:
    """Return the URL without its query, which for a presigned URL contains the signature."""
    return str(url.copy_with(query=None, fragment=None))


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    default_ports = {"http": 80, "https": 443}
    return url.scheme, url.host, url.port or default_ports.get(url.scheme)


class _BearerForOrigin(httpx.Auth):
    """Adds `Authorization: Bearer KEY` to requests for the API's origin only, so a redirect to another host (a
    presigned storage URL) never receives the key."""

    def __init__(self, api_key: str, base_url: httpx.URL) -> None:
        self._header = f"Bearer {api_key}"
        self._origin = _origin(base_url)

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if _origin(request.url) == self._origin:
            request.headers["Authorization"] = self._header
        else:
            request.headers.pop("Authorization", None)
        yield request

    def __repr__(self) -> str:
        return "_BearerForOrigin(<hidden>)"


class _ServerSentEvent:
    __slots__ = ("name", "data")

    def __init__(self, name: str, data: str) -> None:
        self.name = name
        self.data = data


def _iter_events(lines: Iterator[str]) -> Iterator[_ServerSentEvent]:
    """Parse text/event-stream lines into events: `event` names it (default "message"), `data` lines are joined by
    newlines, and lines starting with ':' are comments."""
    name, data = "", []
    for line in lines:
        if not line:
            if data:
                yield _ServerSentEvent(name or "message", "\n".join(data))
            name, data = "", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)


class _StreamBroken(Exception):
    """The event stream failed or ended before the job did, so `wait` falls back to polling."""


class _DeadlinePassed(Exception):
    """The timeout of `wait` has passed."""


def _check_deadline(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() >= deadline:
        raise _DeadlinePassed


def _capped(seconds: float, deadline: float | None) -> float:
    """Return `seconds`, or the time left before `deadline` if that is shorter. Raise _DeadlinePassed if no time
    is left."""
    if deadline is None:
        return seconds
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise _DeadlinePassed
    return min(seconds, remaining)


def _lines_before(response: httpx.Response, deadline: float | None) -> Iterator[str]:
    """Yield the response's lines, raising _DeadlinePassed at the first line read after `deadline`. Keep-alive
    comments count, so a stream whose job never changes still ends at the deadline."""
    for line in response.iter_lines():
        _check_deadline(deadline)
        yield line


def _quote(job_id: str) -> str:
    """Escape a job id for use as one path segment."""
    return urllib.parse.quote(job_id, safe="")


class ReinsClient:
    """Client of one REINS API for one tenant.

    `base_url` defaults to REINS_API_URL, then http://127.0.0.1:8000, and `api_key` defaults to REINS_API_KEY. The
    key is sent only to the origin of `base_url`, and it is kept out of logs, reprs and exception messages.

    Each request is sent again up to `max_retries` times when the connection fails or the server returns 429 or
    503 (or 409 idempotent_request_in_progress to a submit). A 429 or 503 waits for its Retry-After, and is raised
    at once when Retry-After exceeds `max_retry_wait` seconds. Other retries wait about 0.5 s, then 1, 2, 4 and at
    most 8 s. A request that may have reached the server is sent again only when repeating it is harmless: reads,
    and `submit`, which always carries an Idempotency-Key. `cancel` and `delete` are sent again only when the
    connection could not be opened. `timeout` is the httpx timeout in seconds for connecting, and for each read
    and write.

    Use it as a context manager, or call `close()`.
    """

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *, timeout: float = 30.0,
                 max_retries: int = 4, max_retry_wait: float = 60.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        base_url = base_url or os.environ.get(API_URL_VARIABLE) or DEFAULT_URL
        api_key = api_key or os.environ.get(API_KEY_VARIABLE)
        if not api_key:
            raise ValueError(f"missing API key: pass api_key or set {API_KEY_VARIABLE}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be 0 or more, got {max_retries}")
        self.base_url = httpx.URL(base_url.rstrip("/") + "/")
        if self.base_url.scheme not in ("http", "https"):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        self.timeout = timeout
        self.max_retries = max_retries
        self.max_retry_wait = max_retry_wait
        self._http = httpx.Client(
            base_url=self.base_url,
            auth=_BearerForOrigin(api_key, self.base_url),
            timeout=timeout,
            transport=transport,
            headers={"User-Agent": "reins-client"},
        )

    def __repr__(self) -> str:
        return f"ReinsClient({str(self.base_url)!r})"

    def __enter__(self) -> "ReinsClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # Jobs.

    def submit(self, model: str, prompt: str, image: str | os.PathLike | bytes | None = None,
               idempotency_key: str | None = None, **fields: Any) -> Job:
        """Queue a generation and return the job as accepted (status "queued").

        `fields` are the other fields of `POST /v1/generate` (num_frames, height, width, num_inference_steps,
        guidance_scale, seed, negative_prompt, steering_strength, steering_preset, webhook_url); None values are
        left out. With `image` (a file path or the encoded bytes) the request is sent as multipart, for
        image-to-video models. A random Idempotency-Key is used when none is given, so that retries never
        queue a second job.
        """
        body = {"model": model, "prompt": prompt, **{k: v for k, v in fields.items() if v is not None}}
        key = idempotency_key or f"reins-client-{uuid.uuid4()}"
        request: dict[str, Any] = {"headers": {"Idempotency-Key": key}}
        if image is None:
            request["json"] = body
        else:
            if isinstance(image, bytes):
                filename, data = "image", image
            else:
                filename, data = Path(image).name, Path(image).read_bytes()
            content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
            request["data"] = {name: str(value) for name, value in body.items()}
            request["files"] = {"image": (filename, data, content_type)}
        response = self._request("POST", "v1/generate", may_resend=True, **request)
        job = Job.model_validate_json(response.content)
        replayed = " (replayed for its Idempotency-Key)" if response.headers.get("idempotent-replayed") else ""
        logger.debug("job %s: submitted to %s%s", job.id, model, replayed)
        return job

    def get(self, job_id: str) -> Job:
        return Job.model_validate_json(self._request("GET", f"v1/jobs/{_quote(job_id)}").content)

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued or running job and return it. A running job stops after its current denoising step,
        so the returned job may still be in_progress, and `wait` returns it once it is cancelled."""
        response = self._request("POST", f"v1/jobs/{_quote(job_id)}/cancel", may_resend=False)
        return Job.model_validate_json(response.content)

    def delete(self, job_id: str) -> DeletedJob:
        """Delete a job with its video and input image, stopping it first if it runs."""
        response = self._request("DELETE", f"v1/jobs/{_quote(job_id)}", may_resend=False)
        return DeletedJob.model_validate_json(response.content)

    def list(self, limit: int = 20, after: str | None = None) -> JobList:
        """Return one page of the tenant's jobs, newest first, starting after the job id `after`."""
        params: dict[str, Any] = {"limit": limit}
        if after is not None:
            params["after"] = after
        return JobList.model_validate_json(self._request("GET", "v1/jobs", params=params).content)

    def iter_jobs(self, page_size: int = 100, after: str | None = None) -> Iterator[Job]:
        """Yield every job of the tenant, newest first, requesting `page_size` jobs at a time."""
        while True:
            page = self.list(limit=page_size, after=after)
            yield from page.data
            if not page.has_more or page.last_id is None:
                return
            after = page.last_id

    # Following a job.

    def wait(self, job_id: str, timeout: float | None = None, on_progress: ProgressCallback | None = None) -> Job:
        """Follow the job until it is completed, failed or cancelled, and return it.

        Progress comes from the server-sent events of `GET /v1/jobs/{id}/events`. If that stream breaks, the job is
        polled instead, at the interval that the server sends in the X-Poll-Interval-Ms header. `on_progress` is called with the
        job each time its status or progress changes, starting with the state found first. Raises WaitTimeout
        after `timeout` seconds (None waits without a limit), ReinsAPIError with status 404 if the job does not
        exist or is deleted meanwhile, and ReinsConnectionError if polling fails after the retries.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        reporter = _ProgressReporter(on_progress)
        try:
            try:
                return self._follow_events(job_id, deadline, reporter)
            except _StreamBroken as broken:
                logger.warning("job %s: event stream failed (%s), falling back to polling", job_id, broken)
            return self._poll(job_id, deadline, reporter)
        except _DeadlinePassed:
            raise WaitTimeout(job_id, timeout or 0.0, reporter.last) from None

    def _follow_events(self, job_id: str, deadline: float | None, reporter: _ProgressReporter) -> Job:
        """Read the event stream until a final event, and open a new stream when the server ends one with a timeout
        event."""
        while True:
            read_timeout = _capped(max(self.timeout, MIN_EVENT_READ_TIMEOUT), deadline)
            try:
                response = self._request("GET", f"v1/jobs/{_quote(job_id)}/events", stream=True,
                                         timeout=httpx.Timeout(self.timeout, read=read_timeout))
            except ReinsAPIError as error:
                if 400 <= error.status < 500:
                    raise
                raise _StreamBroken(str(error)) from None
            except ReinsConnectionError as error:
                raise _StreamBroken(str(error)) from None
            try:
                for event in _iter_events(_lines_before(response, deadline)):
                    if event.name == "deleted":
                        raise ReinsAPIError(404, "job_not_found", f"job {job_id} was deleted while waiting", "id")
                    if event.name == "timeout":
                        break  # The server's limit on one stream: open a new one.
                    try:
                        job = Job.model_validate_json(event.data)
                    except ValidationError as error:
                        raise _StreamBroken(f"unreadable {event.name!r} event: {error}") from None
                    reporter.report(job)
                    if job.status in TERMINAL_STATUSES:
                        return job
                else:
                    raise _StreamBroken("the stream ended before the job did")
            except httpx.TimeoutException:
                _check_deadline(deadline)
                raise _StreamBroken("no data within the read timeout") from None
            except httpx.TransportError as error:
                raise _StreamBroken(f"{type(error).__name__}: {error}") from None
            finally:
                response.close()

    def _poll(self, job_id: str, deadline: float | None, reporter: _ProgressReporter) -> Job:
        """Get the job until it ends, sleeping between requests for the interval in its X-Poll-Interval-Ms header."""
        while True:
            _check_deadline(deadline)
            try:
                response = self._request("GET", f"v1/jobs/{_quote(job_id)}", timeout=_capped(self.timeout, deadline))
            except ReinsConnectionError:
                _check_deadline(deadline)
                raise
            job = Job.model_validate_json(response.content)
            reporter.report(job)
            if job.status in TERMINAL_STATUSES:
                return job
            interval = DEFAULT_POLL_SECONDS
            hint = response.headers.get("x-poll-interval-ms")
            if hint is not None and hint.isdigit():
                interval = int(hint) / 1000
            time.sleep(_capped(interval, deadline))

    # Downloading.

    def download(self, job_id: str, path: str | os.PathLike) -> Path:
        """Write the video of a completed job to `path` and return the path.

        Redirects are followed, and the API key is sent only to the API's own origin, never to the host of a
        presigned storage URL (the API redirects with 307 when it serves videos from object storage). The video is
        written to a temporary file beside `path` and renamed over it once complete, so `path` never contains a
        partial video. The folder of `path` must exist. The file gets mode 0644.
        """
        target = Path(path)
        response = self._request("GET", f"v1/jobs/{_quote(job_id)}/content", stream=True)
        redirects = 0
        while response.is_redirect:
            response.close()
            if redirects == MAX_REDIRECTS:
                raise ReinsAPIError(response.status_code, "http_error",
                                    f"the content of job {job_id} redirected more than {MAX_REDIRECTS} times")
            url = response.request.url.join(response.headers["location"])
            logger.info("job %s: downloading from %s", job_id, _without_query(url))
            # An absolute URL is sent as it is, and _BearerForOrigin leaves the key out unless it is the API's origin.
            response = self._request("GET", url, stream=True)
            redirects += 1
        try:
            self._write_atomically(response, target, job_id)
        finally:
            response.close()
        return target

    @staticmethod
    def _write_atomically(response: httpx.Response, target: Path, job_id: str) -> None:
        descriptor, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
        try:
            written = 0
            with os.fdopen(descriptor, "wb") as file:
                os.fchmod(file.fileno(), 0o644)  # mkstemp creates 0600, which would stay after the rename
                for chunk in response.iter_bytes():
                    file.write(chunk)
                    written += len(chunk)
                file.flush()
                os.fsync(file.fileno())
            expected = response.headers.get("content-length")
            if expected is not None and expected.isdigit() and int(expected) != written:
                raise ReinsConnectionError(f"download of job {job_id} ended after {written} of {expected} bytes")
            os.replace(temporary, target)
        except httpx.TransportError as error:
            Path(temporary).unlink(missing_ok=True)
            raise ReinsConnectionError(f"download of job {job_id} failed: {type(error).__name__}: {error}") from None
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    # Sending requests.

    def _request(self, method: str, url: str | httpx.URL, *, may_resend: bool = True, stream: bool = False,
                 **options: Any) -> httpx.Response:
        """Send a request with the retry policy of the class docstring and return a 2xx or 3xx response.

        Set `may_resend` when the request may be sent again after a failure that could have happened after the
        server received it. Error responses are raised as ReinsAPIError.
        """
        attempt = 0
        while True:
            request = self._http.build_request(method, url, **options)
            try:
                response = self._http.send(request, stream=stream)
            except httpx.TransportError as error:
                # A failure to connect means nothing was sent, so any request may be sent again.
                unsent = isinstance(error, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))
                if attempt >= self.max_retries or not (unsent or may_resend):
                    raise ReinsConnectionError(
                        f"{method} {_without_query(request.url)} failed after {attempt + 1} attempt(s): "
                        f"{type(error).__name__}: {error}"
                    ) from None
                delay = self._backoff(attempt)
                logger.warning("%s %s failed (%s: %s), retry %d of %d in %.1f s", method,
                               _without_query(request.url), type(error).__name__, error, attempt + 1,
                               self.max_retries, delay)
                time.sleep(delay)
                attempt += 1
                continue

            if response.status_code < 400:
                return response
            try:
                response.read()
            except httpx.TransportError:
                pass  # The error is raised or retried by its status alone.
            finally:
                response.close()
            error = ReinsAPIError.from_response(response)
            retryable = response.status_code in RETRYABLE_STATUSES or error.code == IDEMPOTENCY_IN_PROGRESS
            if not retryable or attempt >= self.max_retries:
                raise error
            delay = error.retry_after if error.retry_after is not None else self._backoff(attempt)
            if delay > self.max_retry_wait:
                logger.warning("%s %s returned %d (%s) with Retry-After %.0f s, over max_retry_wait %.0f s, so it is "
                               "not retried", method, _without_query(request.url), error.status, error.code,
                               delay, self.max_retry_wait)
                raise error
            logger.warning("%s %s returned %d (%s), retry %d of %d in %.1f s", method, _without_query(request.url),
                           error.status, error.code, attempt + 1, self.max_retries, delay)
            time.sleep(delay)
            attempt += 1

    @staticmethod
    def _backoff(attempt: int) -> float:
        """Return the delay before retry `attempt` + 1 after a connection failure: 0.5 s doubling to 8 s, with up
        to 10% jitter so that clients that failed together do not retry together."""
        return min(0.5 * 2**attempt, 8.0) * (1 + 0.1 * random.random())


class _ProgressReporter:
    """Calls the progress callback when the job's status or progress differs from the last call, and remembers
    the last job seen."""

    def __init__(self, callback: ProgressCallback | None) -> None:
        self.callback = callback
        self.last: Job | None = None
        self._last_state: tuple[str, float] | None = None

    def report(self, job: Job) -> None:
        self.last = job
        state = (job.status, job.progress)
        if state == self._last_state:
            return
        self._last_state = state
        if self.callback is not None:
            self.callback(job)
