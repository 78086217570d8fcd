"""Deployment files agree with the app: queues and routes, time limits, settings, KEDA, pins, images, dashboards."""

from __future__ import annotations

import configparser
import inspect
import json
import re
import shlex
from dataclasses import fields
from pathlib import Path
from urllib.parse import urlsplit

import flower.options  # noqa: F401 - defines Flower's options on tornado's global parser
import pytest
import yaml
from kombu.transport.redis import Channel as RedisChannel
from packaging.version import Version
from tornado.options import OptionParser
from tornado.options import options as flower_options

from gpu_worker.launcher import Launcher, discover_gpus, plan_slots
from tests.conftest import REPO
from vidpipe_tasks.celery_app import TASK_ROUTES, celery_config, hard_time_limits
from vidpipe_tasks.cli import build_parser
from vidpipe_tasks.flower_app import EXTRA_COLUMNS, format_task
from vidpipe_tasks.metrics import GpuSample, VidpipeCollector
from vidpipe_tasks.settings import ALL_QUEUES, CV_QUEUE, Settings, load_settings

DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "compose"
K8S = DEPLOY / "kubernetes"
SYSTEMD = DEPLOY / "systemd"
DOCKER = DEPLOY / "docker"
FLOWER_CONFIG = DEPLOY / "flower" / "flowerconfig.py"

SETTING_NAMES = {f"VIDPIPE_{f.name.upper()}" for f in fields(Settings)}
TASK_TIME_LIMITS = hard_time_limits(load_settings({}))
LONGEST_TIME_LIMIT = max(TASK_TIME_LIMITS.values())
#: How long the CV launcher waits for its workers after SIGTERM before killing them.
LAUNCHER_STOP_WAIT_S = inspect.signature(Launcher.run).parameters["stop_timeout_s"].default
CPU_QUEUES = [q for q in ALL_QUEUES if q != CV_QUEUE]
#: Distributions a CPU image must not install (the CV stack), by normalised name prefix.
GPU_ONLY_PREFIXES = ("torch", "onnxruntime", "open-clip", "insightface", "dlib", "face-recognition", "opencv")


# --- helpers -------------------------------------------------------------------------------------------------------


def time_limit_of(queues: list[str]) -> int:
    """The largest time limit of the tasks routed to `queues`."""
    return max(TASK_TIME_LIMITS[task] for task, queue in TASK_ROUTES.items() if queue in queues)


def required_grace_s(queues: list[str]) -> float:
    """A stop must outlast the queues' time limits and, for CV workers, the launcher's own wait."""
    return max(time_limit_of(queues), LAUNCHER_STOP_WAIT_S if CV_QUEUE in queues else 0)


def worker_queues(argv: list[str]) -> list[str]:
    """The queues a command line consumes: `vidpipe worker -Q ...` (parsed by the real CLI) or the CV launcher."""
    program = Path(argv[0]).name if argv else ""
    if program == "vidpipe-gpu-worker":
        return [CV_QUEUE]  # the launcher starts its workers on the cv queue only
    if program == "vidpipe" and argv[1:2] == ["worker"]:
        return build_parser().parse_args(argv[1:]).queues.split(",")
    return []


def pin_map(path: Path) -> dict[str, str]:
    """Requirement name (normalised) -> full requirement line, for a pip requirements file."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name = re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0]
            pins[re.sub(r"[-_.]+", "-", name).lower()] = line
    return pins


def env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of an env file (compose .env, kustomize env file, systemd EnvironmentFile)."""
    pairs = [line.split("=", 1) for line in path.read_text().splitlines() if line.strip() and line[0] != "#"]
    return {key.strip(): value.strip() for key, value in pairs}


def redis_db(url: str) -> int:
    return int(urlsplit(url).path.lstrip("/") or 0)


def duration_s(text: str | int) -> float:
    """Compose's duration format ("20m", "1m30s", "90s") or a systemd time span ("1200", "20min")."""
    units = {"h": 3600, "min": 60, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+)\s*(min|ms|h|m|s)?", str(text))
    assert parts, f"not a duration: {text!r}"
    return sum(int(number) * units[unit or "s"] for number, unit in parts)


def yaml_documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


# --- docker compose ------------------------------------------------------------------------------------------------

_COMPOSE_VARIABLE = re.compile(r"\$\{(\w+)(?::?([-?])([^}]*))?\}")


def _interpolate(value: object, env: dict[str, str]) -> object:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error} with the values of .env.example."""
    if isinstance(value, dict):
        return {key: _interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [_interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match) -> str:
        name, operator, rest = match.groups()
        if env.get(name):
            return env[name]
        assert operator == "-", f"${{{name}}} has no value in .env.example and no default"
        return rest

    return _COMPOSE_VARIABLE.sub(replace, value)


@pytest.fixture(scope="module")
def compose() -> dict:
    raw = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    return _interpolate(raw, env_file(COMPOSE / ".env.example"))


def service_argv(service: dict) -> list[str]:
    entrypoint = service.get("entrypoint", [])
    return list(entrypoint) + list(service.get("command", []))


def vidpipe_services(compose: dict) -> dict[str, dict]:
    """Services running a vidpipe image."""
    return {name: s for name, s in compose["services"].items() if s.get("image", "").startswith("vidpipe-")}


# --- kubernetes ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def k8s() -> list[dict]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return [doc for name in kustomization["resources"] for doc in yaml_documents(K8S / name)]


def k8s_objects(docs: list[dict], kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def pod_containers(workload: dict) -> list[dict]:
    return workload["spec"]["template"]["spec"]["containers"]


def container_argv(container: dict) -> list[str]:
    return list(container.get("command", [])) + list(container.get("args", []))


def k8s_settings_env(docs: list[dict]) -> dict[str, str]:
    """What a vidpipe pod sees: the ConfigMap plus the Secret (from secrets.env.example)."""
    config = k8s_objects(docs, "ConfigMap")["vidpipe-config"]["data"]
    return {**config, **env_file(K8S / "secrets.env.example")}


# --- systemd -------------------------------------------------------------------------------------------------------


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read(SYSTEMD / name)
    return parser


def unit_environment(parser: configparser.ConfigParser) -> dict[str, str]:
    return dict(item.split("=", 1) for item in shlex.split(parser["Service"].get("Environment", "")))


# --- every file ----------------------------------------------------------------------------------------------------


def test_every_yaml_file_under_deploy_parses() -> None:
    files = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])
    assert len(files) >= 10
    for path in files:
        docs = yaml_documents(path)
        assert docs and all(isinstance(doc, dict) for doc in docs), path


def test_every_vidpipe_variable_named_under_deploy_is_a_real_setting() -> None:
    named = set()
    for path in [*DEPLOY.rglob("*"), REPO / ".dockerignore"]:
        if path.is_file() and "__pycache__" not in path.parts:
            named |= set(re.findall(r"\bVIDPIPE_[A-Z0-9_]+\b", path.read_text()))
    assert {"VIDPIPE_BROKER_URL", "VIDPIPE_VISIBILITY_TIMEOUT", "VIDPIPE_FLOWER_BASIC_AUTH"} <= named
    assert named <= SETTING_NAMES, sorted(named - SETTING_NAMES)


def test_visibility_timeouts_set_in_deploy_files_exceed_every_time_limit() -> None:
    pattern = re.compile(r"VIDPIPE_VISIBILITY_TIMEOUT[\"']?\s*[:=]\s*[\"']?(\d+)")
    values = {}
    for path in DEPLOY.rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts and pattern.search(path.read_text()):
            values[path.relative_to(DEPLOY).as_posix()] = [int(v) for v in pattern.findall(path.read_text())]
    assert {"compose/docker-compose.yml", "kubernetes/configmap.yaml", "systemd/vidpipe.env.example"} <= set(values)
    for name, found in values.items():
        assert all(value > LONGEST_TIME_LIMIT for value in found), (name, found, LONGEST_TIME_LIMIT)


# --- requirements and images ---------------------------------------------------------------------------------------


def test_cpu_requirements_are_pinned_like_requirements_txt_and_leave_out_the_cv_stack() -> None:
    full, cpu = pin_map(REPO / "requirements.txt"), pin_map(REPO / "requirements-cpu.txt")
    assert {"celery", "kombu", "redis", "flower", "sqlalchemy", "psycopg2-binary", "av", "scikit-image"} <= set(cpu)
    for name, line in cpu.items():
        assert "==" in line, f"{line}: not pinned"
        assert line == full.get(name), f"{line} differs from requirements.txt's {full.get(name)}"
        assert not name.startswith(GPU_ONLY_PREFIXES), f"{name} belongs to the GPU image only"


def test_cpu_dockerfile_installs_the_cpu_requirements_and_only_insightfaces_wheel() -> None:
    text = (DOCKER / "Dockerfile.cpu").read_text()
    instructions = [line for line in text.splitlines() if line and not line.startswith("#")]
    body = "\n".join(instructions)
    assert re.search(r"^FROM python:3\.11-slim", body, re.M)
    assert "pip install -r requirements-cpu.txt" in body
    assert not re.search(r"(?<![-\w])requirements\.txt", body), "the CPU image must not install requirements.txt"
    assert "torch" not in body and "onnxruntime" not in body
    # Stock faces are files inside the insightface wheel; its dependencies (onnxruntime, opencv) stay out.
    insightface = re.search(r"pip install --no-deps (insightface==\S+)", body)
    assert insightface and insightface.group(1) == pin_map(REPO / "requirements.txt")["insightface"]
    assert "pip install --no-deps -e ." in body
    assert re.search(r"^USER vidpipe$", body, re.M)


def test_gpu_dockerfile_runs_the_launcher_with_onnxruntime_swapped_for_its_gpu_build() -> None:
    body = (DOCKER / "Dockerfile.gpu").read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", body, re.M))
    assert args["CUDA_IMAGE"].startswith("nvidia/cuda:") and "runtime" in args["CUDA_IMAGE"]
    assert re.search(r"^FROM \$\{CUDA_IMAGE\}$", body, re.M)
    assert "python3.11 -m venv" in body
    assert "pip install -r requirements.txt" in body
    assert "pip uninstall -y onnxruntime" in body
    assert 'pip install --no-deps "onnxruntime-gpu==${ONNXRUNTIME_GPU_VERSION}"' in body
    # onnxruntime-gpu is published later than onnxruntime: the same major version, never a newer one.
    cpu_version = Version(pin_map(REPO / "requirements.txt")["onnxruntime"].split("==")[1])
    gpu_version = Version(args["ONNXRUNTIME_GPU_VERSION"])
    assert gpu_version.major == cpu_version.major and gpu_version <= cpu_version
    assert re.search(r'^ENTRYPOINT \["vidpipe-gpu-worker"\]$', body, re.M)
    assert re.search(r"^USER vidpipe$", body, re.M)


def _dockerignore_rules() -> list[tuple[bool, re.Pattern]]:
    rules = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keep, pattern = line.startswith("!"), line.lstrip("!").strip("/")
            regex = re.escape(pattern).replace(r"\*\*", ".*").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
            rules.append((keep, re.compile(regex)))
    return rules


def sent_to_docker(relative: str, rules: list[tuple[bool, re.Pattern]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for keep, regex in rules:
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            included = keep
    return included


def test_dockerignore_sends_every_file_the_images_copy_and_nothing_else() -> None:
    rules = _dockerignore_rules()
    sources = set()
    for dockerfile in ("Dockerfile.cpu", "Dockerfile.gpu"):
        for line in (DOCKER / dockerfile).read_text().splitlines():
            if line.startswith("COPY "):
                sources |= set(line.split()[1:-1])
    assert "requirements-cpu.txt" in sources and "vidpipe_tasks" in sources
    for source in sources:
        path = REPO / source
        files = (
            [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
        )
        assert files, source
        for file in files:
            assert sent_to_docker(file.relative_to(REPO).as_posix(), rules), file
    left_out = [".venv/bin/python", "tests/conftest.py", "vidpipe-work/vidpipe.db", "deploy/kubernetes/secrets.env"]
    left_out.append("vidpipe_tasks/__pycache__/cli.cpython-311.pyc")
    assert not [path for path in left_out if sent_to_docker(path, rules)]


def flower_config_path_in_images() -> str:
    copy = re.search(r"^COPY deploy/flower/flowerconfig\.py (\S+)$", (DOCKER / "Dockerfile.cpu").read_text(), re.M)
    assert copy, "Dockerfile.cpu copies the Flower config"
    return copy.group(1)


# --- Flower and Prometheus -----------------------------------------------------------------------------------------


def flower_parser() -> OptionParser:
    """A fresh tornado parser with Flower's own option definitions (names, types, multiple)."""
    parser = OptionParser()
    for key, option in flower_options._options.items():
        if key not in parser._options:  # a new parser already has --help
            parser.define(option.name, default=option.default, type=option.type, multiple=option.multiple)
    return parser


def test_flower_config_turns_basic_auth_on_and_bounds_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("VIDPIPE_FLOWER_PORT", "VIDPIPE_FLOWER_ADDRESS", "VIDPIPE_FLOWER_VIEWER_AUTH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VIDPIPE_FLOWER_BASIC_AUTH", "ops:s3cret")
    defaults = flower_parser()
    defaults.parse_config_file(str(FLOWER_CONFIG), final=False)
    assert defaults.port == load_settings({}).flower_port
    # Loopback unless the deployment opens it, as the settings' default.
    assert defaults.address == load_settings({}).flower_address == "127.0.0.1"

    monkeypatch.setenv("VIDPIPE_FLOWER_PORT", "5601")
    monkeypatch.setenv("VIDPIPE_FLOWER_ADDRESS", "0.0.0.0")
    monkeypatch.delenv("FLOWER_PERSISTENT", raising=False)
    parser = flower_parser()
    parser.parse_config_file(str(FLOWER_CONFIG), final=False)
    assert parser.basic_auth == ["ops:s3cret"]
    assert (parser.port, parser.address) == (5601, "0.0.0.0")
    assert 1000 <= parser.max_tasks <= 10000
    assert parser.persistent is False

    monkeypatch.setenv("FLOWER_PERSISTENT", "true")
    parser.parse_config_file(str(FLOWER_CONFIG), final=False)
    assert parser.persistent is True and parser.db


def test_flower_config_shows_vidpipes_columns_and_formats_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    from flower.views.tasks import TASK_COLUMNS

    monkeypatch.setenv("VIDPIPE_FLOWER_BASIC_AUTH", "ops:s3cret")
    parser = flower_parser()
    parser.parse_config_file(str(FLOWER_CONFIG), final=False)
    assert parser.format_task is format_task
    columns = parser.tasks_columns.split(",")
    assert set(EXTRA_COLUMNS) <= set(columns) and set(columns) <= set(TASK_COLUMNS) | set(EXTRA_COLUMNS)


@pytest.mark.parametrize("credentials", ["", "ops", "ops:", ":s3cret"])
def test_flower_config_refuses_to_load_without_a_user_and_password(
    monkeypatch: pytest.MonkeyPatch, credentials: str
) -> None:
    monkeypatch.setenv("VIDPIPE_FLOWER_BASIC_AUTH", credentials)
    with pytest.raises(RuntimeError, match="VIDPIPE_FLOWER_BASIC_AUTH"):
        flower_parser().parse_config_file(str(FLOWER_CONFIG), final=False)


def test_prometheus_scrapes_the_exporter_and_flower_with_a_viewer_login(compose: dict) -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["flower"]["metrics_path"] == jobs["vidpipe"]["metrics_path"] == "/metrics"
    flower = compose["services"]["flower"]
    port = flower["environment"]["VIDPIPE_FLOWER_PORT"]
    assert jobs["flower"]["static_configs"][0]["targets"] == [f"flower:{port}"]
    # Flower's /metrics needs a login under `vidpipe flower`: a viewer login whose password compose hands over.
    auth = jobs["flower"]["basic_auth"]
    viewers = [c for c in flower["environment"]["VIDPIPE_FLOWER_VIEWER_AUTH"].split(",") if c]
    assert f"{auth['username']}:{env_file(COMPOSE / '.env.example')['FLOWER_PROMETHEUS_PASSWORD']}" in viewers
    prometheus = compose["services"]["prometheus"]
    (secret,) = prometheus["secrets"]
    assert auth["password_file"] == f"/run/secrets/{secret}"
    assert compose["secrets"][secret]["environment"] == "FLOWER_PROMETHEUS_PASSWORD"
    exporter = compose["services"]["exporter"]
    assert service_argv(exporter)[:2] == ["vidpipe", "exporter"]
    build_parser().parse_args(service_argv(exporter)[1:])
    target = f"exporter:{exporter['environment']['VIDPIPE_EXPORTER_PORT']}"
    assert jobs["vidpipe"]["static_configs"][0]["targets"] == [target]
    assert "ports" not in exporter, "the exporter has no login: never publish it"
    assert prometheus["volumes"][0].startswith("../prometheus/prometheus.yml:")


# --- the Grafana dashboard -----------------------------------------------------------------------------------------

#: PromQL words that are not metric names: functions, aggregations, keywords.
PROMQL_WORDS = {
    "sum", "avg", "min", "max", "count", "rate", "irate", "increase", "histogram_quantile", "by", "without",
    "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset", "bool", "topk", "bottomk",
    "clamp_min", "clamp_max", "abs", "delta", "deriv", "time", "vector", "scalar", "label_replace",
}  # fmt: skip


def exported_metric_names() -> set[str]:
    """Every sample name `vidpipe exporter` can serve (counters with _total, histograms with their series)."""
    from vidpipe_tasks.db.models import Base
    from vidpipe_tasks.db.session import get_engine

    settings = load_settings({"VIDPIPE_DATABASE_URL": "sqlite://"})
    Base.metadata.create_all(get_engine(settings.database_url))
    rows = [{"queue": "cv", "depth": 0, "lists": [{"priorities": "0-2", "depth": 0}], "unacked": 0}]
    gpus = [GpuSample(0, 1, 2, 3)]
    collector = VidpipeCollector(settings, queue_depths=lambda: rows, gpu_samples=lambda: gpus)
    names = set()
    for family in collector.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(family.type, [""])
        names |= {family.name + suffix for suffix in suffixes}
    return names


def promql_metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: label matchers, ranges, strings and `by (...)` lists removed."""
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\"[^\"]*\"", " ", expr)
    bare = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", " ", bare)
    words = set(re.findall(r"(?<![\w.])[a-zA-Z_:][\w:]*", bare))
    return {w for w in words if w not in PROMQL_WORDS}


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads((DEPLOY / "grafana" / "vidpipe-dashboard.json").read_text())
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel["targets"]]


def test_the_dashboards_queries_use_only_metrics_the_exporter_exports() -> None:
    exported = exported_metric_names()
    queries = dashboard_queries()
    assert len(queries) >= 15
    used = set()
    for title, expr in queries:
        names = promql_metric_names(expr)
        assert names, f"{title}: no metric in {expr!r}"
        assert names <= exported, f"{title}: {sorted(names - exported)} not exported"
        used |= names
    # Each of the figures has a panel: queues, priority lists, scenes, durations, scores, retries and
    # redeliveries, projects, generator jobs and spend, GPU memory and utilisation.
    for name in (
        "vidpipe_queue_depth", "vidpipe_queue_list_depth", "vidpipe_scenes", "vidpipe_task_duration_seconds_bucket",
        "vidpipe_continuity_score_bucket", "vidpipe_task_redeliveries_total", "vidpipe_projects",
        "vidpipe_generation_jobs_in_flight", "vidpipe_generation_spend_usd_total", "vidpipe_gpu_memory_used_bytes",
        "vidpipe_gpu_utilization_ratio",
    ):  # fmt: skip
        assert name in used, name


def test_the_metric_name_reader_sees_through_labels_ranges_and_groupings() -> None:
    expr = 'histogram_quantile(0.95, sum by (le, task) (rate(vidpipe_x_bucket{task="a b"}[5m]))) / vidpipe_y'
    assert promql_metric_names(expr) == {"vidpipe_x_bucket", "vidpipe_y"}


def test_the_keda_example_on_a_metric_queries_an_exported_metric() -> None:
    (scaled,) = yaml_documents(K8S / "keda-cv-prometheus.yaml")
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    assert promql_metric_names(trigger["metadata"]["query"]) == {"vidpipe_queue_depth"} <= exported_metric_names()
    assert 'queue="cv"' in trigger["metadata"]["query"]


def test_compose_grafana_loads_the_dashboard_from_prometheus(compose: dict) -> None:
    grafana = compose["services"]["grafana"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in grafana["volumes"]}
    provider = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "vidpipe.yml").read_text())
    (source,) = provider["providers"]
    assert mounts["../grafana/vidpipe-dashboard.json"].startswith(source["options"]["path"] + "/")
    datasource = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"


# --- docker compose ------------------------------------------------------------------------------------------------


def test_compose_runs_redis_postgres_a_migration_flower_and_a_worker_per_queue(compose: dict) -> None:
    services = compose["services"]
    expected = {"redis", "postgres", "migrate", "flower", "worker-generation", "worker-registry", "worker-cv"}
    assert expected <= set(services)
    migrate = services["migrate"]
    assert service_argv(migrate) == ["vidpipe", "db", "upgrade"] and migrate["restart"] == "no"
    build_parser().parse_args(service_argv(migrate)[1:])
    for name, service in vidpipe_services(compose).items():
        if worker_queues(service_argv(service)) or name == "flower":
            assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully", name
            assert service["depends_on"]["redis"]["condition"] == "service_healthy", name


def test_compose_workers_consume_every_queue_exactly_once(compose: dict) -> None:
    consumed = [q for s in compose["services"].values() for q in worker_queues(service_argv(s))]
    assert sorted(consumed) == sorted(ALL_QUEUES)


def test_compose_workers_share_the_media_volume_at_the_media_root(compose: dict) -> None:
    for name, service in vidpipe_services(compose).items():
        if worker_queues(service_argv(service)) or name in ("migrate", "cli"):
            media_root = service["environment"]["VIDPIPE_MEDIA_ROOT"]
            assert f"media:{media_root}" in service["volumes"], name
    assert "media" in compose["volumes"] and "models" in compose["volumes"]


def test_compose_cv_worker_gets_nvidia_gpus_read_only_models_and_no_prefetch(compose: dict) -> None:
    cv = compose["services"]["worker-cv"]
    argv = service_argv(cv)
    assert argv[0] == "vidpipe-gpu-worker" and "--disable-prefetch" in argv
    assert argv[argv.index("--device") + 1] == "cuda"
    (device,) = cv["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert f"models:{cv['environment']['VIDPIPE_MODELS_DIR']}:ro" in cv["volumes"]
    assert cv["build"]["dockerfile"] == "deploy/docker/Dockerfile.gpu"


def test_compose_stop_grace_periods_outlast_the_time_limits_of_each_workers_queues(compose: dict) -> None:
    for name, service in compose["services"].items():
        queues = worker_queues(service_argv(service))
        if queues:
            grace = duration_s(service["stop_grace_period"])
            assert grace > required_grace_s(queues), (name, grace, required_grace_s(queues))


def test_compose_settings_build_a_valid_celery_configuration(compose: dict) -> None:
    for name, service in vidpipe_services(compose).items():
        env = {k: v for k, v in service["environment"].items() if k.startswith("VIDPIPE_")}
        assert set(env) <= SETTING_NAMES, name
        settings = load_settings(env)
        conf = celery_config(settings)  # raises when the visibility timeout does not outlast the time limits
        assert conf["broker_transport_options"]["visibility_timeout"] > LONGEST_TIME_LIMIT
        assert settings.database_url.startswith("postgresql+psycopg2://")
        assert redis_db(settings.broker_url) != redis_db(settings.result_backend), name


def test_compose_flower_requires_a_login_and_reads_the_images_flower_config(compose: dict) -> None:
    raw = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    assert raw["services"]["flower"]["environment"]["VIDPIPE_FLOWER_BASIC_AUTH"].startswith(
        "${VIDPIPE_FLOWER_BASIC_AUTH:?"
    ), "compose must refuse to start Flower without credentials"
    flower = compose["services"]["flower"]
    assert service_argv(flower) == ["vidpipe", "flower"]
    assert build_parser().parse_args(service_argv(flower)[1:]).command == "flower"
    assert flower["environment"]["FLOWER_CONF"] == flower_config_path_in_images()


# --- kubernetes ----------------------------------------------------------------------------------------------------


def test_kustomization_lists_every_manifest_but_the_optional_service_monitor() -> None:
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    optional = {"servicemonitors.yaml", "keda-cv-prometheus.yaml"}  # Prometheus Operator; KEDA on a metric instead
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", *optional}
    assert listed == present


def test_kubernetes_manifests_leave_the_namespace_to_the_operator(k8s: list[dict]) -> None:
    docs = k8s + yaml_documents(K8S / "servicemonitors.yaml") + yaml_documents(K8S / "keda-cv-prometheus.yaml")
    assert all("namespace" not in doc["metadata"] for doc in docs)


def test_kubernetes_deployments_cover_every_queue_once(k8s: list[dict]) -> None:
    consumed = [
        q
        for deployment in k8s_objects(k8s, "Deployment").values()
        for container in pod_containers(deployment)
        for q in worker_queues(container_argv(container))
    ]
    assert sorted(consumed) == sorted(ALL_QUEUES)


def test_kubernetes_grace_periods_outlast_the_time_limits_of_each_deployments_queues(k8s: list[dict]) -> None:
    for name, deployment in k8s_objects(k8s, "Deployment").items():
        queues = [q for c in pod_containers(deployment) for q in worker_queues(container_argv(c))]
        if queues:
            grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
            assert grace > required_grace_s(queues), (name, grace, required_grace_s(queues))


def test_kubernetes_cv_deployment_takes_one_gpu_and_disables_prefetch(k8s: list[dict]) -> None:
    cv = k8s_objects(k8s, "Deployment")["vidpipe-worker-cv"]
    (container,) = pod_containers(cv)
    argv = container_argv(container)
    assert argv[:3] == ["vidpipe-gpu-worker", "--device", "cuda"] and "--disable-prefetch" in argv
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "replicas" not in cv["spec"], "KEDA owns the cv replica count"
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["models"]["readOnly"] is True


def test_kubernetes_workers_mount_the_shared_media_claim_at_the_media_root(k8s: list[dict]) -> None:
    media_root = k8s_settings_env(k8s)["VIDPIPE_MEDIA_ROOT"]
    claims = k8s_objects(k8s, "PersistentVolumeClaim")
    assert claims["vidpipe-media"]["spec"]["accessModes"] == ["ReadWriteMany"]
    for name, workload in {**k8s_objects(k8s, "Deployment"), **k8s_objects(k8s, "Job")}.items():
        if name in ("vidpipe-flower", "vidpipe-beat", "vidpipe-exporter"):  # none reads media
            continue
        volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
        (container,) = pod_containers(workload)
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert volumes[mounts[media_root]]["persistentVolumeClaim"]["claimName"] == "vidpipe-media", name


def test_kubernetes_settings_build_a_valid_celery_configuration(k8s: list[dict]) -> None:
    env = k8s_settings_env(k8s)
    vidpipe_env = {k: v for k, v in env.items() if k.startswith("VIDPIPE_")}
    assert set(vidpipe_env) <= SETTING_NAMES
    settings = load_settings(vidpipe_env)
    assert celery_config(settings)["broker_transport_options"]["visibility_timeout"] > LONGEST_TIME_LIMIT
    assert redis_db(settings.broker_url) != redis_db(settings.result_backend)
    job = k8s_objects(k8s, "Job")["vidpipe-migrate"]
    (container,) = pod_containers(job)
    build_parser().parse_args(container_argv(container)[1:])
    assert container_argv(container) == ["vidpipe", "db", "upgrade"]


def kombu_priority_lists(queue: str, transport_options: dict) -> list[str]:
    """The Redis keys kombu's Redis transport uses for `queue`, one per priority step (no connection made)."""
    assert "global_keyprefix" not in transport_options, "a key prefix would rename every list"
    channel = object.__new__(RedisChannel)  # _q_for_pri needs only class attributes: sep, priority_steps
    steps = transport_options.get("priority_steps", RedisChannel.priority_steps)
    return [channel._q_for_pri(queue, step) for step in steps]


def test_keda_triggers_watch_kombus_priority_lists_of_the_cv_queue(k8s: list[dict]) -> None:
    settings = load_settings({k: v for k, v in k8s_settings_env(k8s).items() if k.startswith("VIDPIPE_")})
    expected = kombu_priority_lists(CV_QUEUE, celery_config(settings)["broker_transport_options"])
    assert expected == ["cv", "cv\x06\x163", "cv\x06\x166", "cv\x06\x169"]

    (scaled,) = k8s_objects(k8s, "ScaledObject").values()
    assert scaled["spec"]["scaleTargetRef"]["name"] == "vidpipe-worker-cv"
    triggers = scaled["spec"]["triggers"]
    assert {t["type"] for t in triggers} == {"redis"}
    assert [t["metadata"]["listName"] for t in triggers] == expected
    for trigger in triggers:
        assert int(trigger["metadata"]["databaseIndex"]) == redis_db(settings.broker_url)


def test_keda_scales_on_the_sum_of_the_lists_with_a_long_cooldown(k8s: list[dict]) -> None:
    (scaled,) = k8s_objects(k8s, "ScaledObject").values()
    names = [t["name"] for t in scaled["spec"]["triggers"]]
    formula = scaled["spec"]["advanced"]["scalingModifiers"]["formula"]
    assert sorted(re.split(r"\s*\+\s*", formula.strip())) == sorted(names)
    assert scaled["spec"]["cooldownPeriod"] >= 600
    assert scaled["spec"]["minReplicaCount"] == 0


def test_keda_reaches_the_brokers_redis_through_the_secret(k8s: list[dict]) -> None:
    secrets = env_file(K8S / "secrets.env.example")
    (scaled,) = k8s_objects(k8s, "ScaledObject").values()
    auth_names = {t["authenticationRef"]["name"] for t in scaled["spec"]["triggers"]}
    auths = k8s_objects(k8s, "TriggerAuthentication")
    assert auth_names <= set(auths)
    refs = {ref["parameter"]: ref for name in auth_names for ref in auths[name]["spec"]["secretTargetRef"]}
    assert {ref["name"] for ref in refs.values()} == {"vidpipe-secrets"}
    assert all(ref["key"] in secrets for ref in refs.values())
    broker = urlsplit(secrets["VIDPIPE_BROKER_URL"])
    assert secrets[refs["address"]["key"]] == f"{broker.hostname}:{broker.port}"
    assert secrets[refs["password"]["key"]] == (broker.password or "")
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    (generated,) = kustomization["secretGenerator"]
    assert generated["name"] == "vidpipe-secrets" and kustomization["generatorOptions"]["disableNameSuffixHash"]


def test_kubernetes_flower_takes_its_logins_from_the_secret_and_is_scraped_with_a_viewer(k8s: list[dict]) -> None:
    deployment = k8s_objects(k8s, "Deployment")["vidpipe-flower"]
    (container,) = pod_containers(deployment)
    assert container_argv(container) == ["vidpipe", "flower"]
    assert build_parser().parse_args(container_argv(container)[1:]).command == "flower"
    env = {e["name"]: e for e in container["env"]}
    secrets = env_file(K8S / "secrets.env.example")
    for name in ("VIDPIPE_FLOWER_BASIC_AUTH", "VIDPIPE_FLOWER_VIEWER_AUTH"):
        secret_ref = env[name]["valueFrom"]["secretKeyRef"]
        assert secret_ref["key"] in secrets and secret_ref["name"] == "vidpipe-secrets"
    assert env["FLOWER_CONF"]["value"] == flower_config_path_in_images()
    settings = k8s_settings_env(k8s)
    port = int(settings["VIDPIPE_FLOWER_PORT"])
    assert container["ports"][0]["containerPort"] == port
    assert settings["VIDPIPE_FLOWER_ADDRESS"] == "0.0.0.0"  # inside the pod; the Service is ClusterIP

    service = k8s_objects(k8s, "Service")["vidpipe-flower"]
    assert service["spec"]["type"] == "ClusterIP" and service["spec"]["ports"][0]["port"] == port
    # Annotation discovery cannot log in, and Flower's /metrics needs one: no prometheus.io annotations.
    assert not any(k.startswith("prometheus.io/") for k in service["metadata"].get("annotations", {}))
    monitors = {doc["metadata"]["name"]: doc for doc in yaml_documents(K8S / "servicemonitors.yaml")}
    (endpoint,) = monitors["vidpipe-flower"]["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"] and endpoint["path"] == "/metrics"
    assert monitors["vidpipe-flower"]["spec"]["selector"]["matchLabels"].items() <= service["spec"]["selector"].items()
    user, password = (endpoint["basicAuth"][k] for k in ("username", "password"))
    assert {user["name"], password["name"]} == {"vidpipe-secrets"}
    login = f"{secrets[user['key']]}:{secrets[password['key']]}"
    assert login in secrets["VIDPIPE_FLOWER_VIEWER_AUTH"].split(","), "the scrape login must be a viewer"


def test_kubernetes_exporter_serves_the_database_and_broker_metrics_to_prometheus(k8s: list[dict]) -> None:
    deployment = k8s_objects(k8s, "Deployment")["vidpipe-exporter"]
    (container,) = pod_containers(deployment)
    argv = container_argv(container)
    assert argv[:2] == ["vidpipe", "exporter"]
    assert build_parser().parse_args(argv[1:]).sources == "database,broker"
    settings = k8s_settings_env(k8s)
    port = int(settings["VIDPIPE_EXPORTER_PORT"])
    assert container["ports"][0]["containerPort"] == port and settings["VIDPIPE_EXPORTER_ADDRESS"] == "0.0.0.0"
    service = k8s_objects(k8s, "Service")["vidpipe-exporter"]
    annotations = service["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) == port == service["spec"]["ports"][0]["port"]
    monitors = {doc["metadata"]["name"]: doc for doc in yaml_documents(K8S / "servicemonitors.yaml")}
    (endpoint,) = monitors["vidpipe-exporter"]["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"]


# --- systemd -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "vidpipe-worker@.service",
        "vidpipe-cv@.service",
        "vidpipe-flower.service",
        "vidpipe-beat.service",
        "vidpipe-exporter.service",
    ],
)
def test_systemd_unit_reads_the_shared_env_file_and_stops_with_sigterm(name: str) -> None:
    parsed = unit(name)
    assert {"Unit", "Service", "Install"} <= set(parsed.sections())
    service = parsed["Service"]
    assert service["EnvironmentFile"] == "/etc/vidpipe/vidpipe.env"
    assert service["KillSignal"] == "SIGTERM" and service["Restart"] == "on-failure"
    assert service["User"] == "vidpipe" and service["ExecStart"].startswith("/")
    assert parsed["Install"]["WantedBy"] == "multi-user.target"


def test_systemd_worker_template_runs_its_instances_queue_and_outlasts_its_time_limits() -> None:
    service = unit("vidpipe-worker@.service")["Service"]
    for queue in CPU_QUEUES:
        argv = shlex.split(service["ExecStart"].replace("%i", queue))
        assert worker_queues(argv) == [queue]
    assert duration_s(service["TimeoutStopSec"]) > required_grace_s(CPU_QUEUES)


def test_systemd_cv_template_pins_one_gpu_per_instance_and_outlasts_the_launchers_wait() -> None:
    service = unit("vidpipe-cv@.service")["Service"]
    assert unit_environment(unit("vidpipe-cv@.service"))["CUDA_VISIBLE_DEVICES"] == "%i"
    argv = shlex.split(service["ExecStart"])
    assert Path(argv[0]).name == "vidpipe-gpu-worker"
    options = dict(zip(argv[1::2], argv[2::2], strict=False))
    assert options["--device"] == "cuda" and options["--processes"] == "1"
    # Instance 3 -> the launcher starts exactly one worker, on GPU 3.
    (slot,) = plan_slots("cuda", int(options["--processes"]), discover_gpus({"CUDA_VISIBLE_DEVICES": "3"}))
    assert slot.name == "cv-gpu3" and slot.env["CUDA_VISIBLE_DEVICES"] == "3"
    assert duration_s(service["TimeoutStopSec"]) > required_grace_s([CV_QUEUE])


def test_every_deploy_target_runs_exactly_one_beat_for_the_recovery_sweep(compose: dict, k8s: list[dict]) -> None:
    beats = [n for n, s in vidpipe_services(compose).items() if service_argv(s) == ["vidpipe", "beat"]]
    assert beats == ["beat"] and compose["services"]["beat"]["restart"] == "unless-stopped"
    (deployment,) = [
        d for d in k8s_objects(k8s, "Deployment").values() if container_argv(pod_containers(d)[0])[1:] == ["beat"]
    ]
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    argv = shlex.split(unit("vidpipe-beat.service")["Service"]["ExecStart"])
    assert Path(argv[0]).name == "vidpipe" and build_parser().parse_args(argv[1:]).command == "beat"


def test_systemd_flower_unit_runs_vidpipe_flower() -> None:
    argv = shlex.split(unit("vidpipe-flower.service")["Service"]["ExecStart"])
    assert Path(argv[0]).name == "vidpipe" and argv[1:] == ["flower"]
    assert build_parser().parse_args(argv[1:]).command == "flower"


def test_systemd_env_example_builds_a_valid_production_configuration() -> None:
    env = env_file(SYSTEMD / "vidpipe.env.example")
    assert set(env) <= SETTING_NAMES
    settings = load_settings(env)
    assert settings.is_redis_broker and settings.database_url.startswith("postgresql+psycopg2://")
    assert celery_config(settings)["broker_transport_options"]["visibility_timeout"] > LONGEST_TIME_LIMIT
    assert redis_db(settings.broker_url) != redis_db(settings.result_backend)
