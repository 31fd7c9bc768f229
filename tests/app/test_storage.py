"""Storage backends: the local folder and S3, the latter against a private SeaweedFS server (`s3_server`).

Failures of S3 requests are injected with botocore `before-send` hooks. A hook returns an error response or raises a
connection error in place of the server for the requests it picks, and every other request goes to the real server.
"""

from __future__ import annotations

import logging
import time
import uuid
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import EndpointConnectionError
from fastapi.testclient import TestClient
from pydantic import SecretStr

from app.main import create_app
from app.storage import LocalStorage, S3Storage, StorageError
from reins.processes import free_port
from tests.conftest import settings_from

MiB = 1024 * 1024


def make_s3_storage(server, **options) -> S3Storage:
    """Return an S3Storage on the test server under a prefix of its own, so tests never see each other's objects."""
    defaults = {
        "prefix": "test-" + uuid.uuid4().hex[:8],
        "endpoint_url": server.endpoint_url,
        "public_endpoint_url": server.public_endpoint_url,
        "region": server.region,
        "access_key_id": server.access_key_id,
        "secret_access_key": server.secret_access_key,
        "addressing_style": "path",
        "attempts": 3,
        "retry_base_seconds": 0.01,
    }
    return S3Storage(options.pop("bucket", server.bucket), **{**defaults, **options})


@pytest.fixture
def s3_storage(s3_server) -> S3Storage:
    return make_s3_storage(s3_server)


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path):
    if request.param == "local":
        return LocalStorage(tmp_path / "store")
    return make_s3_storage(request.getfixturevalue("s3_server"))


class _Body:
    """The raw body of an injected response, in the shape AWSResponse reads."""

    def __init__(self, data: bytes = b"") -> None:
        self.data = data

    def stream(self, **_):
        yield self.data


def inject_failures(storage: S3Storage, operation: str, failures: list, match: str = "") -> list[str]:
    """Fail the next requests of `operation` whose URL contains `match`, with `failures` in turn.

    A failure is an HTTP status code (an empty response with that status) or an exception to raise. Once the list
    is used up, requests reach the server. Returns the list of URLs of every matching request, failed or not.
    """
    pending = list(failures)
    seen: list[str] = []

    def before_send(request, **_):
        if match not in request.url:
            return None
        seen.append(request.url)
        if not pending:
            return None
        failure = pending.pop(0)
        if isinstance(failure, Exception):
            raise failure
        return AWSResponse(request.url, failure, {}, _Body())

    storage.client.meta.events.register(f"before-send.s3.{operation}", before_send)
    return seen


def always(status_or_error, count: int = 100) -> list:
    return [status_or_error] * count


# Both backends.


def test_round_trip(storage):
    data = b"\x00mp4 bytes\xff" * 1000
    storage.put_bytes("job_1.mp4", data)

    assert storage.exists("job_1.mp4")
    assert storage.size("job_1.mp4") == len(data)
    with storage.open("job_1.mp4") as stream:
        assert stream.read() == data

    storage.delete("job_1.mp4")
    assert not storage.exists("job_1.mp4")
    assert storage.size("job_1.mp4") is None
    assert storage.open("job_1.mp4") is None


def test_put_file_under_folders(storage, tmp_path):
    source = tmp_path / "image.png"
    source.write_bytes(b"png" * 500)
    storage.put_file("inputs/nested/job_2.png", source)
    storage.put_bytes("inputs/job_2.png", b"other")

    with storage.open("inputs/nested/job_2.png") as stream:
        assert stream.read() == b"png" * 500
    with storage.open("inputs/job_2.png") as stream:
        assert stream.read() == b"other"
    assert not storage.exists("inputs/nested")
    assert not storage.exists("inputs")


def test_put_replaces_object(storage):
    storage.put_bytes("job_3.mp4", b"first version")
    storage.put_bytes("job_3.mp4", b"second")

    assert storage.size("job_3.mp4") == len(b"second")
    with storage.open("job_3.mp4") as stream:
        assert stream.read() == b"second"


def test_delete_absent_key(storage):
    storage.delete("never/stored.mp4")
    assert not storage.exists("never/stored.mp4")


def test_check_passes(storage):
    storage.check()


INVALID_KEYS = ["", "/job.mp4", "job.mp4/", "a//b.mp4", "../job.mp4", "a/../b.mp4", "..", ".", "a/./b.mp4",
                "job 1.mp4", "job.mp4\n", "vidéo.mp4", "a\\b.mp4"]


@pytest.mark.parametrize("key", INVALID_KEYS)
def test_invalid_key_rejected(storage, tmp_path, key):
    source = tmp_path / "source.bin"
    source.write_bytes(b"x")
    calls = {
        "put_bytes": lambda: storage.put_bytes(key, b"x"),
        "put_file": lambda: storage.put_file(key, source),
        "open": lambda: storage.open(key),
        "size": lambda: storage.size(key),
        "exists": lambda: storage.exists(key),
        "delete": lambda: storage.delete(key),
        "presigned_url": lambda: storage.presigned_url(key, 60),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError, match="invalid storage key"):
            call()
            pytest.fail(f"{name} accepted the key {key!r}")


# Local backend only.


def test_local_has_no_presigned_url(tmp_path):
    assert LocalStorage(tmp_path).presigned_url("job.mp4", 60) is None


def test_local_check_fails_for_file_root(tmp_path):
    root = tmp_path / "a-file"
    root.write_text("not a folder")
    with pytest.raises(StorageError, match="cannot be created"):
        LocalStorage(root).check()


# S3 backend only: presigned URLs.


def test_presigned_url_returns_bytes(s3_storage):
    s3_storage.put_bytes("job_4.mp4", b"video bytes")
    response = httpx.get(s3_storage.presigned_url("job_4.mp4", 60))

    assert response.status_code == 200
    assert response.content == b"video bytes"
    assert response.headers["content-type"] == "video/mp4"


def test_presigned_url_uses_public_endpoint(s3_storage, s3_server):
    url = urlsplit(s3_storage.presigned_url("job_5.mp4", 60))
    public = urlsplit(s3_server.public_endpoint_url)

    assert (url.scheme, url.netloc) == (public.scheme, public.netloc)
    assert url.path == f"/{s3_server.bucket}/{s3_storage.prefix}/job_5.mp4"


def test_presigned_url_host_is_signed(s3_storage, s3_server):
    # The same URL sent to the internal address fails, so signing with the internal client would break clients.
    s3_storage.put_bytes("job_6.mp4", b"video")
    url = urlsplit(s3_storage.presigned_url("job_6.mp4", 60))
    internal = url._replace(netloc=urlsplit(s3_server.endpoint_url).netloc)

    assert httpx.get(urlunsplit(url)).status_code == 200
    assert httpx.get(urlunsplit(internal)).status_code == 403


def test_tampered_presigned_url_forbidden(s3_storage):
    s3_storage.put_bytes("job_7.mp4", b"video seven")
    s3_storage.put_bytes("job_8.mp4", b"video eight")
    url = s3_storage.presigned_url("job_7.mp4", 60)
    signature = url.rsplit("X-Amz-Signature=", 1)[1]
    flipped = ("0" if signature[0] != "0" else "1") + signature[1:]

    other_key = httpx.get(url.replace("job_7.mp4", "job_8.mp4"))
    other_signature = httpx.get(url.replace(signature, flipped))
    longer_expiry = httpx.get(url.replace("X-Amz-Expires=60", "X-Amz-Expires=600"))

    assert other_key.status_code == 403
    assert other_signature.status_code == 403
    assert longer_expiry.status_code == 403
    assert b"video" not in other_key.content + other_signature.content + longer_expiry.content


def test_expired_presigned_url_forbidden(s3_storage):
    s3_storage.put_bytes("job_9.mp4", b"video")
    url = s3_storage.presigned_url("job_9.mp4", 1)
    time.sleep(2.1)
    response = httpx.get(url)

    assert response.status_code == 403
    assert "expired" in response.text.lower()


@pytest.mark.parametrize("seconds", [0, -1, 7 * 24 * 3600 + 1])
def test_presigned_url_lifetime_checked(s3_storage, seconds):
    with pytest.raises(ValueError, match="lifetime"):
        s3_storage.presigned_url("job.mp4", seconds)


# S3 backend only: retries and failed uploads.


def test_upload_retried_after_transient_failures(s3_storage, caplog):
    failures = [EndpointConnectionError(endpoint_url=s3_storage.endpoint_url), 503]
    seen = inject_failures(s3_storage, "PutObject", failures)
    with caplog.at_level(logging.WARNING, logger="app.storage"):
        s3_storage.put_bytes("job_10.mp4", b"stored on the third attempt")

    assert len(seen) == 3
    with s3_storage.open("job_10.mp4") as stream:
        assert stream.read() == b"stored on the third attempt"
    retries = [record.getMessage() for record in caplog.records if "retrying" in record.getMessage()]
    assert len(retries) == 2
    assert "attempt 1 of 3" in retries[0]
    assert "attempt 2 of 3" in retries[1]


def test_file_upload_retried_from_start(s3_storage, tmp_path):
    source = tmp_path / "video.mp4"
    source.write_bytes(b"0123456789" * 1000)
    seen = inject_failures(s3_storage, "PutObject", [500, 502])
    s3_storage.put_file("job_11.mp4", source)

    assert len(seen) == 3
    with s3_storage.open("job_11.mp4") as stream:
        assert stream.read() == source.read_bytes()


def test_failed_upload_leaves_no_object(s3_storage):
    seen = inject_failures(s3_storage, "PutObject", always(503))
    with pytest.raises(StorageError, match="after 3 attempts"):
        s3_storage.put_bytes("job_12.mp4", b"never stored")

    assert len(seen) == 3
    assert not s3_storage.exists("job_12.mp4")


def test_client_error_not_retried(s3_storage):
    seen = inject_failures(s3_storage, "PutObject", always(403))
    with pytest.raises(StorageError, match="failed"):
        s3_storage.put_bytes("job_13.mp4", b"rejected")

    assert len(seen) == 1
    assert not s3_storage.exists("job_13.mp4")


def test_multipart_upload_round_trip(s3_server, tmp_path):
    storage = make_s3_storage(s3_server, multipart_threshold_bytes=5 * MiB, multipart_part_bytes=5 * MiB)
    source = tmp_path / "large.mp4"
    source.write_bytes(bytes(range(256)) * (11 * MiB // 256) + b"tail")
    parts = inject_failures(storage, "UploadPart", [503])
    storage.put_file("job_14.mp4", source)

    assert len(parts) == 4  # three parts, the first one sent twice
    assert storage.size("job_14.mp4") == source.stat().st_size
    with storage.open("job_14.mp4") as stream:
        assert stream.read() == source.read_bytes()


def test_failed_multipart_upload_aborted(s3_server, tmp_path):
    storage = make_s3_storage(s3_server, multipart_threshold_bytes=5 * MiB, multipart_part_bytes=5 * MiB)
    source = tmp_path / "large.mp4"
    source.write_bytes(b"v" * (6 * MiB))
    second_part = inject_failures(storage, "UploadPart", always(503), match="partNumber=2")
    aborts = inject_failures(storage, "AbortMultipartUpload", [])
    with pytest.raises(StorageError, match="part 2"):
        storage.put_file("job_15.mp4", source)

    object_key = storage.object_key("job_15.mp4")
    pending = storage.client.list_multipart_uploads(Bucket=s3_server.bucket, Prefix=object_key)
    assert len(second_part) == 3
    assert len(aborts) == 1
    assert not storage.exists("job_15.mp4")
    assert pending.get("Uploads", []) == []


def test_reads_retried(s3_storage):
    s3_storage.put_bytes("job_16.mp4", b"video")
    heads = inject_failures(s3_storage, "HeadObject", [503])
    gets = inject_failures(s3_storage, "GetObject", [EndpointConnectionError(endpoint_url=s3_storage.endpoint_url)])

    assert s3_storage.size("job_16.mp4") == 5
    with s3_storage.open("job_16.mp4") as stream:
        assert stream.read() == b"video"
    assert len(heads) == 2
    assert len(gets) == 2


# S3 backend only: check().


def test_check_fails_for_unreachable_endpoint(s3_server):
    storage = make_s3_storage(s3_server, endpoint_url=f"http://127.0.0.1:{free_port()}", connect_timeout_seconds=2)
    with pytest.raises(StorageError, match="unreachable") as raised:
        storage.check()
    assert storage.endpoint_url in str(raised.value)


def test_check_fails_for_missing_bucket(s3_server):
    storage = make_s3_storage(s3_server, bucket="no-such-bucket")
    with pytest.raises(StorageError, match="bucket not found"):
        storage.check()


def test_check_fails_for_wrong_secret(s3_server, caplog):
    wrong_secret = "wrong-" + s3_server.secret_access_key
    storage = make_s3_storage(s3_server, secret_access_key=wrong_secret)
    with caplog.at_level(logging.DEBUG), pytest.raises(StorageError, match="access denied") as raised:
        storage.check()

    assert wrong_secret not in str(raised.value)
    assert wrong_secret not in caplog.text


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"bucket": ""}, "bucket name is empty"),
        ({"secret_access_key": None}, "both"),
        ({"attempts": 0}, "at least 1"),
        ({"multipart_part_bytes": MiB}, "at least 5 MiB"),
        ({"prefix": "a/../b"}, "invalid storage key"),
    ],
)
def test_s3_options_validated(s3_server, options, message):
    with pytest.raises(ValueError, match=message):
        make_s3_storage(s3_server, **options)


# The API with each backend.


@pytest.fixture(scope="module")
def s3_settings(service_env, s3_server):
    """API settings with the S3 backend; tests set content_delivery with model_copy."""
    return settings_from(service_env).model_copy(update={
        "storage_backend": "s3",
        "s3_bucket": s3_server.bucket,
        "s3_prefix": "api-" + uuid.uuid4().hex[:8],
        "s3_endpoint_url": s3_server.endpoint_url,
        "s3_public_endpoint_url": s3_server.public_endpoint_url,
        "s3_region": s3_server.region,
        "s3_access_key_id": s3_server.access_key_id,
        "s3_secret_access_key": SecretStr(s3_server.secret_access_key),
        "s3_addressing_style": "path",
        "presigned_url_ttl_seconds": 120,
    })


def create_completed_job(client: TestClient, headers: dict, job_id: str) -> None:
    """Write a completed job record directly, with no worker involved."""
    job = client.post("/v1/generate", json={"model": "tiny-wan", "prompt": "a red car"}, headers=headers).json()
    job["id"] = job_id
    job["status"] = "completed"
    client.app.state.jobs.create(job)


def test_api_redirects_to_presigned_url(s3_settings, s3_server, api_headers):
    settings = s3_settings.model_copy(update={"content_delivery": "redirect"})
    with TestClient(create_app(settings)) as client:
        create_completed_job(client, api_headers["alpha"], "job_s3_redirect")
        client.app.state.storage.put_bytes("job_s3_redirect.mp4", b"redirected video")
        response = client.get("/v1/jobs/job_s3_redirect/content", headers=api_headers["alpha"],
                              follow_redirects=False)

    location = response.headers["location"]
    assert response.status_code == 307
    assert urlsplit(location).netloc == urlsplit(s3_server.public_endpoint_url).netloc
    assert f"/{settings.s3_prefix}/job_s3_redirect.mp4" in location
    assert "X-Amz-Expires=120" in location
    fetched = httpx.get(location)
    assert fetched.status_code == 200
    assert fetched.content == b"redirected video"


def test_api_streams_from_s3(s3_settings, api_headers):
    data = b"streamed video " * 100_000
    with TestClient(create_app(s3_settings)) as client:
        create_completed_job(client, api_headers["alpha"], "job_s3_stream")
        client.app.state.storage.put_bytes("job_s3_stream.mp4", data)
        response = client.get("/v1/jobs/job_s3_stream/content", headers=api_headers["alpha"])

    assert response.status_code == 200
    assert response.headers["content-type"] == "video/mp4"
    assert response.headers["content-length"] == str(len(data))
    assert response.content == data


@pytest.mark.parametrize("delivery", ["redirect", "stream"])
def test_api_missing_s3_object_is_404(s3_settings, api_headers, delivery):
    settings = s3_settings.model_copy(update={"content_delivery": delivery})
    with TestClient(create_app(settings)) as client:
        create_completed_job(client, api_headers["alpha"], f"job_s3_missing_{delivery}")
        response = client.get(f"/v1/jobs/job_s3_missing_{delivery}/content", headers=api_headers["alpha"],
                              follow_redirects=False)

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "content_not_found"


def test_api_local_backend_streams_despite_redirect(service_env, api_headers):
    settings = settings_from(service_env).model_copy(update={"content_delivery": "redirect"})
    with TestClient(create_app(settings)) as client:
        create_completed_job(client, api_headers["alpha"], "job_local_redirect")
        client.app.state.storage.put_bytes("job_local_redirect.mp4", b"local video")
        response = client.get("/v1/jobs/job_local_redirect/content", headers=api_headers["alpha"],
                              follow_redirects=False)

    assert response.status_code == 200
    assert response.headers["content-length"] == str(len(b"local video"))
    assert response.content == b"local video"


def test_make_storage_requires_bucket(service_env):
    settings = settings_from(service_env).model_copy(update={"storage_backend": "s3"})
    with pytest.raises(ValueError, match="REINS_S3_BUCKET"):
        create_app(settings)


def test_expired_objects_are_removed(storage, redis_url):
    import time
    import uuid

    from redis import Redis

    from app.jobs import JobStore
    from app.reaper import remove_expired_objects
    from app.settings import Settings

    jobs = JobStore(Redis.from_url(redis_url), "retention-" + uuid.uuid4().hex[:8], ttl_seconds=600)
    live_job, expired_job = "job_" + uuid.uuid4().hex, "job_" + uuid.uuid4().hex
    jobs.redis.hset(jobs.key(live_job), "status", '"completed"')
    for job_id in (live_job, expired_job):
        storage.put_bytes(f"{job_id}.mp4", b"video")
        storage.put_bytes(f"inputs/{job_id}.png", b"image")
    time.sleep(1.1)
    removed = remove_expired_objects(jobs, storage, Settings(job_ttl_seconds=60).model_copy(update={"job_ttl_seconds": 1}))
    assert sorted(removed) == sorted([f"{expired_job}.mp4", f"inputs/{expired_job}.png"])
    assert not storage.exists(f"{expired_job}.mp4")
    assert storage.exists(f"{live_job}.mp4")
    assert storage.exists(f"inputs/{live_job}.png")
