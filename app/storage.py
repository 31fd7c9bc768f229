"""Video storage behind one interface: a local folder (the default) or an S3-compatible object store."""

from __future__ import annotations

import functools
import logging
import mimetypes
import os
import random
import re
import shutil
import tempfile
import time
from datetime import datetime, timedelta, timezone
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError, SSLError
from botocore.exceptions import ConnectionError as BotoConnectionError

if TYPE_CHECKING:
    from app.settings import Settings

logger = logging.getLogger(__name__)

_KEY = re.compile(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*")

# SigV4 presigned URLs are valid for at most 7 days.
MAX_PRESIGNED_URL_TTL_SECONDS = 7 * 24 * 3600

T = TypeVar("T")


def video_key(job_id: str) -> str:
    """Return the storage key of a job's video."""
    return f"{job_id}.mp4"


def input_image_key(job_id: str) -> str:
    """Return the storage key of a job's input image, as fitted to the video size by the API."""
    return f"inputs/{job_id}.png"


def validate_key(key: str) -> str:
    """Return the key unchanged, or raise ValueError unless it is slash-separated names of [A-Za-z0-9_.-] other
    than "." and ".."."""
    if not _KEY.fullmatch(key) or any(part in (".", "..") for part in key.split("/")):
        raise ValueError(f"invalid storage key {key!r}: use slash-separated names of letters, digits, '_', '.', '-'")
    return key


def iter_chunks(stream: BinaryIO, chunk_bytes: int = 1024 * 1024) -> Iterator[bytes]:
    """Yield the stream's bytes in chunks, then close it."""
    try:
        while chunk := stream.read(chunk_bytes):
            yield chunk
    finally:
        stream.close()


class StorageError(RuntimeError):
    """The storage backend failed or is unreachable."""


class Storage(Protocol):
    """Object store for videos and input images. Keys are relative, slash-separated names such as `job_ab12.mp4`.

    Every method raises ValueError for an invalid key. A reader never sees a half-written object.
    """

    def put_file(self, key: str, path: Path) -> None: ...

    def put_bytes(self, key: str, data: bytes) -> None: ...

    def open(self, key: str) -> BinaryIO | None:
        """Open the object for reading, or return None if it does not exist. The caller closes the file object."""
        ...

    def size(self, key: str) -> int | None:
        """Return the object's size in bytes, or None if it does not exist."""
        ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None:
        """Delete the object. Deleting an absent key is not an error."""
        ...

    def presigned_url(self, key: str, expires_seconds: int) -> str | None:
        """Return a URL that lets anyone GET the object until it expires, or None if the backend has no such URLs."""
        ...

    def keys_older_than(self, seconds: float) -> Iterator[str]:
        """Yield the keys of objects last written more than `seconds` ago."""
        ...

    def check(self) -> None:
        """Raise StorageError, with the cause, if the backend cannot be used."""
        ...


class LocalStorage:
    """Stores objects as files under one folder; writes are atomic (temporary file, then rename)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def put_file(self, key: str, path: Path) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=".upload-")
        os.close(handle)
        try:
            shutil.copyfile(path, temporary)
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def put_bytes(self, key: str, data: bytes) -> None:
        with tempfile.NamedTemporaryFile(prefix="reins-upload-") as handle:
            handle.write(data)
            handle.flush()
            self.put_file(key, Path(handle.name))

    def open(self, key: str) -> BinaryIO | None:
        try:
            return self._path(key).open("rb")
        except (FileNotFoundError, IsADirectoryError):
            return None

    def size(self, key: str) -> int | None:
        path = self._path(key)
        return path.stat().st_size if path.is_file() else None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def keys_older_than(self, seconds: float) -> Iterator[str]:
        cutoff = time.time() - seconds
        if not self.root.is_dir():
            return
        for path in self.root.rglob("*"):
            if path.is_file() and not path.name.startswith(".") and path.stat().st_mtime < cutoff:
                yield path.relative_to(self.root).as_posix()

    def presigned_url(self, key: str, expires_seconds: int) -> None:
        """Return None: the API streams local files itself."""
        validate_key(key)

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StorageError(f"storage folder {self.root} cannot be created: {error}") from error
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise StorageError(f"storage folder {self.root} is not writable by this process")


def _is_transient(error: Exception) -> bool:
    """Return True for errors worth retrying: connection failures, timeouts and 5xx responses."""
    if isinstance(error, SSLError):
        return False
    if isinstance(error, (BotoConnectionError, HTTPClientError)):
        return True
    if isinstance(error, ClientError):
        return error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) >= 500
    return False


def _status_code(error: ClientError) -> int:
    return error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)


class S3Storage:
    """Stores objects in one bucket of an S3-compatible store (AWS S3, MinIO, SeaweedFS), under an optional prefix.

    Each request (uploads, reads and deletes) is tried up to `attempts` times on connection errors, timeouts and
    5xx responses, with exponential backoff and jitter. `check()` tries once. Files larger than
    `multipart_threshold_bytes` are sent as a multipart upload, which is aborted if any part fails, so the object
    appears only once complete. Presigned URLs are signed for `public_endpoint_url`, the address that clients use,
    because the host is part of the SigV4 signature.
    """

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint_url: str | None = None,
        public_endpoint_url: str | None = None,
        region: str = "us-east-1",
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        addressing_style: str = "auto",
        attempts: int = 4,
        retry_base_seconds: float = 0.5,
        retry_max_seconds: float = 20.0,
        multipart_threshold_bytes: int = 64 * 1024 * 1024,
        multipart_part_bytes: int = 16 * 1024 * 1024,
        connect_timeout_seconds: float = 5.0,
        read_timeout_seconds: float = 60.0,
    ) -> None:
        if not bucket:
            raise ValueError("S3 bucket name is empty; set REINS_S3_BUCKET")
        if (access_key_id is None) != (secret_access_key is None):
            raise ValueError("set both the S3 access key id and the secret access key, or neither")
        if attempts < 1:
            raise ValueError(f"S3 attempts must be at least 1, got {attempts}")
        if multipart_part_bytes < 5 * 1024 * 1024:
            raise ValueError(f"S3 multipart part size must be at least 5 MiB, got {multipart_part_bytes} bytes")
        prefix = prefix.strip("/")
        if prefix:
            validate_key(prefix)
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint_url = endpoint_url
        self.public_endpoint_url = public_endpoint_url or endpoint_url
        self.attempts = attempts
        self.retry_base_seconds = retry_base_seconds
        self.retry_max_seconds = retry_max_seconds
        self.multipart_threshold_bytes = multipart_threshold_bytes
        self.multipart_part_bytes = multipart_part_bytes

        # Without explicit keys, boto3 uses its default credential chain (environment, config files, instance role).
        session = boto3.session.Session(
            aws_access_key_id=access_key_id, aws_secret_access_key=secret_access_key, region_name=region
        )
        # botocore's own retries are off, so that `attempts` is the exact number of tries of each request.
        config = Config(
            region_name=region,
            signature_version="s3v4",
            s3={"addressing_style": addressing_style},
            retries={"total_max_attempts": 1},
            connect_timeout=connect_timeout_seconds,
            read_timeout=read_timeout_seconds,
        )
        self.client = session.client("s3", endpoint_url=endpoint_url, config=config)
        if self.public_endpoint_url == endpoint_url:
            self.presign_client = self.client
        else:
            self.presign_client = session.client("s3", endpoint_url=self.public_endpoint_url, config=config)

    def object_key(self, key: str) -> str:
        """Return the S3 object key of a storage key: the prefix, a slash, then the key."""
        validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _request(self, action: str, key: str, call: Callable[[], T]) -> T:
        """Run one S3 request with retries, and raise StorageError once it fails for good."""
        for attempt in range(1, self.attempts + 1):
            try:
                return call()
            except (BotoCoreError, ClientError) as error:
                if not _is_transient(error):
                    raise StorageError(f"S3 {action} of {key!r} in bucket {self.bucket!r} failed: {error}") from error
                if attempt == self.attempts:
                    raise StorageError(
                        f"S3 {action} of {key!r} in bucket {self.bucket!r} failed after {attempt} attempts: {error}"
                    ) from error
                delay = min(self.retry_max_seconds, self.retry_base_seconds * 2 ** (attempt - 1))
                delay = delay / 2 + random.uniform(0, delay / 2)
                logger.warning(
                    "S3 %s of %r failed (attempt %d of %d), retrying in %.2f s: %s",
                    action, key, attempt, self.attempts, delay, error,
                )
                time.sleep(delay)
        raise AssertionError("unreachable: the loop returns or raises")

    def put_file(self, key: str, path: Path) -> None:
        name = self.object_key(key)
        size_bytes = Path(path).stat().st_size
        if size_bytes > self.multipart_threshold_bytes:
            self._put_multipart(name, Path(path), size_bytes)
            return

        def put() -> None:
            # The file is reopened on each attempt, so a retry sends the body from its start.
            with Path(path).open("rb") as body:
                self.client.put_object(Bucket=self.bucket, Key=name, Body=body, ContentType=_content_type(name))

        self._request("upload", name, put)

    def put_bytes(self, key: str, data: bytes) -> None:
        name = self.object_key(key)
        self._request(
            "upload",
            name,
            lambda: self.client.put_object(Bucket=self.bucket, Key=name, Body=data, ContentType=_content_type(name)),
        )

    def _put_multipart(self, name: str, path: Path, size_bytes: int) -> None:
        """Upload a large file in parts. The object appears only when the upload completes. On failure the upload
        is aborted, so that the store discards the parts sent so far."""
        created = self._request(
            "multipart upload start",
            name,
            lambda: self.client.create_multipart_upload(Bucket=self.bucket, Key=name, ContentType=_content_type(name)),
        )
        upload_id = created["UploadId"]
        try:
            parts = []
            with path.open("rb") as source:
                for number, offset in enumerate(range(0, size_bytes, self.multipart_part_bytes), start=1):
                    source.seek(offset)
                    data = source.read(self.multipart_part_bytes)
                    upload_part = functools.partial(
                        self.client.upload_part,
                        Bucket=self.bucket, Key=name, UploadId=upload_id, PartNumber=number, Body=data,
                    )
                    response = self._request(f"upload of part {number}", name, upload_part)
                    parts.append({"PartNumber": number, "ETag": response["ETag"]})
            self._request(
                "multipart upload completion",
                name,
                lambda: self.client.complete_multipart_upload(
                    Bucket=self.bucket, Key=name, UploadId=upload_id, MultipartUpload={"Parts": parts}
                ),
            )
        except BaseException:
            self._abort_multipart(name, upload_id)
            raise

    def _abort_multipart(self, name: str, upload_id: str) -> None:
        try:
            self._request(
                "multipart upload abort",
                name,
                lambda: self.client.abort_multipart_upload(Bucket=self.bucket, Key=name, UploadId=upload_id),
            )
        except StorageError as error:
            # The object never appeared, but the parts stay in the bucket until a lifecycle rule removes them.
            logger.error("S3 multipart upload %s of %r could not be aborted: %s", upload_id, name, error)

    def open(self, key: str) -> BinaryIO | None:
        name = self.object_key(key)

        def get():
            try:
                return self.client.get_object(Bucket=self.bucket, Key=name)["Body"]
            except ClientError as error:
                if _status_code(error) == 404:
                    return None
                raise

        return self._request("download", name, get)

    def size(self, key: str) -> int | None:
        name = self.object_key(key)

        def head() -> int | None:
            try:
                return self.client.head_object(Bucket=self.bucket, Key=name)["ContentLength"]
            except ClientError as error:
                if _status_code(error) == 404:
                    return None
                raise

        return self._request("metadata read", name, head)

    def exists(self, key: str) -> bool:
        return self.size(key) is not None

    def delete(self, key: str) -> None:
        name = self.object_key(key)
        self._request("delete", name, lambda: self.client.delete_object(Bucket=self.bucket, Key=name))

    def keys_older_than(self, seconds: float) -> Iterator[str]:
        cutoff = datetime.now(timezone.utc) - timedelta(seconds=seconds)
        paginator = self.client.get_paginator("list_objects_v2")
        listing = {"Bucket": self.bucket, **({"Prefix": self.prefix + "/"} if self.prefix else {})}
        for page in paginator.paginate(**listing):
            for item in page.get("Contents", []):
                if item["LastModified"] < cutoff:
                    name = item["Key"]
                    yield name[len(self.prefix) + 1:] if self.prefix else name

    def presigned_url(self, key: str, expires_seconds: int) -> str:
        """Return a GET URL for the object on the public endpoint. Signing is local: no request is sent."""
        if not 1 <= expires_seconds <= MAX_PRESIGNED_URL_TTL_SECONDS:
            raise ValueError(
                f"presigned URL lifetime must be 1 to {MAX_PRESIGNED_URL_TTL_SECONDS} seconds, got {expires_seconds}"
            )
        return self.presign_client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self.object_key(key)}, ExpiresIn=expires_seconds
        )

    def check(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as error:
            status = _status_code(error)
            reason = {403: "access denied (check the access key and secret)", 404: "bucket not found"}.get(
                status, f"HTTP {status}"
            )
            raise StorageError(
                f"S3 bucket {self.bucket!r} at {self.endpoint_url or 'AWS'} is not usable: {reason}: {error}"
            ) from error
        except BotoCoreError as error:
            raise StorageError(
                f"S3 endpoint {self.endpoint_url or 'AWS'} is unreachable (bucket {self.bucket!r}): {error}"
            ) from error


def _content_type(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def make_storage(settings: Settings) -> Storage:
    """Build the storage backend that the settings select."""
    if settings.storage_backend == "local":
        return LocalStorage(settings.storage_dir)
    secret = settings.s3_secret_access_key.get_secret_value()
    return S3Storage(
        settings.s3_bucket,
        prefix=settings.s3_prefix,
        endpoint_url=settings.s3_endpoint_url or None,
        public_endpoint_url=settings.s3_public_endpoint_url or None,
        region=settings.s3_region,
        access_key_id=settings.s3_access_key_id or None,
        secret_access_key=secret or None,
        addressing_style=settings.s3_addressing_style,
        attempts=settings.s3_upload_attempts,
    )
