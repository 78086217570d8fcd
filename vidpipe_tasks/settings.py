"""Typed, frozen settings built once from the environment (VIDPIPE_*), with the embedded default."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from vidpipe_tasks.limits import InputLimits

#: Queue names; routes and deploy files are derived from these.
GENERATION_QUEUE = "generation"
CV_QUEUE = "cv"
REGISTRY_QUEUE = "registry"
ALL_QUEUES = (GENERATION_QUEUE, CV_QUEUE, REGISTRY_QUEUE)

#: Allowed values of the enumerated settings.
CHOICES: dict[str, tuple[str, ...]] = {
    "face_engine": ("auto", "insightface", "dlib-offline"),
    "embedder": ("auto", "open_clip", "none"),
    "cv_device": ("auto", "cuda", "cpu"),
    "comfyui_choice": ("least-queued", "first-up"),
    "content_policy": ("fail-project", "skip-scene"),
    "log_format": ("text", "json"),
}


#: Limits that must be positive.
LIMIT_FIELDS = (
    "max_input_bytes",
    "max_storyboard_bytes",
    "max_nesting_depth",
    "max_reference_bytes",
    "max_reference_pixels",
    "max_project_scenes",
    "max_project_seconds",
    "max_project_pixels",
    "max_batch_projects",
    "max_batch_seconds",
)


@dataclass(frozen=True)
class Settings:
    """Everything configurable, in one place.

    The embedded default keeps every moving part under one work folder (`home`): a SQLite
    database, kombu's `filesystem://` broker, Celery's `file://` result backend and the media root.
    Production points the same fields at Redis and PostgreSQL.
    """

    home: Path
    database_url: str
    broker_url: str
    result_backend: str
    media_root: Path
    #: Face engine for analysis: "auto" (insightface when its model pack is staged, else offline),
    #: "insightface" or "dlib-offline".
    face_engine: str = "auto"
    #: Image embedder for visual continuity and asset crops: "auto" (open_clip when its weights are
    #: staged), "open_clip" or "none".
    embedder: str = "auto"
    #: Where `vidpipe models stage` puts weights and engines look for them (never downloaded at task time).
    models_dir: Path = Path("models")
    #: insightface model pack (a folder under models_dir/insightface with the buffalo_l layout).
    insightface_pack: str = "buffalo_l"
    #: open_clip architecture; its weights are models_dir/open_clip/<clip_model>.pt unless clip_weights is set.
    clip_model: str = "ViT-B-32"
    #: Explicit open_clip state-dict path (empty: the staged default above).
    clip_weights: str = ""
    #: Device for CV models: "auto" (CUDA when the worker has a GPU), "cuda" or "cpu".
    cv_device: str = "auto"
    #: Match thresholds per engine, on the [0, 1] similarity scale of vidpipe_tasks.similarity.
    insightface_threshold: float = 0.35
    dlib_threshold: float = 0.4
    #: Batch sizes: frames per detector/recognizer call, crops per image-embedder call.
    detect_batch: int = 16
    embed_batch: int = 32
    #: Clip generator name ("procedural" is built in).
    generator: str = "procedural"
    #: Broker poll interval for the filesystem transport, seconds (hop latency is about half of it).
    poll_interval: float = 0.1
    #: Frames sampled per clip for analysis (evenly spaced plus motion-delta frames).
    analysis_max_frames: int = 12
    #: Keep consumed broker messages in broker/processed (tests use it to audit routing).
    store_processed: bool = False
    #: The chain's last link also exports the completed project to media/projects/<id>/final.mp4
    #: (vidpipe export's defaults); raise finalize_time_limit for long projects.
    export_on_finish: bool = False
    #: Hard time limits of the two long tasks, seconds (the others are fixed in celery_app); each task
    #: first gets a soft limit at 90 % of it. Raise them for long or high-resolution scenes.
    generation_time_limit: int = 900
    analysis_time_limit: int = 900
    #: Hard time limits of the registry commit and of the chain's last link, seconds (they bound the
    #: visibility-timeout floor together with the two above).
    registry_time_limit: int = 120
    finalize_time_limit: int = 60
    #: How long a task keeps retrying a transient infrastructure error (broker, result backend or database
    #: down) before it gives up, seconds; publishing the next link of a chain retries for as long.
    transient_retry_window: int = 300
    #: Exponential backoff between those retries: first delay and cap, seconds (with full jitter).
    retry_backoff_base: float = 1.0
    retry_backoff_max: float = 15.0
    #: A running task refreshes its project's lease every `heartbeat_interval` seconds; a project whose
    #: lease is older than `lease_ttl` with nothing queued is a lost chain.
    heartbeat_interval: float = 5.0
    lease_ttl: float = 20.0
    #: How often the beat-driven recovery sweep looks for lost chains, seconds (a lost chain is confirmed
    #: on two sweeps before it is resumed).
    recovery_interval: float = 10.0
    #: A scene task interrupted this many times (worker lost mid-run) fails its project: a poison scene.
    max_task_crashes: int = 5
    #: A project recovered automatically this many times fails instead of being resumed again.
    max_recoveries: int = 10
    #: Worker and beat logs: "text" (Celery's format) or "json" (one JSON object per line with project,
    #: scene, task id and worker, for log shippers; docs/operations.md "Logs").
    log_format: str = "text"
    #: Redis visibility timeout, seconds: set on the broker, the result backend and the app, and kept
    #: above every task's time limit so a long analysis is never redelivered while it runs.
    visibility_timeout: int = 3600
    #: Flower basic auth as "user:password" (Flower refuses to start its API without it).
    flower_basic_auth: str = ""
    #: Port Flower listens on.
    flower_port: int = 5555
    #: Address Flower listens on: loopback unless a deployment sets it (containers: 0.0.0.0 behind their network).
    flower_address: str = "127.0.0.1"
    #: Flower viewer logins, "user:password" comma-separated: they see every page and the API, /metrics
    #: included, and every control action (shutdown, pool, revoke, rate limit, ...) is refused for them.
    flower_viewer_auth: str = field(default="", repr=False)
    #: `vidpipe exporter` (Prometheus metrics of vidpipe itself, docs/operations.md "Metrics"): address and port.
    exporter_address: str = "127.0.0.1"
    exporter_port: int = 9808
    #: Input limits and quotas (docs/storyboard.md "Limits and quotas"); see vidpipe_tasks.limits.InputLimits.
    #: Folders, besides each storyboard's own, that reference images may come from (separated by ":").
    reference_roots: str = ""
    max_input_bytes: int = InputLimits.max_input_bytes
    max_storyboard_bytes: int = InputLimits.max_storyboard_bytes
    max_nesting_depth: int = InputLimits.max_nesting_depth
    max_reference_bytes: int = InputLimits.max_reference_bytes
    max_reference_pixels: int = InputLimits.max_reference_pixels
    max_project_scenes: int = InputLimits.max_project_scenes
    max_project_seconds: float = InputLimits.max_project_seconds
    max_project_pixels: int = InputLimits.max_project_pixels
    max_batch_projects: int = InputLimits.max_batch_projects
    max_batch_seconds: float = InputLimits.max_batch_seconds
    # --- Remote generators (issue 9): ComfyUI and Veo, provider jobs, limits and prices. ---
    #: ComfyUI servers, comma separated base URLs (e.g. "http://gpu1:8188,http://gpu2:8188").
    comfyui_servers: str = ""
    #: API-format workflow template for ComfyUI (empty: the shipped Wan 2.2 image-to-video template).
    comfyui_template: str = ""
    #: How a ComfyUI server is chosen for a new job: "least-queued" (GET /queue on each) or "first-up".
    comfyui_choice: str = "least-queued"
    #: Veo model (Gemini API), e.g. "veo-3.0-generate-001".
    veo_model: str = "veo-3.0-generate-001"
    #: Gemini API key (never logged: Settings' repr hides it).
    veo_api_key: str = field(default="", repr=False)
    #: Gemini API base URL (empty: the SDK's default); tests point it at the fake.
    veo_base_url: str = ""
    #: Price per generated second, USD, as "provider[:model]=price" pairs, comma separated.
    generation_prices: str = "veo:veo-3.0-generate-001=0.40,veo:veo-3.0-fast-generate-001=0.15,veo=0.40,comfyui=0.02"
    #: Most provider jobs in flight at once per provider, across all workers.
    generation_max_concurrent: int = 4
    #: Most submissions per minute per provider, across all workers.
    generation_submits_per_minute: int = 30
    #: Seconds a scene's provider job may take from its first submission before the scene fails.
    scene_deadline_s: int = 1800
    #: Seconds between polls of a provider job (the task is re-queued with this countdown in between).
    generation_poll_s: float = 15.0
    #: What a content-policy block does: "fail-project" or "skip-scene" (the chain goes on without it).
    content_policy: str = "fail-project"
    # --- Quality measurement (issue 12): generator imperfection and the enrichment switch. ---
    #: Procedural generator imperfection (docs/generators.md "Imperfection"): the probability, per clip
    #: and character, of identity drift (a look-alike or perturbed face) and of a declared character
    #: missing; per clip, of one extra person. All 0 (the default): the generator never fails.
    imperfection_drift: float = 0.0
    imperfection_missing: float = 0.0
    imperfection_extra: float = 0.0
    #: Mixed into every imperfection draw (which is otherwise a function of project, scene and request seed).
    imperfection_seed: int = 0
    #: Progressive enrichment: faces registered from scene N become references for scene N+1. Off, the
    #: extracted assets are still registered and matched, but never chosen as a generation reference.
    enrichment: bool = True
    # --- Quality gate and candidates (issue 12, docs/quality.md); a storyboard's `quality:` overrides them. ---
    #: A scene whose kept attempt scores below either minimum is regenerated with a new seed (0: no minimum).
    quality_min_identity: float = 0.0
    quality_min_adherence: float = 0.0
    #: Generation rounds per scene at most (1: no regeneration), and candidates generated in parallel per
    #: round (1: none). With both at 1 the chain is the plain generate -> analyze -> register of every scene.
    quality_max_attempts: int = 1
    quality_candidates: int = 1

    def __post_init__(self) -> None:
        check_quality_settings(self)
        for field_name, allowed in CHOICES.items():
            if getattr(self, field_name) not in allowed:
                raise ValueError(
                    f"VIDPIPE_{field_name.upper()}={getattr(self, field_name)!r}: choose one of {list(allowed)}"
                )
        for field_name in (
            "detect_batch",
            "embed_batch",
            "analysis_max_frames",
            "visibility_timeout",
            "generation_time_limit",
            "analysis_time_limit",
            "registry_time_limit",
            "finalize_time_limit",
            "transient_retry_window",
            "max_task_crashes",
            "max_recoveries",
            *LIMIT_FIELDS,
            "generation_max_concurrent",
            "generation_submits_per_minute",
            "scene_deadline_s",
        ):
            if getattr(self, field_name) < 1:
                raise ValueError(f"VIDPIPE_{field_name.upper()} must be at least 1")
        for field_name in ("retry_backoff_base", "retry_backoff_max", "heartbeat_interval", "recovery_interval"):
            if getattr(self, field_name) <= 0:
                raise ValueError(f"VIDPIPE_{field_name.upper()} must be positive")
        for field_name in ("flower_port", "exporter_port"):
            if not 0 <= getattr(self, field_name) <= 65535:
                raise ValueError(f"VIDPIPE_{field_name.upper()} must be a port number, 0..65535")
        for field_name in ("imperfection_drift", "imperfection_missing", "imperfection_extra"):
            if not 0.0 <= getattr(self, field_name) <= 1.0:
                raise ValueError(f"VIDPIPE_{field_name.upper()} must be between 0 and 1")
        if self.lease_ttl < 2 * self.heartbeat_interval:
            raise ValueError("VIDPIPE_LEASE_TTL must be at least twice VIDPIPE_HEARTBEAT_INTERVAL")

    @property
    def input_limits(self) -> InputLimits:
        return InputLimits.from_settings(self)

    @property
    def broker_dir(self) -> Path:
        return self.home / "broker"

    @property
    def is_filesystem_broker(self) -> bool:
        return self.broker_url.startswith("filesystem://")

    @property
    def is_redis_broker(self) -> bool:
        return self.broker_url.startswith(("redis://", "rediss://"))

    @property
    def insightface_dir(self) -> Path:
        return self.models_dir / "insightface" / self.insightface_pack

    @property
    def clip_weights_path(self) -> Path:
        return Path(self.clip_weights) if self.clip_weights else self.models_dir / "open_clip" / f"{self.clip_model}.pt"

    def as_env(self) -> dict[str, str]:
        """The environment that reproduces these settings in a child process (workers)."""
        env = {}
        for f in fields(self):
            value = getattr(self, f.name)
            env[f"VIDPIPE_{f.name.upper()}"] = str(int(value)) if isinstance(value, bool) else str(value)
        return env


#: Bounds of the quality settings (the storyboard's `quality:` block has the same ones).
QUALITY_BOUNDS = {"max_attempts": (1, 5), "candidates": (1, 4)}


def check_quality_settings(settings: Settings) -> None:
    """VIDPIPE_QUALITY_*: minimums in [0, 1], rounds 1..5, candidates 1..4."""
    for name in ("quality_min_identity", "quality_min_adherence"):
        if not 0.0 <= getattr(settings, name) <= 1.0:
            raise ValueError(f"VIDPIPE_{name.upper()} must be between 0 and 1")
    for name, (low, high) in QUALITY_BOUNDS.items():
        if not low <= getattr(settings, f"quality_{name}") <= high:
            raise ValueError(f"VIDPIPE_QUALITY_{name.upper()} must be between {low} and {high}")


def _embedded(home: Path) -> dict:
    return {
        "home": home,
        "database_url": f"sqlite:///{home / 'vidpipe.db'}",
        "broker_url": "filesystem://",
        "result_backend": f"file://{home / 'results'}",
        "media_root": home / "media",
        "models_dir": home / "models",
    }


def _parse(name: str, raw: str, default: object) -> object:
    if isinstance(default, bool):
        return raw.strip().lower() in {"1", "true", "yes", "on"}
    if isinstance(default, int):
        return int(raw)
    if isinstance(default, float):
        return float(raw)
    if isinstance(default, Path):
        return Path(raw).resolve()
    return raw


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    """Build settings from VIDPIPE_* variables; unset fields fall back to the embedded default.

    Args:
        environ: mapping to read (defaults to os.environ).

    Returns:
        The frozen settings.

    """
    env = os.environ if environ is None else environ
    home = Path(env.get("VIDPIPE_HOME", "vidpipe-work")).resolve()
    base = Settings(**_embedded(home))
    overrides = {}
    for f in fields(Settings):
        raw = env.get(f"VIDPIPE_{f.name.upper()}")
        if raw is not None and f.name != "home":
            try:
                overrides[f.name] = _parse(f.name, raw, getattr(base, f.name))
            except ValueError as exc:
                raise ValueError(f"VIDPIPE_{f.name.upper()}={raw!r}: {exc}") from exc
    return replace(base, **overrides)


def prepare_folders(settings: Settings) -> None:
    """Create the folders the embedded broker, result backend and media root need."""
    settings.media_root.mkdir(parents=True, exist_ok=True)
    if settings.is_filesystem_broker:
        for sub in ("queue", "processed", "control"):
            (settings.broker_dir / sub).mkdir(parents=True, exist_ok=True)
    if settings.result_backend.startswith("file://"):
        Path(settings.result_backend.removeprefix("file://")).mkdir(parents=True, exist_ok=True)
    if settings.database_url.startswith("sqlite:///"):
        Path(settings.database_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
