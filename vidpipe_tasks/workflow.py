"""Projects as Celery chains: create from a storyboard, build the flat chain, submit, resume, cancel."""

from __future__ import annotations

import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from celery import Celery, chain, chord, group
from celery.canvas import Signature
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from vidpipe_tasks.db.models import OPEN_RUN_OUTCOMES, Project, ProjectStatus, StageStatus, TaskRun
from vidpipe_tasks.db.session import session_scope
from vidpipe_tasks.inputs import StoryboardInput, load_inputs
from vidpipe_tasks.quality import QualityPolicy, quality_for
from vidpipe_tasks.queues import BrokerMessage, drop_unacked, project_messages
from vidpipe_tasks.settings import Settings
from vidpipe_tasks.storing import store_inputs
from vidpipe_tasks.storyboard import Storyboard


def create_project(settings: Settings, path: Path, board: Storyboard, source: str | None = None) -> int:
    """Store a validated storyboard as a project with its scenes; nothing is queued.

    Args:
        settings: the installation.
        path: the storyboard file (or the JSONL batch holding it); reference images resolve against its folder.
        board: the validated storyboard.
        source: what to record as the project's source (default `path`; "batch.jsonl:3" for a batch line).

    """
    return store_inputs(settings, [StoryboardInput(path, None, board)], [source or str(path)])[0]


def build_chain(
    app: Celery,
    project_id: int,
    scene_indices: list[int],
    with_analysis: bool,
    priority: int | None = None,
    epoch: int | None = None,
    quality: QualityPolicy | None = None,
) -> Signature:
    """One flat chain for a project.

    Per scene: ``generate_clip.si(ref) | analyze_clip.s() | register_entities.s()``; a project without a
    manifest gets ``generate_clip.si(ref)`` only, so nothing of it reaches the CV queue. ``.si`` keeps scene
    N+1 from receiving scene N's result, and Celery sends it only after register_entities has returned,
    which is after its transaction committed.

    With a quality gate or candidates (`quality.enabled`), a scene is its rounds, then its registration
    (`_attempt_steps`, docs/quality.md).

    `priority` is set on every task: a chain's `apply_async(priority=...)` reaches only its first task
    (Celery's `task_inherit_parent_priority` is off), and a project keeps its place for all its scenes.
    `epoch` (the project's chain epoch) travels in every message, so a task of a superseded chain stops.
    """
    steps: list[Signature] = []
    stamp = {} if epoch is None else {"epoch": epoch}
    gated = with_analysis and quality is not None and quality.enabled
    for index in scene_indices:
        ref = {"project_id": project_id, "scene_index": index, **stamp}
        if gated:
            steps.extend(_attempt_steps(app, ref, quality, priority))
            steps.append(app.signature("vidpipe.register_entities"))
            continue
        steps.append(app.signature("vidpipe.generate_clip", args=(ref,), immutable=True))
        if with_analysis:
            steps.append(app.signature("vidpipe.analyze_clip"))
            steps.append(app.signature("vidpipe.register_entities"))
    final = {"project_id": project_id, **stamp}
    steps.append(app.signature("vidpipe.finalize_project", args=(final,), immutable=True))
    if priority is not None:
        for step in steps:
            step.set(priority=priority)
    return chain(*steps)


#: Seconds between celery.chord_unlock polls on result backends without native chords (the embedded one).
CHORD_POLL_S = 0.5


def chord_unlock_retries(settings: Settings) -> int:
    """Polls before a chord's unlock gives up: twice the longest a round may take.

    A round is a generation (with a remote job's deadline) and an analysis. A chord whose candidates were
    stopped (cancelled, superseded) never completes; past this its poller stops, and a chain lost that way
    is resumed by the recovery sweep.
    """
    longest = settings.generation_time_limit + settings.scene_deadline_s + settings.analysis_time_limit
    return math.ceil(2 * longest / CHORD_POLL_S)


def _attempt_steps(app: Celery, ref: dict, quality: QualityPolicy, priority: int | None) -> list[Signature]:
    """A scene's rounds: per round its candidates (generate -> analyze each, in parallel), then the pick.

    With one candidate per round the round is three chain links. With K > 1 it is a chord: a group of K
    ``generate_candidate.si(attempt) | analyze_candidate.s()`` chains (generation queue, then CV queue), and
    ``pick_attempt.si(round)`` as its callback once all K have finished. The pick reads the attempts from the
    database (immutable: it ignores the chord's results), so a redelivered or resumed round decides the same.
    A pick that keeps an attempt removes the scene's later rounds from the chain; register_entities follows.
    """
    steps: list[Signature] = []
    options = {} if priority is None else {"priority": priority}
    settings = app.vidpipe_settings
    for round_ in range(1, quality.max_attempts + 1):
        candidates = [
            chain(
                app.signature("vidpipe.generate_candidate", args=({**ref, "attempt": n},), immutable=True, **options),
                app.signature("vidpipe.analyze_candidate", **options),
            )
            for n in quality.round_attempts(round_)
        ]
        pick = app.signature("vidpipe.pick_attempt", args=({**ref, "round": round_},), immutable=True, **options)
        if len(candidates) == 1:
            steps.extend([*candidates[0].tasks, pick])
        else:
            steps.append(
                chord(group(candidates), pick, interval=CHORD_POLL_S, max_retries=chord_unlock_retries(settings))
            )
    return steps


def _pending_scenes(project: Project) -> list[int]:
    done = (StageStatus.DONE, StageStatus.SKIPPED)
    if project.manifest_id is None:
        return [s.scene_index for s in project.scenes if s.generation_status != StageStatus.DONE]
    first = next((s.scene_index for s in project.scenes if s.registry_status not in done), None)
    return [] if first is None else [s.scene_index for s in project.scenes if s.scene_index >= first]


class NothingToRun(ValueError):
    """Every scene of the project is already through its last stage."""


class Superseded(RuntimeError):
    """Another resume or recovery queued this project's chain first (its epoch moved on)."""


def enqueue_project(
    app: Celery,
    settings: Settings,
    project_id: int,
    priority: int | None = None,
    *,
    expected_epoch: int | None = None,
    closing: str = "abandoned: superseded by a new chain",
) -> str:
    """Queue the chain from the first scene not yet through its last stage; returns the root task id.

    Used by submit, resume and recovery: every task is idempotent, so re-running a scene that was half done
    (clip stored, analysis lost) completes it without duplicating anything. In the same transaction the
    project's chain epoch moves on (tasks of the old chain stop themselves when delivered), attempts the
    run log still shows open are closed as abandoned, and stages left RUNNING go back to PENDING.

    Raises:
        LookupError: no such project.
        NothingToRun: every scene is through its last stage.
        Superseded: `expected_epoch` was given and another enqueue moved the epoch first.

    """
    with session_scope(settings.database_url) as s:
        project = s.get(Project, project_id)
        if project is None:
            raise LookupError(f"no project {project_id}")
        scenes = _pending_scenes(project)
        if not scenes:
            raise NothingToRun(f"project {project_id} has no scene left to run")
        epoch = _advance_epoch(s, project, expected_epoch)
        close_open_runs(s, project_id, closing)
        _reset_running_stages(project, scenes)
        with_analysis = project.manifest_id is not None
        quality = quality_for(settings, project.storyboard_json or {})
        if project.status != ProjectStatus.PENDING:
            # Committed before anything is sent: a cancelled project's tasks would otherwise stop themselves.
            project.status, project.finished_at = ProjectStatus.RUNNING, None
        project.lease_until = datetime.now(UTC) + timedelta(seconds=settings.lease_ttl)
        project.stall_suspected_at = None
    result = build_chain(app, project_id, scenes, with_analysis, priority, epoch, quality).apply_async()
    while result.parent is not None:
        result = result.parent
    with session_scope(settings.database_url) as s:
        s.get(Project, project_id).chain_root_id = result.id
    return result.id


def _advance_epoch(session: Session, project: Project, expected: int | None) -> int:
    """Move the chain epoch on by one with a compare-and-swap, so two recoveries never both queue a chain."""
    current = project.chain_epoch if expected is None else expected
    moved = session.execute(
        update(Project)
        .where(Project.id == project.id, Project.chain_epoch == current)
        .values(chain_epoch=current + 1)
        .execution_options(synchronize_session=False)
    ).rowcount
    if moved != 1:
        raise Superseded(f"project {project.id}: its chain was queued again meanwhile")
    session.refresh(project)
    return current + 1


def close_open_runs(session: Session, project_id: int, detail: str) -> int:
    """Mark the project's runs still open in the log (running, retrying, polling) as abandoned."""
    return session.execute(
        update(TaskRun)
        .where(TaskRun.project_id == project_id, TaskRun.outcome.in_(OPEN_RUN_OUTCOMES))
        .values(outcome="abandoned", detail=detail[:500], finished_at=datetime.now(UTC))
        .execution_options(synchronize_session=False)
    ).rowcount


def _reset_running_stages(project: Project, scenes: list[int]) -> None:
    for scene in project.scenes:
        if scene.scene_index in scenes:
            for field_name in ("generation_status", "analysis_status", "registry_status"):
                if getattr(scene, field_name) == StageStatus.RUNNING:
                    setattr(scene, field_name, StageStatus.PENDING)


def cancel_project(settings: Settings, project_id: int) -> str:
    """Mark a project cancelled: its queued tasks stop themselves (and its chain) when a worker takes them.

    Returns:
        The project's status afterwards (a completed project stays COMPLETED).

    """
    with session_scope(settings.database_url) as s:
        project = s.get(Project, project_id)
        if project is None:
            raise LookupError(f"no project {project_id}")
        if project.status != ProjectStatus.COMPLETED:
            project.status, project.finished_at = ProjectStatus.CANCELLED, datetime.now(UTC)
        return project.status.value


@dataclass
class CancelReport:
    """What `cancel` did to one project."""

    project_id: int
    status: str
    #: The project's messages found in the broker: waiting in a queue, or (Redis) delivered and unacknowledged.
    messages: list[BrokerMessage] = field(default_factory=list)
    #: Tasks the run log shows running: they stop at their next check of the project's status.
    running: list[str] = field(default_factory=list)
    #: Every task id sent in the revoke broadcast.
    revoked: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """One line for `vidpipe cancel`."""
        if self.status == ProjectStatus.COMPLETED:
            return f"project {self.project_id}: already COMPLETED; nothing to cancel"
        seen = {m.task_id for m in self.messages}
        where = {"queued": "waiting on", "unacked": "held by a worker from"}
        parts = [f"{_name(m)} ({where.get(m.state, m.state)} {m.queue})" for m in self.messages]
        parts += [f"running task {i}" for i in self.running if i not in seen]
        later = len(set(self.revoked) - seen - set(self.running))
        if later:
            parts.append(f"{later} later task(s) of its chain")
        found = "; ".join(parts) if parts else "nothing queued or running was found"
        return f"project {self.project_id}: cancelled; revoked {len(self.revoked)} task id(s): {found}"


def _name(m: BrokerMessage) -> str:
    return f"{m.task.removeprefix('vidpipe.')} scene {m.scene_index}"


def cancel(app: Celery, settings: Settings, project_id: int) -> CancelReport:
    """Cancel a project: mark it cancelled, then revoke every task id of it that is still to run.

    The mark comes first, so any task a worker takes from now on stops itself and its chain
    (policy.PipelineTask raises Ignore). The ids revoked are the project's messages in the broker, the rest of
    their chains (those ids exist only inside the message until Celery sends them), on Redis the deliveries
    workers hold unacknowledged, and the tasks the run log shows running. A worker that is up discards a
    revoked message without running it; a solo-pool worker reads the revoke only between tasks, and a worker
    started later never hears it: for those, the cancelled status stops the task when it starts. Messages are
    left in the broker; a worker takes each and drops it at once.
    """
    status = cancel_project(settings, project_id)
    report = CancelReport(project_id, status)
    if status == ProjectStatus.COMPLETED:
        return report
    report.messages = project_messages(app, settings, project_id)
    with session_scope(settings.database_url) as s:
        report.running = list(
            s.scalars(select(TaskRun.task_id).where(TaskRun.project_id == project_id, TaskRun.outcome == "running"))
        )
    ids = [i for m in report.messages for i in (m.task_id, *m.chain_ids)] + report.running
    report.revoked = list(dict.fromkeys(ids))  # unique, in order
    if report.revoked:
        app.control.revoke(report.revoked)
    return report


class StillQueued(RuntimeError):
    """The project has a task waiting in the broker: it is not stalled, and resuming would run it twice."""


@dataclass
class ResumeReport:
    """What `resume` did to one project."""

    project_id: int
    root_id: str
    #: Redis deliveries of the project that no worker acknowledged (their worker died) and that were dropped.
    dropped: list[BrokerMessage] = field(default_factory=list)

    def describe(self) -> str:
        """One line for `vidpipe resume`."""
        line = f"project {self.project_id}: queued again from its first unfinished scene (task {self.root_id})"
        if self.dropped:
            line += f"; dropped {len(self.dropped)} unacknowledged delivery(ies) of a worker that stopped"
        return line


def resume(app: Celery, settings: Settings, project_id: int, priority: int | None = None) -> ResumeReport:
    """Queue a stalled project again from its first scene not yet through its last stage.

    Raises:
        LookupError: no such project.
        StillQueued: a task of the project is waiting in a queue, so it will go on by itself.
        NothingToRun: every scene is done.

    """
    messages = project_messages(app, settings, project_id)
    waiting = [m for m in messages if m.state == "queued"]
    if waiting:
        m = waiting[0]
        raise StillQueued(
            f"project {project_id} is not stalled: {m.task} (scene {m.scene_index}) is waiting on queue {m.queue}"
        )
    root_id = enqueue_project(app, settings, project_id, priority, closing="abandoned: closed by vidpipe resume")
    # A dead worker's delivery would come back after the visibility timeout and re-run scenes already
    # resumed; drop it only once the new chain is queued (its own deliveries have other tags).
    stale = [m for m in messages if m.state == "unacked"]
    drop_unacked(app, settings, stale)
    return ResumeReport(project_id, root_id, stale)


class QueueingFailed(RuntimeError):
    """The batch was stored, but some of its projects could not be queued.

    Those projects stay PENDING with no chain root: automatic recovery picks them up after its grace
    period, and `vidpipe resume ID` queues one at once.
    """

    def __init__(self, ids: list[int], failed: list[tuple[int, str]]) -> None:
        #: Every project stored, in input order; `failed` holds (project id, reason) for those not queued.
        self.ids, self.failed = ids, failed
        super().__init__(f"{len(failed)} project(s) stored but not queued")

    @property
    def queued(self) -> list[int]:
        not_queued = {project_id for project_id, _ in self.failed}
        return [i for i in self.ids if i not in not_queued]


def submit_inputs(
    app: Celery, settings: Settings, inputs: Sequence[StoryboardInput], priority: int | None = None
) -> list[int]:
    """Store already validated storyboards in one transaction, then queue each; returns the project ids in order.

    Raises:
        StoryboardError, BatchNotStored: nothing was stored (see storing.store_inputs).
        QueueingFailed: everything was stored; the projects it lists were not queued.
        StoryboardError: also when a project's generator cannot run here (no key, template or server).

    """
    check_generators(settings, inputs)
    ids = store_inputs(settings, inputs)
    failed: list[tuple[int, str]] = []
    for project_id in ids:
        if failed:  # the broker just failed: do not wait out its retries once per project
            failed.append((project_id, f"not tried after project {failed[0][0]} failed"))
            continue
        try:
            enqueue_project(app, settings, project_id, priority)
        except Exception as exc:  # noqa: BLE001 - any broker or backend error; reported per project
            failed.append((project_id, " ".join(f"{type(exc).__name__}: {exc}".split())[:300]))
    if failed:
        raise QueueingFailed(ids, failed)
    return ids


def check_generators(settings: Settings, inputs: Sequence[StoryboardInput]) -> None:
    """Submit-time hook (issue 9): every project's generator is configured, before anything is stored."""
    from vidpipe_tasks.generators.dispatch import generation_problems
    from vidpipe_tasks.storyboard import StoryboardError

    boards = [(i.source or str(i.path), i.board.model_dump(mode="json")) for i in inputs]
    problems = generation_problems(settings, boards)
    if problems:
        raise StoryboardError(problems)


def submit(app: Celery, settings: Settings, sources: Sequence[str | Path], priority: int | None = None) -> list[int]:
    """Validate every input (files, folders, JSONL batches), then store and queue each storyboard as a project.

    Nothing is stored or queued while any input is wrong (StoryboardError lists every problem).
    """
    return submit_inputs(app, settings, load_inputs(sources, settings.input_limits), priority)


def purge_queue_folder(settings: Settings) -> int:
    """Remove leftover messages of the embedded broker (they would run on the next worker start)."""
    folder = settings.broker_dir / "queue"
    count = 0
    for msg in folder.glob("*.msg") if folder.is_dir() else []:
        msg.unlink(missing_ok=True)
        count += 1
    return count


def reset_work_folder(settings: Settings) -> None:
    """Delete the embedded default's work folder (demo --fresh)."""
    shutil.rmtree(settings.home, ignore_errors=True)
