"""Remote generation as durable provider jobs: reserve (limits, budget) → submit → poll → download.

Every job is money, so the order of writes is the design:

1. A row in `generation_jobs` is committed in state ``submitting`` (with the id we choose, where the
   provider lets us choose one) *before* the provider is called; the same transaction checks the
   per-provider concurrency and per-minute limits and the project's budget under a lock, so they hold
   across every worker.
2. The provider's answer (its job id) is committed before the first poll.
3. Polling never blocks a worker: while the job runs the stage raises `JobPending` and the task policy
   re-queues the task with a countdown (the rest of the chain travels with it).

A redelivered, retried or resumed `generate_clip` therefore finds the row and polls the same job. A
server that forgot a job it had accepted (ComfyUI keeps its queue in memory) gets it once more, counted
in `resubmissions`; a second loss fails the scene.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from vidpipe_tasks.db.models import GenerationJob
from vidpipe_tasks.db.session import session_scope
from vidpipe_tasks.errors import JobPending, PermanentStageError, TransientError
from vidpipe_tasks.generators.base import ClipInfo, ClipRequest
from vidpipe_tasks.settings import Settings

log = logging.getLogger(__name__)

#: Job states in which the provider may be working on (and billing) the job.
ACTIVE_STATES = ("submitting", "queued", "running")
#: States whose cost does not count towards a project's spend (the provider certainly did not take them).
UNBILLED_STATES = ("not_submitted",)
#: Seconds a `submitting` job the server does not know is left to the delivery that may be sending it
#: (longer than an upload plus the POST can take) before another delivery sends it under the same id.
SUBMIT_GRACE_S = 60


class GeneratorConfigError(ValueError):
    """The generator cannot run with this configuration (missing template, key or server, unknown model)."""


class NotAccepted(TransientError):
    """The provider certainly did not take the job (connection refused, 429, 5xx): submitting again is safe."""


@dataclass(frozen=True)
class Poll:
    """What a provider says about a job.

    Attributes:
        state: "queued", "running", "succeeded", "failed", "content_policy" or "lost" (the server does
            not know the job: it never arrived, or the server restarted and forgot it).
        progress: e.g. {"done": 3, "total": 20, "node": "KSampler"}.
        outputs: where the result is (adapter-specific), when succeeded.
        message: the provider's words when failed or blocked.
        detail: the provider's structured detail (node id and type, filter reasons).
    """

    state: str
    progress: dict = field(default_factory=dict)
    outputs: dict = field(default_factory=dict)
    message: str = ""
    detail: dict = field(default_factory=dict)


class RemoteAdapter(Protocol):
    """One provider's side of the protocol; the job bookkeeping is `RemoteGenerator`'s."""

    provider: str
    model: str | None
    #: Whether `submit` takes an id we chose (ComfyUI's prompt_id): a lost or unsure submit is then checkable.
    chooses_job_id: bool

    def validate(self) -> None:
        """Raise GeneratorConfigError for a configuration that cannot work (no network calls)."""

    def generated_seconds(self, request: ClipRequest) -> float:
        """Seconds of video the provider will generate (and bill) for `request`."""

    def choose_server(self) -> str:
        """The server for a new job (raises TransientError when none answers)."""

    def submit(self, server: str, job_id: str | None, request: ClipRequest) -> str:
        """Start the job; return its id. Raise NotAccepted, TransientError or PermanentStageError."""

    def poll(self, server: str, job_id: str) -> Poll:
        """Ask about a job (raise TransientError when the server does not answer)."""

    def download(self, server: str, job_id: str, outputs: dict, dest: Path) -> None:
        """Write the job's video to `dest`."""

    def cancel(self, server: str, job_id: str) -> None:
        """Best effort: stop a job that is no longer wanted."""


def parse_prices(spec: str) -> dict[str, float]:
    """Parse VIDPIPE_GENERATION_PRICES ("veo:veo-3.0-generate-001=0.40,comfyui=0.02") into key -> USD/s."""
    prices = {}
    for item in filter(None, (p.strip() for p in spec.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise GeneratorConfigError(f"VIDPIPE_GENERATION_PRICES: {item!r} is not provider[:model]=price")
        try:
            prices[key.strip()] = float(value)
        except ValueError:
            raise GeneratorConfigError(f"VIDPIPE_GENERATION_PRICES: {item!r} has no numeric price") from None
    return prices


def price_per_second(settings: Settings, provider: str, model: str | None) -> float:
    """USD per generated second: the provider:model entry, else the provider's, else 0 (unpriced)."""
    prices = parse_prices(settings.generation_prices)
    if model and f"{provider}:{model}" in prices:
        return prices[f"{provider}:{model}"]
    return prices.get(provider, 0.0)


def client_job_id(project_id: int, scene_index: int, attempt: int, submission: int, scene_attempt: int = 1) -> str:
    """A deterministic id for one submission, in the UUID shape ComfyUI prints (one per quality attempt too)."""
    key = f"vidpipe:{project_id}:{scene_index}:{attempt}:{submission}"
    if scene_attempt != 1:
        key += f":q{scene_attempt}"
    digest = hashlib.sha256(key.encode()).hexdigest()
    return f"{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"


def current_job(session: Session, project_id: int, scene_index: int, scene_attempt: int = 1) -> GenerationJob | None:
    """The latest job of a scene's quality attempt (1: the plain chain's), if any."""
    return session.scalar(
        select(GenerationJob)
        .where(
            GenerationJob.project_id == project_id,
            GenerationJob.scene_index == scene_index,
            GenerationJob.scene_attempt == scene_attempt,
        )
        .order_by(GenerationJob.attempt.desc())
        .limit(1)
    )


def project_spend(session: Session, project_id: int) -> float:
    """Estimated USD spent on the project's provider jobs (every job the provider may have accepted)."""
    total = session.scalar(
        select(func.coalesce(func.sum(GenerationJob.cost_estimate), 0.0)).where(
            GenerationJob.project_id == project_id, GenerationJob.state.not_in(UNBILLED_STATES)
        )
    )
    return float(total or 0.0)


def _provider_lock(session: Session, provider: str) -> None:
    """Serialise limit checks for one provider across every worker until the transaction ends."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        key = int(hashlib.sha256(f"vidpipe-provider:{provider}".encode()).hexdigest()[:15], 16)
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
    else:
        # SQLite has one writer: a write first takes the database lock, and later reads see the newest data.
        session.execute(text("UPDATE generation_jobs SET id = id WHERE 1 = 0"))


@dataclass(frozen=True)
class Limits:
    """The cross-worker limits of one provider."""

    max_concurrent: int
    submits_per_minute: int
    poll_s: float


def check_capacity(session: Session, provider: str, limits: Limits, now: datetime) -> None:
    """Raise JobPending while the provider is at its concurrency or per-minute limit (call under the lock)."""
    active = session.scalar(
        select(func.count()).where(GenerationJob.provider == provider, GenerationJob.state.in_(ACTIVE_STATES))
    )
    if active >= limits.max_concurrent:
        raise JobPending(
            f"{provider}: {active} jobs in flight (limit {limits.max_concurrent})",
            limits.poll_s,
            {"state": "waiting_for_slot", "active": active},
        )
    recent = session.scalar(
        select(func.count()).where(
            GenerationJob.provider == provider, GenerationJob.submitted_at >= now - timedelta(seconds=60)
        )
    )
    if recent >= limits.submits_per_minute:
        raise JobPending(
            f"{provider}: {recent} submissions in the last minute (limit {limits.submits_per_minute})",
            max(limits.poll_s, 5.0),
            {"state": "waiting_for_rate", "recent": recent},
        )


def check_budget(session: Session, project_id: int, budget: float | None, estimate: float) -> None:
    """Stop the project before a job whose estimate would take its spend over the budget."""
    if budget is None:
        return
    spent = project_spend(session, project_id)
    if spent + estimate > budget + 1e-9:
        raise PermanentStageError(
            "budget_exceeded",
            f"project {project_id}: this job (${estimate:.2f}) would take spend from ${spent:.2f} over the "
            f"budget of ${budget:.2f}",
            {"spent": round(spent, 4), "estimate": round(estimate, 4), "budget": budget},
        )


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass
class RemoteGenerator:
    """A clip generator that drives one adapter through durable provider jobs.

    `generate` either returns the downloaded clip or raises: JobPending (come back later, holding
    nothing), TransientError (retry with backoff) or PermanentStageError (the scene fails with a reason).
    """

    settings: Settings
    adapter: RemoteAdapter
    budget_usd: float | None = None
    #: Injected clock, for tests.
    now: Callable[[], datetime] = lambda: datetime.now(UTC)

    @property
    def name(self) -> str:
        return self.adapter.provider

    @property
    def limits(self) -> Limits:
        s = self.settings
        return Limits(s.generation_max_concurrent, s.generation_submits_per_minute, s.generation_poll_s)

    def generate(self, request: ClipRequest) -> ClipInfo:
        job, fresh = self._job_to_drive(request)
        if fresh:
            self._submit(job.id, request)
            raise JobPending(f"{self.name} job submitted", self.settings.generation_poll_s, {"state": "queued"})
        if job.state == "submitting" and not self.adapter.chooses_job_id:
            # The request went out but its answer (the operation name) never came back: the provider may
            # have started it. Submitting again could pay twice; fail the scene and let an operator look.
            self._finish(job.id, "failed", "permanent", "submit_uncertain", "no answer to the submission")
            raise PermanentStageError(
                "submit_uncertain",
                f"{self.name}: the submission of scene {request.scene_index} got no answer; check the provider "
                "console before `vidpipe resume` submits it again",
            )
        return self._poll(job.id, request)

    # -- the job row -------------------------------------------------------------------------------------------

    def _job_to_drive(self, request: ClipRequest) -> tuple[GenerationJob, bool]:
        """The scene's job to poll, or (fresh) a newly reserved one, committed in state `submitting`."""
        with session_scope(self.settings.database_url) as s:
            job = current_job(s, request.project_id, request.scene_index, request.attempt)
            if job is not None and job.state in (*ACTIVE_STATES, "succeeded"):
                return job, False
        # Asking servers for their queues is network time: never while holding the provider lock.
        server = self.adapter.choose_server()
        with session_scope(self.settings.database_url) as s:
            _provider_lock(s, self.name)
            # Again under the lock: a second delivery of this task may have reserved the job meanwhile.
            job = current_job(s, request.project_id, request.scene_index, request.attempt)
            if job is not None and job.state in (*ACTIVE_STATES, "succeeded"):
                return job, False
            if job is None or job.state != "not_submitted":
                # No job yet, or the last attempt ended (failed, or downloaded and its clip was lost since).
                job = GenerationJob(
                    project_id=request.project_id,
                    scene_index=request.scene_index,
                    scene_attempt=request.attempt,
                    attempt=(job.attempt + 1) if job else 1,
                    provider=self.name,
                    model=self.adapter.model,
                    created_at=self.now(),
                    progress={},
                    resubmissions=0,
                    polls=0,
                )
            self._reserve(s, request, job, server)
            s.add(job)
            s.flush()
            return job, True

    def _reserve(self, s: Session, request: ClipRequest, job: GenerationJob, server: str) -> None:
        """Check the limits and the budget (under the provider lock) and mark the job `submitting`."""
        now = self.now()
        seconds = self.adapter.generated_seconds(request)
        estimate = round(seconds * price_per_second(self.settings, self.name, self.adapter.model), 4)
        check_capacity(s, self.name, self.limits, now)
        check_budget(s, request.project_id, self.budget_usd, estimate)
        job.server, job.job_id = server, self._client_id(request, job)
        job.state, job.generated_seconds, job.cost_estimate = "submitting", seconds, estimate
        # The time of this submission attempt (the provider's answer updates it): rate limit and grace.
        job.submitted_at = now
        job.error_class = job.error_reason = job.error_message = None

    def _client_id(self, request: ClipRequest, job: GenerationJob) -> str | None:
        if not self.adapter.chooses_job_id:
            return None
        return client_job_id(request.project_id, request.scene_index, job.attempt, job.resubmissions, request.attempt)

    def _update(self, row_id: int, **values: object) -> None:
        with session_scope(self.settings.database_url) as s:
            job = s.get(GenerationJob, row_id)
            for key, value in values.items():
                setattr(job, key, value)

    def _finish(self, job_id: int, state: str, error_class: str | None, reason: str | None, message: str) -> None:
        self._update(
            job_id,
            state=state,
            error_class=error_class,
            error_reason=reason,
            error_message=message[:2000] if message else None,
            finished_at=self.now(),
        )

    # -- submit, poll, download --------------------------------------------------------------------------------

    def _submit(self, row_id: int, request: ClipRequest) -> None:
        with session_scope(self.settings.database_url) as s:
            job = s.get(GenerationJob, row_id)
            server, chosen = job.server, job.job_id
        try:
            provider_id = self.adapter.submit(server, chosen, request)
        except NotAccepted as exc:
            # Certainly not started: it costs nothing and holds no slot; the retry reserves again.
            self._finish(row_id, "not_submitted", "transient", "not_accepted", str(exc))
            raise
        except PermanentStageError as exc:
            self._finish(row_id, "failed", "permanent", exc.reason, str(exc))
            raise
        # Committed before any poll: from here on a crash re-polls this job instead of paying for another.
        self._update(row_id, job_id=provider_id, state="queued", submitted_at=self.now())
        log.info(
            "project %s scene %s: %s job %s on %s",
            request.project_id,
            request.scene_index,
            self.name,
            provider_id,
            server,
        )

    def _poll(self, row_id: int, request: ClipRequest) -> ClipInfo:
        with session_scope(self.settings.database_url) as s:
            job = s.get(GenerationJob, row_id)
            server, provider_id, state, outputs = job.server, job.job_id, job.state, job.outputs
            resubmissions, created = job.resubmissions, _utc(job.created_at)
            attempted = _utc(job.submitted_at) if job.submitted_at else created
            job.polls += 1
        if state != "succeeded":
            poll = self.adapter.poll(server, provider_id)
            if poll.state in ("queued", "running", "lost"):
                # A finished job is taken whenever it finishes (it is paid for); an unfinished one only in time.
                self._check_deadline(row_id, created, server, provider_id, request)
            if poll.state == "lost":
                return self._lost(row_id, request, state, resubmissions, attempted, provider_id)
            if poll.state in ("queued", "running"):
                self._update(row_id, state=poll.state, progress=poll.progress)
                raise JobPending(
                    f"{self.name} job {provider_id} is {poll.state}",
                    self.settings.generation_poll_s,
                    {"state": poll.state, **poll.progress},
                )
            if poll.state != "succeeded":
                self._failed(row_id, poll)
            outputs = poll.outputs
            self._update(row_id, state="succeeded", outputs=outputs, progress=poll.progress)
        return self._download(row_id, server, provider_id, outputs or {}, request)

    def _check_deadline(
        self, row_id: int, created: datetime, server: str, provider_id: str, request: ClipRequest
    ) -> None:
        if self.now() - created <= timedelta(seconds=self.settings.scene_deadline_s):
            return
        try:
            self.adapter.cancel(server, provider_id)
        except Exception as exc:  # noqa: BLE001 - best effort: the scene fails either way
            log.warning("could not cancel %s job %s: %s", self.name, provider_id, exc)
        limit = self.settings.scene_deadline_s
        message = f"scene {request.scene_index}: {self.name} job not done {limit} s after its submission"
        self._finish(row_id, "failed", "permanent", "deadline", message)
        raise PermanentStageError("deadline", message)

    def _lost(
        self, row_id: int, request: ClipRequest, state: str, resubmissions: int, attempted: datetime, lost_id: str
    ) -> ClipInfo:
        if state == "submitting":
            if self.now() - attempted < timedelta(seconds=SUBMIT_GRACE_S):
                # Another delivery of this task may be sending it right now: give it time before we do.
                raise JobPending(f"{self.name} job being submitted", self.settings.generation_poll_s,
                                 {"state": "submitting"})  # fmt: skip
            # Our own submission never arrived (we chose its id, so the server would know it): send it now.
            self._submit(row_id, request)
            raise JobPending(f"{self.name} job submitted", self.settings.generation_poll_s, {"state": "queued"})
        if resubmissions >= 1:
            message = f"{self.name} lost the job of scene {request.scene_index} again after one resubmission"
            self._finish(row_id, "failed", "permanent", "job_lost", message)
            raise PermanentStageError("job_lost", message)
        self._resubmit(row_id, request, lost_id)
        raise JobPending(f"{self.name} job resubmitted", self.settings.generation_poll_s, {"state": "resubmitted"})

    def _resubmit(self, row_id: int, request: ClipRequest, lost_id: str) -> None:
        """The server forgot an accepted job (a restart): submit it once more, counted, within the budget."""
        server = self.adapter.choose_server()
        with session_scope(self.settings.database_url) as s:
            _provider_lock(s, self.name)
            job = s.get(GenerationJob, row_id)
            if job.job_id != lost_id or job.state not in ACTIVE_STATES:
                return  # a concurrent delivery of this task resubmitted it already: poll that one
            check_budget(s, request.project_id, self.budget_usd, job.cost_estimate / (1 + job.resubmissions))
            job.cost_estimate = round(job.cost_estimate / (1 + job.resubmissions) * (2 + job.resubmissions), 4)
            job.resubmissions += 1
            job.state, job.server = "submitting", server
            job.job_id, job.submitted_at = self._client_id(request, job), self.now()
        log.warning(
            "project %s scene %s: %s forgot its job; resubmitting once",
            request.project_id,
            request.scene_index,
            self.name,
        )
        self._submit(row_id, request)

    def _failed(self, row_id: int, poll: Poll) -> None:
        reason = "content_policy" if poll.state == "content_policy" else "generation_failed"
        self._finish(row_id, "failed", "permanent", reason, poll.message)
        raise PermanentStageError(reason, f"{self.name}: {poll.message}", poll.detail)

    def _download(self, row_id: int, server: str, provider_id: str, outputs: dict, request: ClipRequest) -> ClipInfo:
        output = Path(request.output_path)
        output.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".part")
        os.close(fd)
        try:
            self.adapter.download(server, provider_id, outputs, Path(tmp))
            info = probe_clip(Path(tmp))
            os.replace(tmp, output)
        finally:
            Path(tmp).unlink(missing_ok=True)
        self._update(row_id, state="downloaded", finished_at=self.now())
        appearances = {c.tag: "reference" if c.reference_image else f"invented:{self.name}" for c in request.characters}
        return ClipInfo(output, info.frame_count, info.fps, info.width, info.height, appearances)


def probe_clip(path: Path) -> ClipInfo:
    """Frame count, rate and size of a downloaded video (raises TransientError for an unreadable file)."""
    import av  # the encoder stack stays off the client's import path

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            frames = stream.frames or sum(1 for _ in container.decode(stream))
            fps = round(float(stream.average_rate or stream.base_rate or 0)) or 1
            return ClipInfo(path, frames, fps, stream.codec_context.width, stream.codec_context.height)
    except (av.error.FFmpegError, IndexError) as exc:
        raise TransientError(f"downloaded video is unreadable: {exc}") from exc
