"""The quality gate and the pick: the documented score, the decision, and the attempt records (no broker)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import func, select

from tests.unit.test_message_trust import BOARD, new_project, vector
from tests.unit.test_message_trust import payload as analysis_payload
from vidpipe_tasks import candidates, media
from vidpipe_tasks.celery_app import create_app
from vidpipe_tasks.cli.status import load_status, render_text
from vidpipe_tasks.db.models import Asset, AssetAppearance, Scene, SceneAttempt, StageStatus
from vidpipe_tasks.db.session import session_scope
from vidpipe_tasks.errors import MessageIgnored, PermanentStageError
from vidpipe_tasks.policy import first_task_id
from vidpipe_tasks.quality import (
    AttemptScore,
    QualityPolicy,
    attempt_seed,
    best_attempt,
    composite_score,
    decide,
    judged_scores,
    passes_gate,
    quality_for,
)
from vidpipe_tasks.settings import load_settings
from vidpipe_tasks.stages import register_entities
from vidpipe_tasks.workflow import build_chain

GATED = {**BOARD, "quality": {"min_identity": 0.8, "max_attempts": 2, "candidates": 2}}


def ok(attempt: int, identity: float | None, adherence: float | None) -> AttemptScore:
    return AttemptScore(attempt, analysed_ok=True, identity=identity, adherence=adherence)


def analysis(identity: float | None, adherence: float | None, status: str = "ok") -> dict:
    return {"status": status, "continuity": {"components": {"identity": identity, "adherence": adherence}}}


# -- the documented score --------------------------------------------------------------------------------


def test_the_score_is_the_mean_of_identity_and_adherence_over_those_judged() -> None:
    assert composite_score(0.8, 0.6) == pytest.approx(0.7)
    assert composite_score(None, 0.5) == 0.5
    assert composite_score(None, None) is None


def test_a_referenced_character_that_matched_nobody_scores_identity_zero() -> None:
    assert judged_scores(analysis(None, 0.5), referenced={"ana"}, declared=["ana", "bo"]) == (0.0, 0.5)
    # Nobody declared had a reference: identity is not judged at all.
    assert judged_scores(analysis(None, 1.0), referenced=set(), declared=["bo"]) == (None, 1.0)
    assert judged_scores(analysis(0.9, 1.0, status="degraded"), {"ana"}, ["ana"]) == (None, None)


def test_the_best_attempt_has_the_higher_score_and_ties_go_to_the_lower_attempt() -> None:
    assert best_attempt([ok(1, 0.7, 1.0), ok(2, 0.9, 1.0), ok(3, 0.8, 1.0)]).attempt == 2
    assert best_attempt([ok(3, 0.9, 1.0), ok(1, 0.9, 1.0), ok(2, 0.9, 1.0)]).attempt == 1
    degraded = AttemptScore(1, analysed_ok=False)
    assert best_attempt([degraded, ok(2, 0.1, 0.0)]).attempt == 2
    assert best_attempt([AttemptScore(1, failed=True), degraded]).attempt == 1
    assert best_attempt([AttemptScore(1, failed=True)]) is None


def test_the_gate_needs_both_minimums_and_ignores_what_it_cannot_judge() -> None:
    policy = QualityPolicy(min_identity=0.8, min_adherence=1.0, max_attempts=3)
    assert passes_gate(policy, ok(1, 0.85, 1.0))
    assert not passes_gate(policy, ok(1, 0.79, 1.0)) and not passes_gate(policy, ok(1, 0.9, 0.5))
    assert passes_gate(policy, ok(1, None, 1.0))
    assert not passes_gate(policy, AttemptScore(1, analysed_ok=False))


# -- the decision after a round --------------------------------------------------------------------------


def test_a_round_below_the_gate_asks_for_another_until_the_last_which_keeps_the_best() -> None:
    policy = QualityPolicy(min_identity=0.95, max_attempts=3, candidates=2)
    first = [ok(1, 0.9, 1.0), ok(2, 0.92, 1.0)]
    assert decide(policy, 1, first).action == "next_round"
    passed = decide(policy, 2, [*first, ok(3, 0.96, 1.0), ok(4, 0.97, 1.0)])
    assert (passed.action, passed.attempt) == ("keep", 4)
    last = decide(policy, 3, [*first, ok(3, 0.9, 1.0), ok(4, 0.9, 1.0), ok(5, 0.93, 1.0), ok(6, 0.91, 1.0)])
    assert (last.action, last.attempt) == ("keep", 5)


def test_failed_candidates_fail_the_scene_only_when_every_attempt_failed() -> None:
    policy = QualityPolicy(min_identity=0.95, max_attempts=3, candidates=2)
    one_failed = decide(policy, 1, [AttemptScore(1, failed=True), ok(2, 0.99, 1.0)])
    assert (one_failed.action, one_failed.attempt) == ("keep", 2)
    assert decide(policy, 1, [AttemptScore(1, failed=True), AttemptScore(2, failed=True)]).action == "fail"
    # A later round that fails entirely keeps the best earlier attempt instead of trying again.
    later = decide(
        policy, 2, [ok(1, 0.5, 1.0), ok(2, 0.6, 1.0), AttemptScore(3, failed=True), AttemptScore(4, failed=True)]
    )
    assert (later.action, later.attempt) == ("keep", 2)


def test_attempt_numbers_and_seeds_per_round() -> None:
    policy = QualityPolicy(max_attempts=3, candidates=2)
    assert [list(policy.round_attempts(r)) for r in (1, 2, 3)] == [[1, 2], [3, 4], [5, 6]]
    assert [policy.round_of(n) for n in (1, 2, 3, 6)] == [1, 1, 2, 3]
    assert attempt_seed(7, 1) == 7  # attempt 1 renders what the plain chain renders
    assert len({attempt_seed(7, n) for n in range(1, 21)}) == 20


# -- policy per project ----------------------------------------------------------------------------------


def test_the_storyboard_block_overrides_the_settings_and_the_gate_is_off_by_default(tmp_path: Path) -> None:
    settings = load_settings({"VIDPIPE_HOME": str(tmp_path), "VIDPIPE_QUALITY_MIN_ADHERENCE": "0.5"})
    assert not quality_for(load_settings({"VIDPIPE_HOME": str(tmp_path)}), BOARD).enabled
    policy = quality_for(settings, GATED)
    assert (policy.min_identity, policy.min_adherence, policy.max_attempts, policy.candidates) == (0.8, 0.5, 2, 2)
    assert not quality_for(settings, {**GATED, "manifest": None}).enabled  # no analysis to judge


@pytest.mark.parametrize(
    ("name", "value"),
    [("MIN_IDENTITY", "1.5"), ("MIN_ADHERENCE", "-0.1"), ("MAX_ATTEMPTS", "0"), ("CANDIDATES", "5")],
)
def test_quality_settings_out_of_range_are_refused(tmp_path: Path, name: str, value: str) -> None:
    with pytest.raises(ValueError, match=f"VIDPIPE_QUALITY_{name}"):
        load_settings({"VIDPIPE_HOME": str(tmp_path), f"VIDPIPE_QUALITY_{name}": value})


# -- the chain -------------------------------------------------------------------------------------------


def links(signature) -> list:
    """The chain's links as its first task's message carries them.

    Celery's `chain(...)` folds the links after a chord into the chord's body; sending the chain unrolls them
    again (canvas.prepare_steps), so the rounds and the registration are separate links at run time.
    """
    out = []
    for task in signature.tasks:
        out.extend(task._unroll_body() if task.task == "celery.chord" and hasattr(task.body, "tasks") else [task])
    return out


def task_names(signature) -> list[str]:
    return [t.task for t in links(signature)]


def test_with_the_gate_off_the_chain_is_the_plain_one(tmp_path: Path) -> None:
    app = create_app(load_settings({"VIDPIPE_HOME": str(tmp_path)}))
    plain = build_chain(app, 1, [1, 2], True, epoch=1)
    off = build_chain(app, 1, [1, 2], True, epoch=1, quality=QualityPolicy())
    assert (
        task_names(off)
        == task_names(plain)
        == [
            *["vidpipe.generate_clip", "vidpipe.analyze_clip", "vidpipe.register_entities"] * 2,
            "vidpipe.finalize_project",
        ]
    )


def test_a_gated_scene_is_its_rounds_then_its_registration(tmp_path: Path) -> None:
    app = create_app(load_settings({"VIDPIPE_HOME": str(tmp_path)}))
    gate_only = build_chain(app, 1, [1], True, epoch=1, quality=QualityPolicy(max_attempts=2))
    round_ = ["vidpipe.generate_candidate", "vidpipe.analyze_candidate", "vidpipe.pick_attempt"]
    assert task_names(gate_only) == [*round_, *round_, "vidpipe.register_entities", "vidpipe.finalize_project"]
    assert [t.args[0].get("attempt") or t.args[0].get("round") for t in gate_only.tasks[:6:3]] == [1, 2]
    with_candidates = build_chain(app, 1, [1], True, epoch=1, quality=QualityPolicy(max_attempts=2, candidates=3))
    assert task_names(with_candidates) == [
        "celery.chord",
        "celery.chord",
        "vidpipe.register_entities",
        "vidpipe.finalize_project",
    ]
    chords = links(with_candidates)[:2]
    headers = [[chain_.tasks[0].args[0]["attempt"] for chain_ in c.tasks] for c in chords]
    assert headers == [[1, 2, 3], [4, 5, 6]]
    assert [c.body.args[0]["round"] for c in chords] == [1, 2] and all(c.body.immutable for c in chords)
    assert all(sig.args[0]["epoch"] == 1 for c in chords for chain_ in c.tasks for sig in chain_.tasks[:1])


def test_the_duplicate_guard_finds_the_first_candidate_of_a_chord(settings) -> None:
    signature = build_chain(create_app(settings), 1, [1], True, epoch=1, quality=QualityPolicy(candidates=2))
    signature.freeze()
    link = links(signature)[0]
    first = link.tasks[0].tasks[0]
    assert first.id and first_task_id(dict(link)) == first.id
    assert first_task_id({"task": "vidpipe.register_entities", "options": {"task_id": "x"}}) == "x"


# -- attempt records and the pick (database only) --------------------------------------------------------


def generated(settings, project_id: int, attempt: int, scene_index: int = 1) -> dict:
    """An attempt as generate_candidate leaves it: its row with a stored clip path."""
    with session_scope(settings.database_url) as s:
        scene = s.scalar(select(Scene).where(Scene.project_id == project_id, Scene.scene_index == scene_index))
        row = candidates._attempt_row(s, scene, attempt, candidates._policy(settings, scene))
        row.clip_path = media.attempt_clip_path(project_id, scene_index, attempt)
        row.clip_info = {"size_bytes": 1, "frame_count": 8, "fps": 8, "width": 64, "height": 64, "generator": "t"}
        row.references = {"ana": {"asset_id": 1, "tag": "ana", "source": "UPLOADED", "reference_image": "x"}}
        row.state = "generated"
    return {"project_id": project_id, "scene_index": scene_index, "attempt": attempt}


def attempt_analysis(settings, project_id: int, attempt: int, identity: float) -> dict:
    """A valid analysis of one attempt: a new face (its crop in the attempt's folder) and a score."""
    relative = f"{media.attempt_crops_dir(project_id, 1, attempt)}/c0.png"
    path = media.absolute(settings.media_root, relative)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32)).save(path)
    result = analysis_payload(project_id, relative, candidate={"embedding": vector(attempt)})["analysis"]
    result["continuity"] = {"score": identity, "components": {"identity": identity, "adherence": 1.0}}
    return result


def request_for(settings, ref: dict) -> dict:
    request = candidates.analysis_input(settings, ref)
    assert request is not None
    return request


def row(settings, project_id: int, attempt: int) -> SceneAttempt:
    with session_scope(settings.database_url) as s:
        return candidates._find_row(s, project_id, 1, attempt)


def test_an_analysis_is_recorded_once_and_a_second_delivery_changes_nothing(settings, tmp_path) -> None:
    pid = new_project(settings, tmp_path, GATED)
    ref = generated(settings, pid, 1)
    first = candidates.record_analysis(
        settings, ref, request_for(settings, ref), attempt_analysis(settings, pid, 1, 0.9)
    )
    recorded = row(settings, pid, 1)
    assert (first["outcome"], recorded.state, recorded.identity, recorded.adherence) == ("ok", "analysed", 0.9, 1.0)
    assert recorded.score == pytest.approx(0.95)
    assert "embedding" not in recorded.summary["candidates"][0]  # the summary has no raw embeddings
    # A redelivery finds nothing to analyse; one that raced past it does not overwrite the first record.
    assert candidates.analysis_input(settings, ref) is None
    again = candidates.record_analysis(settings, ref, {"registry": [], "declared_characters": []}, analysis(0.1, 0.1))
    assert again == first and row(settings, pid, 1).analysed_at == recorded.analysed_at


def test_the_pick_keeps_the_best_attempt_and_only_it_is_registered(settings, tmp_path) -> None:
    pid = new_project(settings, tmp_path, GATED)
    for attempt, identity in ((1, 0.82), (2, 0.9)):
        ref = generated(settings, pid, attempt)
        candidates.record_analysis(
            settings, ref, request_for(settings, ref), attempt_analysis(settings, pid, attempt, identity)
        )
    result, decision = candidates.pick_attempt(settings, {"project_id": pid, "scene_index": 1, "round": 1})
    assert (result["attempt"], result["final"], decision.reason) == (2, True, "attempt 2 passed the gate")
    assert [row(settings, pid, n).kept for n in (1, 2)] == [False, True]
    # A redelivered pick returns the same decision.
    assert candidates.pick_attempt(settings, {"project_id": pid, "scene_index": 1, "round": 1})[0] == result
    with pytest.raises(MessageIgnored, match="not kept"):
        register_entities(settings, {"project_id": pid, "scene_index": 1, "attempt": 1})
    summary = register_entities(settings, result)
    assert summary["new_asset_tags"] == ["bo"]
    again = register_entities(settings, result)  # redelivered registration: nothing added
    with session_scope(settings.database_url) as s:
        assets = list(s.scalars(select(Asset).where(Asset.origin_project_id == pid)))
        appearances = s.scalar(select(func.count()).select_from(AssetAppearance))
        scene = s.scalar(select(Scene).where(Scene.project_id == pid, Scene.scene_index == 1))
        assert scene.clip.path == media.attempt_clip_path(pid, 1, 2)
        assert scene.registry_status == StageStatus.DONE
    assert again["new_asset_tags"] == ["bo"] and appearances == 1
    assert [a.reference_image for a in assets] == [f"{media.attempt_crops_dir(pid, 1, 2)}/c0.png"]
    # Both attempts are in the status, the kept one marked, in JSON and in the text view.
    status = load_status(settings, pid)
    shown = [(a["attempt"], a["kept"], a["passed_gate"]) for a in status["scenes"][0]["attempts"]]
    assert shown == [(1, False, True), (2, True, True)] and status["quality"]["candidates"] == 2
    assert "attempt 2 (round 1, seed" in render_text(status) and "KEPT" in render_text(status)


def test_a_round_below_the_gate_is_not_kept_and_all_failed_fails_the_scene(settings, tmp_path) -> None:
    pid = new_project(settings, tmp_path, GATED)
    ref = generated(settings, pid, 1)
    candidates.record_analysis(settings, ref, request_for(settings, ref), attempt_analysis(settings, pid, 1, 0.5))
    failed = candidates.record_failure(settings, {"project_id": pid, "scene_index": 1, "attempt": 2}, "boom")
    assert failed["failed"] and row(settings, pid, 2).state == "failed"
    result, decision = candidates.pick_attempt(settings, {"project_id": pid, "scene_index": 1, "round": 1})
    assert (result["final"], decision.action) == (False, "next_round")
    assert not row(settings, pid, 1).kept and row(settings, pid, 1).passed_gate is False
    for attempt in (3, 4):
        candidates.record_failure(settings, {"project_id": pid, "scene_index": 1, "attempt": attempt}, "boom")
    kept, _ = candidates.pick_attempt(settings, {"project_id": pid, "scene_index": 1, "round": 2})
    assert kept["attempt"] == 1  # round 2 failed entirely: the earlier best is kept

    other = new_project(settings, tmp_path, GATED)
    for attempt in (1, 2):
        candidates.record_failure(settings, {"project_id": other, "scene_index": 1, "attempt": attempt}, "boom")
    with pytest.raises(PermanentStageError, match="every attempt of the scene failed"):
        candidates.pick_attempt(settings, {"project_id": other, "scene_index": 1, "round": 1})


def test_candidate_messages_naming_no_valid_attempt_are_ignored(settings, tmp_path) -> None:
    pid = new_project(settings, tmp_path, GATED)
    for bad in (None, 0, 21, True, "1"):
        with pytest.raises(MessageIgnored):
            candidates.generate_attempt(settings, {"project_id": pid, "scene_index": 1, "attempt": bad})
    with pytest.raises(MessageIgnored, match="beyond"):
        candidates.generate_attempt(settings, {"project_id": pid, "scene_index": 1, "attempt": 5})
    with pytest.raises(MessageIgnored, match="no clip yet"):
        candidates.analysis_input(settings, {"project_id": pid, "scene_index": 1, "attempt": 1})
    assert candidates.record_failure(settings, {"project_id": pid, "scene_index": 1}, "boom") is None


def test_a_scene_whose_every_attempt_content_policy_blocked_is_skipped_with_skip_scene(settings, tmp_path) -> None:
    from dataclasses import replace

    pid = new_project(settings, tmp_path, GATED)
    for attempt in (1, 2):
        ref = {"project_id": pid, "scene_index": 1, "attempt": attempt}
        candidates.record_failure(settings, ref, "content_policy: blocked")
    with pytest.raises(PermanentStageError, match="all_attempts_failed|every attempt"):
        candidates.pick_attempt(settings, {"project_id": pid, "scene_index": 1, "round": 1})
    skipping = replace(settings, content_policy="skip-scene")
    result, _ = candidates.pick_attempt(skipping, {"project_id": pid, "scene_index": 1, "round": 1})
    assert result["skipped"] and result["final"]
    with session_scope(settings.database_url) as s:
        scene = s.scalar(select(Scene).where(Scene.project_id == pid, Scene.scene_index == 1))
        assert scene.generation_status == StageStatus.SKIPPED and scene.registry_status == StageStatus.SKIPPED


def test_an_attempt_clip_whose_record_was_lost_is_adopted_not_rendered_again(settings, tmp_path) -> None:
    from vidpipe_tasks.generators.base import ClipRequest
    from vidpipe_tasks.generators.procedural import ProceduralGenerator

    pid = new_project(settings, tmp_path, GATED)
    ref = {"project_id": pid, "scene_index": 1, "attempt": 2}
    with session_scope(settings.database_url) as s:  # the attempt's first delivery got as far as its row
        scene = s.scalar(select(Scene).where(Scene.project_id == pid, Scene.scene_index == 1))
        candidates._attempt_row(s, scene, 2, candidates._policy(settings, scene))
    clip = media.absolute(settings.media_root, media.attempt_clip_path(pid, 1, 2))
    clip.parent.mkdir(parents=True)
    ProceduralGenerator().generate(ClipRequest(pid, 1, "x", None, (), 0.5, 8, 64, 64, clip))
    stamp = clip.stat().st_mtime_ns
    result = candidates.generate_attempt(settings, ref)
    assert result["state"] == "generated" and result["clip_path"] == media.attempt_clip_path(pid, 1, 2)
    assert clip.stat().st_mtime_ns == stamp and row(settings, pid, 2).clip_info["frame_count"] == 4
