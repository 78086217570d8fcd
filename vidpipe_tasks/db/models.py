"""SQLAlchemy 2.0 models: manifests, assets, projects, scenes, clips, scene manifests, appearances, runs, attempts."""

from __future__ import annotations

import enum
from datetime import UTC, datetime

from sqlalchemy import JSON, Boolean, DateTime, Enum, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """Declarative base for every vidpipe table."""


class AssetType(enum.StrEnum):
    CHARACTER = "CHARACTER"
    LOCATION = "LOCATION"
    PROP = "PROP"


class AssetSource(enum.StrEnum):
    UPLOADED = "UPLOADED"
    CLIP_EXTRACT = "CLIP_EXTRACT"


class ProjectStatus(enum.StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


class StageStatus(enum.StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    DONE = "DONE"
    SKIPPED = "SKIPPED"
    DEGRADED = "DEGRADED"
    FAILED = "FAILED"


def _enum(cls: type[enum.Enum]) -> Enum:
    # Stored as plain strings so the schema needs no native enum types on PostgreSQL.
    return Enum(cls, native_enum=False, length=16, validate_strings=True)


class Manifest(Base):
    """A reusable library of reference assets shared by projects."""

    __tablename__ = "manifests"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    #: Bumped by every registry commit; the UPDATE doubles as the manifest's write lock (see registry.lock_manifest).
    registry_version: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    assets: Mapped[list[Asset]] = relationship(back_populates="manifest", order_by="Asset.id")


class Asset(Base):
    """A reference asset: uploaded with the manifest or extracted from a generated clip."""

    __tablename__ = "assets"
    __table_args__ = (
        UniqueConstraint("manifest_id", "tag", name="uq_asset_manifest_tag"),
        # One extracted candidate becomes at most one asset, however often register_entities runs.
        UniqueConstraint("manifest_id", "origin_key", name="uq_asset_manifest_origin"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    manifest_id: Mapped[int] = mapped_column(ForeignKey("manifests.id", ondelete="CASCADE"), index=True)
    asset_type: Mapped[AssetType] = mapped_column(_enum(AssetType))
    tag: Mapped[str] = mapped_column(String(100))
    name: Mapped[str] = mapped_column(String(200))
    #: The storyboard character this asset depicts (reference selection looks assets up by it).
    character: Mapped[str | None] = mapped_column(String(100), index=True)
    description: Mapped[str] = mapped_column(Text, default="")
    source: Mapped[AssetSource] = mapped_column(_enum(AssetSource))
    #: Relative to the media root.
    reference_image: Mapped[str | None] = mapped_column(String(500))
    face_embedding: Mapped[list[float] | None] = mapped_column(JSON)
    face_engine: Mapped[str | None] = mapped_column(String(50))
    image_embedding: Mapped[list[float] | None] = mapped_column(JSON)
    image_embedder: Mapped[str | None] = mapped_column(String(100))
    quality: Mapped[float | None] = mapped_column(Float)
    origin_project_id: Mapped[int | None] = mapped_column(ForeignKey("projects.id", ondelete="SET NULL"))
    origin_scene_index: Mapped[int | None] = mapped_column(Integer)
    #: "p{project}-s{scene}-{candidate}" for CLIP_EXTRACT assets; None for uploads.
    origin_key: Mapped[str | None] = mapped_column(String(100))
    #: How `character` was set on an extracted asset: {"rule", "project_id", "scene_index", "at"} (rules in
    #: docs/registry.md); None for an upload or an asset still unbound.
    binding: Mapped[dict | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    manifest: Mapped[Manifest] = relationship(back_populates="assets")


class RejectedFace(Base):
    """A face an operator rejected (`vidpipe assets reject`): the registry never mints it as new again."""

    __tablename__ = "rejected_faces"

    id: Mapped[int] = mapped_column(primary_key=True)
    manifest_id: Mapped[int] = mapped_column(ForeignKey("manifests.id", ondelete="CASCADE"), index=True)
    face_engine: Mapped[str] = mapped_column(String(50))
    embedding: Mapped[list[float]] = mapped_column(JSON)
    #: The tag of the asset it was rejected as (for the operator's record).
    asset_tag: Mapped[str] = mapped_column(String(100))
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Project(Base):
    """A storyboard submitted for generation."""

    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(300))
    manifest_id: Mapped[int | None] = mapped_column(ForeignKey("manifests.id"), index=True)
    status: Mapped[ProjectStatus] = mapped_column(_enum(ProjectStatus), default=ProjectStatus.PENDING)
    source_path: Mapped[str | None] = mapped_column(String(1000))
    storyboard_json: Mapped[dict] = mapped_column(JSON)
    #: Id of the first task of the chain last queued for this project.
    chain_root_id: Mapped[str | None] = mapped_column(String(64))
    #: Bumped each time a chain is queued (submit, resume, recovery); every message carries the epoch it
    #: was queued under, and a task from an older chain stops itself (a superseded delivery).
    chain_epoch: Mapped[int] = mapped_column(Integer, default=0)
    #: Refreshed by the heartbeat of every running task (and by a scheduled retry); past it, with nothing
    #: queued, the chain is lost and the recovery sweep resumes it.
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: When a sweep first saw the chain lost; a second sweep confirms it before resuming.
    stall_suspected_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: Automatic recoveries so far, and why the last one happened.
    recoveries: Mapped[int] = mapped_column(Integer, default=0)
    recovery_reason: Mapped[str | None] = mapped_column(Text)
    #: Cross-scene face consistency (vidpipe_tasks.consistency), set when the project is finalized: the
    #: score (None when no character was seen in two scenes) and its per-character detail (no embeddings).
    face_consistency: Mapped[float | None] = mapped_column(Float)
    face_consistency_detail: Mapped[dict | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    scenes: Mapped[list[Scene]] = relationship(back_populates="project", order_by="Scene.scene_index")


class Scene(Base):
    """One scene of a project, with a status per stage."""

    __tablename__ = "scenes"
    __table_args__ = (UniqueConstraint("project_id", "scene_index", name="uq_scene_project_index"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    scene_index: Mapped[int] = mapped_column(Integer)
    description: Mapped[str] = mapped_column(Text, default="")
    location: Mapped[str | None] = mapped_column(String(100))
    characters: Mapped[list[str]] = mapped_column(JSON, default=list)
    duration_s: Mapped[float] = mapped_column(Float)
    fps: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    generation_status: Mapped[StageStatus] = mapped_column(_enum(StageStatus), default=StageStatus.PENDING)
    analysis_status: Mapped[StageStatus] = mapped_column(_enum(StageStatus), default=StageStatus.PENDING)
    registry_status: Mapped[StageStatus] = mapped_column(_enum(StageStatus), default=StageStatus.PENDING)
    #: Why a stage of this scene FAILED: "<reason>: <message>" (e.g. "poison: ...", "content_policy: ...").
    failure_reason: Mapped[str | None] = mapped_column(Text)

    project: Mapped[Project] = relationship(back_populates="scenes")
    clip: Mapped[Clip | None] = relationship(back_populates="scene")
    scene_manifest: Mapped[SceneManifest | None] = relationship(back_populates="scene")


class Clip(Base):
    """The rendered clip of a scene (one per scene; a re-run reuses it)."""

    __tablename__ = "clips"

    id: Mapped[int] = mapped_column(primary_key=True)
    scene_id: Mapped[int] = mapped_column(ForeignKey("scenes.id", ondelete="CASCADE"), unique=True)
    #: Relative to the media root.
    path: Mapped[str] = mapped_column(String(500))
    size_bytes: Mapped[int] = mapped_column(Integer)
    frame_count: Mapped[int] = mapped_column(Integer)
    fps: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    generator: Mapped[str] = mapped_column(String(50))
    appearances: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    scene: Mapped[Scene] = relationship(back_populates="clip")


class SceneManifest(Base):
    """What a scene was generated from and what its analysis found."""

    __tablename__ = "scene_manifests"

    id: Mapped[int] = mapped_column(primary_key=True)
    scene_id: Mapped[int] = mapped_column(ForeignKey("scenes.id", ondelete="CASCADE"), unique=True)
    manifest_json: Mapped[dict] = mapped_column(JSON, default=dict)
    #: Character tag -> asset tag chosen as its reference when the clip was generated.
    selected_reference_tags: Mapped[dict] = mapped_column(JSON, default=dict)
    cv_analysis_json: Mapped[dict | None] = mapped_column(JSON)
    continuity_score: Mapped[float | None] = mapped_column(Float)
    degraded_reason: Mapped[str | None] = mapped_column(Text)
    new_asset_tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    #: Mean image embedding of the scene's sampled frames (open_clip); the next scene's visual
    #: continuity is measured against it. Kept out of cv_analysis_json, like every raw embedding.
    visual_embedding: Mapped[list[float] | None] = mapped_column(JSON)
    visual_embedder: Mapped[str | None] = mapped_column(String(100))
    #: Extracted assets bound to a character at this scene's commit: [{"asset_id", "asset_tag", "character",
    #: "rule", "new"}] (docs/registry.md).
    bindings: Mapped[list[dict] | None] = mapped_column(JSON)
    #: Set in the registry transaction; the next scene may start only after it.
    registered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    scene: Mapped[Scene] = relationship(back_populates="scene_manifest")


class AssetAppearance(Base):
    """An asset seen in a scene (one row per asset, project and scene)."""

    __tablename__ = "asset_appearances"
    __table_args__ = (UniqueConstraint("asset_id", "project_id", "scene_index", name="uq_appearance"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    asset_id: Mapped[int] = mapped_column(ForeignKey("assets.id", ondelete="CASCADE"), index=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    scene_index: Mapped[int] = mapped_column(Integer)
    #: "match" (recognised a registered asset) or "new" (this scene registered it).
    kind: Mapped[str] = mapped_column(String(10))
    frames: Mapped[list[int]] = mapped_column(JSON, default=list)
    face_count: Mapped[int] = mapped_column(Integer, default=0)
    similarity: Mapped[float | None] = mapped_column(Float)
    #: Mean identity embedding in this scene (kept for cross-scene consistency; small).
    embedding: Mapped[list[float] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


#: Run-log outcomes of a run not yet over: still running, or waiting for its scheduled retry or poll.
OPEN_RUN_OUTCOMES = ("running", "retrying", "polling")


class TaskRun(Base):
    """One execution record per Celery task id: where it ran, when, and how it ended."""

    __tablename__ = "task_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[str] = mapped_column(String(64), unique=True)
    task_name: Mapped[str] = mapped_column(String(100), index=True)
    project_id: Mapped[int | None] = mapped_column(Integer, index=True)
    scene_index: Mapped[int | None] = mapped_column(Integer)
    #: The scene attempt (quality gate round or candidate) a candidate task works on; None for other tasks.
    #: Crash counting and timeouts are per (project, scene, task, attempt).
    attempt: Mapped[int | None] = mapped_column(Integer)
    queue: Mapped[str | None] = mapped_column(String(50))
    worker: Mapped[str | None] = mapped_column(String(200))
    #: Times a worker started this task id (redeliveries and retries included).
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    #: Retries scheduled after a transient infrastructure error, polls of a remote job, and starts that
    #: found the previous run still marked running (its worker was lost mid-run).
    retries: Mapped[int] = mapped_column(Integer, default=0)
    polls: Mapped[int] = mapped_column(Integer, default=0)
    crashes: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: "running"; "retrying" or "polling" (a retry is scheduled); "success", "degraded", "failure",
    #: "cancelled"; "stale" (from a superseded chain) or "duplicate" (a redelivery of a finished task whose
    #: chain went on), both skipped; "ignored" (an out-of-order or malformed message);
    #: "abandoned" (closed by resume or recovery: its worker was lost).
    outcome: Mapped[str] = mapped_column(String(20), default="running")
    detail: Mapped[str | None] = mapped_column(Text)


class GenerationJob(Base):
    """One provider job (ComfyUI prompt, Veo operation) per scene and attempt: money, so never lost or paid twice.

    The row is committed with its job id before the first poll, so a redelivered or resumed
    `generate_clip` polls the same job instead of submitting another. `attempt` grows only when a scene
    whose job failed for good is run again (`vidpipe resume`); a server that forgot a job is resubmitted
    once inside the same attempt and counted in `resubmissions`. `scene_attempt` is the quality attempt
    (gate round or candidate, scene_attempts.attempt) the job renders: every one is its own job and its
    cost counts towards the project's spend.
    """

    __tablename__ = "generation_jobs"
    __table_args__ = (
        UniqueConstraint("project_id", "scene_index", "scene_attempt", "attempt", name="uq_generation_job_attempt"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    scene_index: Mapped[int] = mapped_column(Integer)
    scene_attempt: Mapped[int] = mapped_column(Integer, default=1)
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    #: "comfyui" or "veo".
    provider: Mapped[str] = mapped_column(String(20), index=True)
    model: Mapped[str | None] = mapped_column(String(100))
    #: Base URL of the server that holds the job.
    server: Mapped[str | None] = mapped_column(String(300))
    #: ComfyUI prompt id (chosen by us before the POST) or Veo operation name (known after it).
    job_id: Mapped[str | None] = mapped_column(String(300))
    #: submitting, queued, running, succeeded, downloaded, not_submitted, failed, skipped.
    state: Mapped[str] = mapped_column(String(20), index=True, default="submitting")
    progress: Mapped[dict] = mapped_column(JSON, default=dict)
    #: What the provider reported as the output (ComfyUI /view parameters, Veo video URI).
    outputs: Mapped[dict | None] = mapped_column(JSON)
    generated_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    cost_estimate: Mapped[float] = mapped_column(Float, default=0.0)
    resubmissions: Mapped[int] = mapped_column(Integer, default=0)
    polls: Mapped[int] = mapped_column(Integer, default=0)
    error_class: Mapped[str | None] = mapped_column(String(20))
    error_reason: Mapped[str | None] = mapped_column(String(50))
    error_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    submitted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class SceneAttempt(Base):
    """One quality attempt of a scene (a gate round's candidate): its seed, clip, analysis, scores and cost.

    Keyed on (project, scene, attempt): a redelivered candidate task finds its row and reuses what it
    recorded. Exactly one attempt per registered scene is `kept`; only that one reaches the registry.
    """

    __tablename__ = "scene_attempts"
    __table_args__ = (UniqueConstraint("project_id", "scene_index", "attempt", name="uq_scene_attempt"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    scene_index: Mapped[int] = mapped_column(Integer)
    #: 1-based: round r's candidates are (r - 1) * K + 1 .. r * K (docs/quality.md).
    attempt: Mapped[int] = mapped_column(Integer)
    round: Mapped[int] = mapped_column(Integer, default=1)
    seed: Mapped[int] = mapped_column(Integer)
    #: "generating", "generated", "analysed" or "failed".
    state: Mapped[str] = mapped_column(String(20), default="generating")
    #: Relative to the media root.
    clip_path: Mapped[str | None] = mapped_column(String(500))
    #: Frame count, fps, size, generator and appearances of the rendered clip (copied to `clips` if kept).
    clip_info: Mapped[dict | None] = mapped_column(JSON)
    #: Character tag -> the reference it was generated from (copied to the scene manifest if kept).
    references: Mapped[dict] = mapped_column(JSON, default=dict)
    #: The analysis without raw embeddings (status, reason, continuity, matches, candidates).
    summary: Mapped[dict | None] = mapped_column(JSON)
    #: The full analysis, embeddings included: what register_entities commits when this attempt is kept.
    analysis: Mapped[dict | None] = mapped_column(JSON)
    identity: Mapped[float | None] = mapped_column(Float)
    adherence: Mapped[float | None] = mapped_column(Float)
    #: The documented composite score (vidpipe_tasks.quality.composite_score).
    score: Mapped[float | None] = mapped_column(Float)
    passed_gate: Mapped[bool | None] = mapped_column(Boolean)
    kept: Mapped[bool] = mapped_column(Boolean, default=False)
    #: Estimated USD of this attempt's provider jobs (0 for local generators).
    cost: Mapped[float] = mapped_column(Float, default=0.0)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    generated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    analysed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
