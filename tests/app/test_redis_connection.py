"""Redis URLs: plain and Sentinel, the latter against a real redis-server running as a sentinel."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid

import pytest
from fastapi.testclient import TestClient
from redis import Redis

from app.main import create_app
from app.redis_connection import connect
from reins.processes import free_port, start_redis, stop_process, wait_for_port
from tests.conftest import TENANT_KEYS, settings_from


@pytest.fixture(scope="module")
def sentinel_url(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sentinel")
    master, master_url = start_redis(folder / "master")
    master_port = int(master_url.rsplit(":", 1)[1].split("/")[0])
    port = free_port()
    config = folder / "sentinel.conf"
    config.write_text(f"port {port}\nbind 127.0.0.1\ndir {folder}\n"
                      f"sentinel monitor reins-main 127.0.0.1 {master_port} 1\n"
                      "sentinel down-after-milliseconds reins-main 2000\n")
    sentinel = subprocess.Popen([shutil.which("redis-server"), str(config), "--sentinel"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port, 10, sentinel)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        masters = Redis(port=port).sentinel_masters()
        if "reins-main" in masters:
            break
        time.sleep(0.1)
    yield f"redis+sentinel://127.0.0.1:{port}/reins-main/0", master_port
    stop_process(sentinel)
    stop_process(master)


def test_sentinel_url_reaches_master(sentinel_url):
    url, master_port = sentinel_url
    client = connect(url)
    key = "sentinel-test-" + uuid.uuid4().hex
    client.set(key, "ok")
    assert Redis(port=master_port).get(key) == b"ok"


def test_api_runs_on_sentinel(sentinel_url, service_env):
    url, _ = sentinel_url
    settings = settings_from(service_env).model_copy(update={"redis_url": url, "key_prefix": "sent-" + uuid.uuid4().hex[:8]})
    with TestClient(create_app(settings)) as client:
        assert client.get("/readyz").json() == {"status": "ok"}
        response = client.post("/v1/generate", json={"model": "tiny-wan", "prompt": "x"},
                               headers={"Authorization": f"Bearer {TENANT_KEYS['alpha']}"})
        assert response.status_code == 202


@pytest.mark.parametrize(
    ("url", "message"),
    [("redis+sentinel://127.0.0.1:26379", "service name"), ("redis+sentinel://nohost/svc", "host:port")],
)
def test_bad_sentinel_url(url, message):
    with pytest.raises(ValueError, match=message):
        connect(url)


def test_plain_url_still_works(redis_url):
    assert connect(redis_url).ping()
