"""The durable provider-job protocol, against a scripted adapter and a real (SQLite) job table."""

from __future__ import annotations

import shutil
from collections import deque
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from vidpipe_tasks.db.models import GenerationJob
from vidpipe_tasks.db.session import session_scope
from vidpipe_tasks.errors import JobPending, PermanentStageError
from vidpipe_tasks.generators.base import CharacterSpec, ClipRequest
from vidpipe_tasks.generators.procedural import ProceduralGenerator
from vidpipe_tasks.generators.remote import (
    SUBMIT_GRACE_S,
    GeneratorConfigError,
    NotAccepted,
    Poll,
    RemoteGenerator,
    client_job_id,
    parse_prices,
    price_per_second,
)
from vidpipe_tasks.storyboard import validate_storyboard
from vidpipe_tasks.workflow import create_project


@pytest.fixture(scope="module")
def sample_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real little MP4 that the scripted provider "returns"."""
    out = tmp_path_factory.mktemp("clip") / "sample.mp4"
    request = ClipRequest(1, 1, "sample", None, (), 0.5, 8, 64, 64, out)
    ProceduralGenerator().generate(request)
    return out


class ScriptedAdapter:
    """A provider whose answers the test scripts; it records what it was asked."""

    provider = "comfyui"
    model = None

    def __init__(self, clip: Path, chooses_job_id: bool = True) -> None:
        self.clip, self.chooses_job_id = clip, chooses_job_id
        self.polls: deque[Poll] = deque()
        self.submitted: list[str | None] = []
        self.cancelled: list[str] = []
        self.refuse: Exception | None = None

    def validate(self) -> None:
        pass

    def generated_seconds(self, request: ClipRequest) -> float:
        return 4.0

    def choose_server(self) -> str:
        return "http://gpu1:8188"

    def submit(self, server: str, job_id: str | None, request: ClipRequest) -> str:
        if self.refuse is not None:
            raise self.refuse
        self.submitted.append(job_id)
        return job_id or f"operations/op{len(self.submitted)}"

    def poll(self, server: str, job_id: str) -> Poll:
        return self.polls.popleft() if self.polls else Poll("running", progress={"done": 1, "total": 4})

    def download(self, server: str, job_id: str, outputs: dict, dest: Path) -> None:
        shutil.copyfile(self.clip, dest)

    def cancel(self, server: str, job_id: str) -> None:
        self.cancelled.append(job_id)


@pytest.fixture
def project(settings) -> int:
    board = validate_storyboard({"title": "t", "scenes": [{"description": "a"}, {"description": "b"}]}, "t", Path())
    return create_project(settings, Path("t.yaml"), board)


def request_for(settings, project: int, scene: int = 1) -> ClipRequest:
    out = settings.media_root / f"p{project}" / f"s{scene}.mp4"
    return ClipRequest(project, scene, "a harbour", None, (CharacterSpec("wren"),), 4.0, 12, 640, 360, out)


def job_rows(settings) -> list[GenerationJob]:
    with session_scope(settings.database_url) as s:
        return list(s.scalars(select(GenerationJob).order_by(GenerationJob.id)))


def drive(generator: RemoteGenerator, request: ClipRequest, polls: int = 10):
    for _ in range(polls):
        try:
            return generator.generate(request)
        except JobPending:
            continue
    raise AssertionError("never finished")


def test_the_job_is_stored_before_polling_and_a_redelivery_polls_it_instead_of_paying_again(
    settings, project, sample_clip
) -> None:
    adapter = ScriptedAdapter(sample_clip)
    request = request_for(settings, project)
    # Given a first run that submits
    with pytest.raises(JobPending):
        RemoteGenerator(settings, adapter, None).generate(request)
    (row,) = job_rows(settings)
    assert (row.state, row.job_id, row.attempt) == ("queued", client_job_id(project, 1, 1, 0), 1)
    # When the task is redelivered to another worker (a new generator) while the job runs, then succeeds
    adapter.polls.extend([Poll("running"), Poll("succeeded", outputs={"filename": "x.mp4"})])
    other = RemoteGenerator(settings, adapter, None)
    with pytest.raises(JobPending) as pending:
        other.generate(request)
    info = other.generate(request)
    # Then it polled the stored job: one submission, the clip downloaded atomically
    assert adapter.submitted == [row.job_id]
    assert pending.value.progress["state"] == "running"
    assert info.path == request.output_path and info.frame_count == 4 and request.output_path.is_file()
    assert not list(request.output_path.parent.glob("*.part"))
    (row,) = job_rows(settings)
    assert (row.state, row.polls, row.cost_estimate) == ("downloaded", 2, pytest.approx(4.0 * 0.02))


def test_a_server_that_forgot_an_accepted_job_gets_it_once_more_and_then_the_scene_fails(
    settings, project, sample_clip
) -> None:
    adapter = ScriptedAdapter(sample_clip)
    generator = RemoteGenerator(settings, adapter, None)
    request = request_for(settings, project)
    with pytest.raises(JobPending):
        generator.generate(request)
    adapter.polls.append(Poll("lost"))
    with pytest.raises(JobPending):
        generator.generate(request)
    (row,) = job_rows(settings)
    assert row.resubmissions == 1 and row.cost_estimate == pytest.approx(2 * 0.08)
    assert adapter.submitted == [client_job_id(project, 1, 1, 0), client_job_id(project, 1, 1, 1)]
    adapter.polls.append(Poll("lost"))
    with pytest.raises(PermanentStageError) as failed:
        generator.generate(request)
    assert failed.value.reason == "job_lost" and len(adapter.submitted) == 2
    assert job_rows(settings)[0].state == "failed"


def test_a_submission_that_never_arrived_is_sent_under_the_same_id_without_counting(
    settings, project, sample_clip
) -> None:
    adapter = ScriptedAdapter(sample_clip)
    clock = [datetime.now(UTC)]
    generator = RemoteGenerator(settings, adapter, None, now=lambda: clock[0])
    request = request_for(settings, project)
    # A worker died between committing the row and the POST: the row is `submitting` with our id.
    adapter.refuse = TimeoutError("killed")
    with pytest.raises(TimeoutError):
        generator.generate(request)
    adapter.refuse = None
    # At first another delivery may still be sending it: wait rather than risk sending it twice
    adapter.polls.append(Poll("lost"))  # the server has never heard of it
    with pytest.raises(JobPending) as waiting:
        generator.generate(request)
    assert waiting.value.progress["state"] == "submitting" and adapter.submitted == []
    # Past the grace it is sent, under the same id, and not counted as a resubmission
    clock[0] += timedelta(seconds=SUBMIT_GRACE_S + 1)
    adapter.polls.append(Poll("lost"))
    with pytest.raises(JobPending):
        generator.generate(request)
    (row,) = job_rows(settings)
    assert adapter.submitted == [client_job_id(project, 1, 1, 0)] and row.resubmissions == 0


def test_an_unsure_submission_to_a_provider_that_names_its_own_jobs_fails_instead_of_paying_twice(
    settings, project, sample_clip
) -> None:
    adapter = ScriptedAdapter(sample_clip, chooses_job_id=False)
    generator = RemoteGenerator(settings, adapter, None)
    request = request_for(settings, project)
    adapter.refuse = TimeoutError("read timeout after the request went out")
    with pytest.raises(TimeoutError):
        generator.generate(request)
    adapter.refuse = None
    with pytest.raises(PermanentStageError) as failed:
        generator.generate(request)
    assert failed.value.reason == "submit_uncertain" and adapter.submitted == []


def test_a_submission_the_provider_refused_costs_nothing_and_is_sent_again(settings, project, sample_clip) -> None:
    adapter = ScriptedAdapter(sample_clip, chooses_job_id=False)
    generator = RemoteGenerator(settings, adapter, 0.10)
    request = request_for(settings, project)
    adapter.refuse = NotAccepted("429", retry_after=7)
    with pytest.raises(NotAccepted) as refused:
        generator.generate(request)
    assert refused.value.retry_after == 7
    (row,) = job_rows(settings)
    assert row.state == "not_submitted" and row.error_reason == "not_accepted"
    adapter.refuse = None
    with pytest.raises(JobPending):  # the budget did not count the refused one
        generator.generate(request)
    (row,) = job_rows(settings)
    assert (row.state, row.attempt, row.job_id) == ("queued", 1, "operations/op1")


def test_a_second_delivery_running_at_the_same_time_polls_the_first_ones_job(settings, project, sample_clip) -> None:
    adapter = ScriptedAdapter(sample_clip)
    request = request_for(settings, project)
    # Given one delivery that reserved the job and is still sending it
    first = RemoteGenerator(settings, adapter, None)
    adapter.refuse = TimeoutError("still sending")
    with pytest.raises(TimeoutError):
        first.generate(request)
    adapter.refuse = None
    # When a duplicate delivery runs meanwhile, it finds the reserved row and does not submit
    adapter.polls.append(Poll("lost"))
    with pytest.raises(JobPending):
        RemoteGenerator(settings, adapter, None).generate(request)
    assert adapter.submitted == [] and len(job_rows(settings)) == 1


def test_the_provider_limits_hold_new_jobs_back_without_storing_anything(settings, project, sample_clip) -> None:
    adapter = ScriptedAdapter(sample_clip)
    tight = replace(settings, generation_max_concurrent=1, generation_poll_s=3.0)
    with pytest.raises(JobPending):
        RemoteGenerator(tight, adapter, None).generate(request_for(tight, project, 1))
    with pytest.raises(JobPending) as waiting:
        RemoteGenerator(tight, adapter, None).generate(request_for(tight, project, 2))
    assert waiting.value.progress["state"] == "waiting_for_slot" and waiting.value.poll_after == 3.0
    assert len(job_rows(settings)) == 1 and len(adapter.submitted) == 1
    per_minute = replace(settings, generation_submits_per_minute=1)
    with pytest.raises(JobPending) as waiting:
        RemoteGenerator(per_minute, adapter, None).generate(request_for(per_minute, project, 2))
    assert waiting.value.progress["state"] == "waiting_for_rate"


def test_the_budget_stops_a_job_before_it_is_submitted(settings, project, sample_clip) -> None:
    adapter = ScriptedAdapter(sample_clip)
    with pytest.raises(PermanentStageError) as stopped:
        RemoteGenerator(settings, adapter, 0.05).generate(request_for(settings, project))
    assert stopped.value.reason == "budget_exceeded" and stopped.value.detail["estimate"] == pytest.approx(0.08)
    assert adapter.submitted == [] and job_rows(settings) == []


def test_a_job_past_the_scene_deadline_is_cancelled_and_fails_the_scene(settings, project, sample_clip) -> None:
    adapter = ScriptedAdapter(sample_clip)
    clock = [datetime.now(UTC)]
    generator = RemoteGenerator(replace(settings, scene_deadline_s=60), adapter, None, now=lambda: clock[0])
    request = request_for(settings, project)
    with pytest.raises(JobPending):
        generator.generate(request)
    clock[0] += timedelta(seconds=61)
    with pytest.raises(PermanentStageError) as late:
        generator.generate(request)
    assert late.value.reason == "deadline" and adapter.cancelled == [client_job_id(project, 1, 1, 0)]


@pytest.mark.parametrize(
    ("poll", "reason"),
    [
        (Poll("content_policy", message="filtered", detail={"rai_media_filtered_reasons": ["x"]}), "content_policy"),
        (Poll("failed", message="node 11 (KSamplerAdvanced) failed: OOM"), "generation_failed"),
    ],
)
def test_provider_failures_fail_the_scene_with_their_reason(settings, project, sample_clip, poll, reason) -> None:
    adapter = ScriptedAdapter(sample_clip)
    generator = RemoteGenerator(settings, adapter, None)
    with pytest.raises(JobPending):
        generator.generate(request_for(settings, project))
    adapter.polls.append(poll)
    with pytest.raises(PermanentStageError) as failed:
        generator.generate(request_for(settings, project))
    assert failed.value.reason == reason and failed.value.detail == poll.detail
    (row,) = job_rows(settings)
    assert (row.state, row.error_class, row.error_reason) == ("failed", "permanent", reason)


def test_a_new_run_after_a_failed_attempt_is_a_new_attempt(settings, project, sample_clip) -> None:
    adapter = ScriptedAdapter(sample_clip)
    generator = RemoteGenerator(settings, adapter, None)
    request = request_for(settings, project)
    with pytest.raises(JobPending):
        generator.generate(request)
    adapter.polls.append(Poll("failed", message="boom"))
    with pytest.raises(PermanentStageError):
        generator.generate(request)
    adapter.polls.append(Poll("succeeded", outputs={}))
    info = drive(generator, request)  # `vidpipe resume` runs the scene again
    assert info.path.is_file()
    assert [(j.attempt, j.state) for j in job_rows(settings)] == [(1, "failed"), (2, "downloaded")]


def test_prices_per_provider_and_model() -> None:
    assert parse_prices("veo:veo-3.0-fast-generate-001=0.15, veo=0.40 ,comfyui=0") == {
        "veo:veo-3.0-fast-generate-001": 0.15,
        "veo": 0.4,
        "comfyui": 0.0,
    }
    with pytest.raises(GeneratorConfigError, match="provider\\[:model\\]=price"):
        parse_prices("veo")


def test_price_lookup_prefers_the_model(settings) -> None:
    priced = replace(settings, generation_prices="veo:veo-3.0-fast-generate-001=0.15,veo=0.40")
    assert price_per_second(priced, "veo", "veo-3.0-fast-generate-001") == 0.15
    assert price_per_second(priced, "veo", "veo-3.1-generate-preview") == 0.40
    assert price_per_second(priced, "comfyui", None) == 0.0


def test_a_lost_job_is_resubmitted_once_even_when_two_deliveries_notice(settings, project, sample_clip) -> None:
    adapter = ScriptedAdapter(sample_clip)
    generator = RemoteGenerator(settings, adapter, None)
    request = request_for(settings, project)
    with pytest.raises(JobPending):
        generator.generate(request)
    lost = job_rows(settings)[0].job_id
    (row,) = job_rows(settings)
    generator._resubmit(row.id, request, lost)  # the first delivery to notice
    generator._resubmit(row.id, request, lost)  # a second one that polled the same lost id
    (row,) = job_rows(settings)
    assert row.resubmissions == 1 and adapter.submitted == [lost, client_job_id(project, 1, 1, 1)]


def test_every_quality_attempt_of_a_scene_is_its_own_job_and_its_cost_counts(settings, project, sample_clip) -> None:
    from vidpipe_tasks.candidates import attempt_cost
    from vidpipe_tasks.generators.remote import project_spend

    adapter = ScriptedAdapter(sample_clip)
    generator = RemoteGenerator(replace(settings, generation_prices="comfyui=0.05"), adapter, None)
    for attempt in (1, 2):
        request = replace(request_for(settings, project), attempt=attempt, seed=project + attempt)
        adapter.polls.append(Poll("succeeded", outputs={"filename": "x.mp4"}))
        drive(generator, request)
    rows = job_rows(settings)
    assert [(r.scene_index, r.scene_attempt, r.attempt, r.state) for r in rows] == [
        (1, 1, 1, "downloaded"),
        (1, 2, 1, "downloaded"),
    ]
    # Distinct provider ids (ComfyUI's prompt id is ours), and spend adds up over the attempts.
    assert adapter.submitted == [client_job_id(project, 1, 1, 0), client_job_id(project, 1, 1, 0, 2)]
    assert len(set(adapter.submitted)) == 2
    with session_scope(settings.database_url) as s:
        assert [attempt_cost(s, project, 1, n) for n in (1, 2)] == [0.2, 0.2]
        assert project_spend(s, project) == pytest.approx(0.4)
