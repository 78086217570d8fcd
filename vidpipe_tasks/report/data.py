"""What a project report shows, read from the database: scenes, face boxes, references, new assets, growth."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from vidpipe_tasks.db.models import Asset, AssetAppearance, Manifest, Project, Scene, SceneAttempt, TaskRun

#: Task names of a scene's chain, in order, and how the report names them.
SCENE_TASKS = {
    "vidpipe.generate_clip": "generate",
    "vidpipe.analyze_clip": "analyse",
    "vidpipe.register_entities": "register",
    # Quality attempts (docs/quality.md): summed over the scene's attempts.
    "vidpipe.generate_candidate": "generate (all attempts)",
    "vidpipe.analyze_candidate": "analyse (all attempts)",
}
#: Task names whose runs add up (one run per attempt) rather than the last one counting.
SUMMED_TASKS = ("vidpipe.generate_candidate", "vidpipe.analyze_candidate")


#: Frames shown for a scene that was not analysed (a project without a manifest, a degraded analysis).
PREVIEW_FRAMES = 4


def _spread(frame_count: int, count: int) -> list[int]:
    """`count` frame indices centred in equal slices of the clip."""
    return sorted({int((i + 0.5) * frame_count / count) for i in range(min(count, frame_count))})


@dataclass(frozen=True)
class Box:
    """One face in one sampled frame and what the analysis made of it.

    kind: "match" (a registered asset), "rematch" (matched an asset committed meanwhile, at commit time),
    "new" (became a new asset), "candidate" (clustered but not registered), "unmatched" (left over).
    """

    frame: int
    bbox: tuple[int, int, int, int]
    kind: str
    asset_tag: str | None
    similarity: float | None

    @property
    def label(self) -> str:
        if self.kind == "unmatched":
            return "unmatched"
        if self.kind == "candidate":
            return "new candidate"
        words = {"match": "", "rematch": " re-match", "new": " new"}[self.kind]
        sim = f" {self.similarity:.2f}" if self.similarity is not None else ""
        return f"{self.asset_tag}{words}{sim}"


@dataclass(frozen=True)
class Picture:
    """An image file under the media root that the report inlines, with what it depicts."""

    path: str
    tag: str
    caption: str


@dataclass(frozen=True)
class Recognition:
    """An asset recognised in a scene (one appearance row): its tag, kind and mean similarity."""

    asset_tag: str
    kind: str
    similarity: float | None
    face_count: int


@dataclass(frozen=True)
class AttemptRow:
    """One quality attempt of a scene (docs/quality.md): its scores, whether it was kept, its cost."""

    attempt: int
    round: int
    seed: int
    state: str
    identity: float | None
    adherence: float | None
    score: float | None
    passed_gate: bool | None
    kept: bool
    cost_usd: float
    error: str | None


@dataclass(frozen=True)
class SceneData:
    """One scene's row of the report."""

    index: int
    description: str
    location: str | None
    characters: list[str]
    stages: dict[str, str]
    clip_path: str | None
    frame_size: tuple[int, int] | None
    #: The frames the analysis sampled; for a scene not analysed, a few frames spread over its clip.
    frame_indices: list[int]
    analysed: bool
    boxes: list[Box]
    references: list[Picture]
    new_assets: list[Picture]
    recognitions: list[Recognition]
    continuity_score: float | None
    components: dict[str, float | None]
    analysis_ms: dict[str, float]
    task_seconds: dict[str, float]
    engine: str | None
    degraded_reason: str | None
    failure_reason: str | None
    warnings: list[str] = field(default_factory=list)
    #: Quality attempts, in order ([] when the project's gate is off).
    attempts: list[AttemptRow] = field(default_factory=list)


@dataclass(frozen=True)
class GrowthPoint:
    """Assets in the manifest's registry once a scene committed, and the tags that scene added."""

    label: str
    total: int
    added: list[str]


@dataclass(frozen=True)
class ProjectData:
    """Everything the report renders."""

    project_id: int
    title: str
    status: str
    manifest: str | None
    created_at: datetime | None
    finished_at: datetime | None
    scenes: list[SceneData]
    growth: list[GrowthPoint]
    #: Cross-scene face consistency recorded at finalize (docs/status-json.md): score, per character.
    face_consistency: float | None = None
    face_consistency_characters: dict[str, dict] = field(default_factory=dict)


def _utc(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; every stored time is UTC.
    return None if value is None else (value if value.tzinfo else value.replace(tzinfo=UTC))


def _boxes(analysis: dict) -> list[Box]:
    """Every face box the analysis stored, labelled (analyses from before boxes were stored give none)."""
    out = [
        Box(b[0], tuple(b[1:5]), "match", m.get("asset_tag") or m.get("tag"), b[5] if len(b) > 5 else None)
        for m in analysis.get("matches", [])
        for b in m.get("boxes", [])
    ]
    for cand in analysis.get("candidates", []):
        if cand.get("registered_as"):
            kind, tag = "new", cand["registered_as"]
        elif cand.get("rematched_to"):
            kind, tag = "rematch", cand["rematched_to"]
        else:
            kind, tag = "candidate", None
        out += [Box(b[0], tuple(b[1:5]), kind, tag, None) for b in cand.get("boxes", [])]
    out += [Box(b[0], tuple(b[1:5]), "unmatched", None, None) for b in analysis.get("unmatched_boxes", [])]
    return out


def _with_rematch_similarity(boxes: list[Box], recognitions: list[Recognition]) -> list[Box]:
    """A re-match's similarity is known only at commit: it is the appearance row's."""
    sims = {r.asset_tag: r.similarity for r in recognitions}
    return [
        Box(b.frame, b.bbox, b.kind, b.asset_tag, sims.get(b.asset_tag)) if b.kind == "rematch" else b for b in boxes
    ]


def _task_seconds(runs: list[TaskRun]) -> dict[str, float]:
    """Wall time of each chain task of a scene (its last finished run)."""
    out = {}
    for run in runs:
        name = SCENE_TASKS.get(run.task_name)
        if name and run.finished_at is not None and run.outcome in ("success", "degraded"):
            seconds = (_utc(run.finished_at) - _utc(run.started_at)).total_seconds()
            earlier = out.get(name, 0.0) if run.task_name in SUMMED_TASKS else 0.0
            out[name] = round(earlier + seconds, 2)
    return out


def _current_tags(analysis: dict, scene: Scene, assets: dict[int, Asset]) -> dict:
    """The analysis with each asset named by its tag today (an asset renamed since keeps its boxes)."""
    by_origin = {a.origin_key: a.tag for a in assets.values() if a.origin_key}
    matches = [
        {**m, "asset_tag": assets[int(m["asset_id"])].tag} if int(m.get("asset_id", -1)) in assets else m
        for m in analysis.get("matches", [])
    ]
    candidates = []
    for cand in analysis.get("candidates", []):
        origin = f"p{scene.project_id}-s{scene.scene_index}-{cand.get('key')}"
        if cand.get("registered_as") and origin in by_origin:
            cand = {**cand, "registered_as": by_origin[origin]}
        candidates.append(cand)
    return {**analysis, "matches": matches, "candidates": candidates}


def _attempts(rows: list[SceneAttempt]) -> list[AttemptRow]:
    return [
        AttemptRow(
            r.attempt,
            r.round,
            r.seed,
            r.state,
            r.identity,
            r.adherence,
            r.score,
            r.passed_gate,
            bool(r.kept),
            round(r.cost or 0.0, 4),
            r.error,
        )
        for r in sorted(rows, key=lambda r: r.attempt)
    ]


def _scene(
    scene: Scene,
    tag_of: dict[int, Asset],
    appearances: list[AssetAppearance],
    runs: list[TaskRun],
    attempts: list[SceneAttempt] = (),
) -> SceneData:
    sm = scene.scene_manifest
    analysis = _current_tags((sm.cv_analysis_json if sm else None) or {}, scene, tag_of)
    frames = analysis.get("frames") or {}
    recognitions = [
        Recognition(tag_of[a.asset_id].tag, a.kind, a.similarity, a.face_count)
        for a in appearances
        if a.scene_index == scene.scene_index and a.asset_id in tag_of
    ]
    refs = ((sm.manifest_json if sm else None) or {}).get("references", {})
    references = [
        Picture(r["reference_image"], r["tag"], f"{character} ← {r['tag']} ({r['source'].lower()})")
        for character, r in sorted(refs.items())
        if r.get("reference_image")
    ]
    # Assets this scene registered, by their origin (their tags may have been renamed since).
    new_assets = [
        Picture(a.reference_image, a.tag, f"{a.tag}: {a.name}")
        for a in tag_of.values()
        if (a.origin_project_id, a.origin_scene_index) == (scene.project_id, scene.scene_index) and a.reference_image
    ]
    size = (frames["width"], frames["height"]) if frames.get("width") else None
    indices = list(frames.get("indices", []))
    clip = scene.clip
    if not indices and clip is not None and clip.frame_count > 0:
        indices, size = _spread(clip.frame_count, PREVIEW_FRAMES), (clip.width, clip.height)
    continuity = analysis.get("continuity") or {}
    return SceneData(
        index=scene.scene_index,
        description=scene.description,
        location=scene.location,
        characters=list(scene.characters or []),
        stages={
            "generation": scene.generation_status.value,
            "analysis": scene.analysis_status.value,
            "registry": scene.registry_status.value,
        },
        clip_path=scene.clip.path if scene.clip else None,
        frame_size=size,
        frame_indices=indices,
        analysed=bool(frames.get("indices")),
        boxes=_with_rematch_similarity(_boxes(analysis), recognitions),
        references=references,
        new_assets=new_assets,
        recognitions=recognitions,
        continuity_score=sm.continuity_score if sm else None,
        components=dict(continuity.get("components") or {}),
        analysis_ms=dict(analysis.get("timings_ms") or {}),
        task_seconds=_task_seconds([r for r in runs if r.scene_index == scene.scene_index]),
        engine=(analysis.get("engine") or {}).get("face"),
        degraded_reason=sm.degraded_reason if sm else None,
        failure_reason=scene.failure_reason,
        warnings=list(analysis.get("warnings") or []),
        attempts=_attempts([a for a in attempts if a.scene_index == scene.scene_index]),
    )


def _growth(project: Project, assets: list[Asset]) -> list[GrowthPoint]:
    """Registry size after each registered scene; the first point is what the project started from."""
    registered = [sc for sc in project.scenes if sc.scene_manifest and sc.scene_manifest.registered_at]
    if not registered:
        return []
    created = [_utc(a.created_at) for a in assets]
    points = []
    for sc in registered:
        at = _utc(sc.scene_manifest.registered_at)
        points.append(
            GrowthPoint(
                f"scene {sc.scene_index}", sum(c <= at for c in created), sc.scene_manifest.new_asset_tags or []
            )
        )
    start = points[0].total - len(points[0].added)
    return [GrowthPoint("start", start, []), *points]


def load_project(session: Session, project_id: int) -> ProjectData:
    """Read one project's report data.

    Raises:
        LookupError: no such project.

    """
    project = session.get(Project, project_id)
    if project is None:
        raise LookupError(f"no project {project_id}")
    assets: list[Asset] = []
    manifest = None
    if project.manifest_id is not None:
        manifest = session.get(Manifest, project.manifest_id)
        assets = list(session.scalars(select(Asset).where(Asset.manifest_id == project.manifest_id).order_by(Asset.id)))
    appearances = list(
        session.scalars(
            select(AssetAppearance).where(AssetAppearance.project_id == project_id).order_by(AssetAppearance.id)
        )
    )
    runs = list(session.scalars(select(TaskRun).where(TaskRun.project_id == project_id).order_by(TaskRun.started_at)))
    tag_of = {a.id: a for a in assets}
    attempts = list(session.scalars(select(SceneAttempt).where(SceneAttempt.project_id == project_id)))
    return ProjectData(
        project_id=project.id,
        title=project.title,
        status=project.status.value,
        manifest=manifest.name if manifest else None,
        created_at=_utc(project.created_at),
        finished_at=_utc(project.finished_at),
        scenes=[_scene(sc, tag_of, appearances, runs, attempts) for sc in project.scenes],
        growth=_growth(project, assets),
        face_consistency=project.face_consistency,
        face_consistency_characters=dict((project.face_consistency_detail or {}).get("characters") or {}),
    )
