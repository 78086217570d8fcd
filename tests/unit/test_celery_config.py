"""Queue topology and chain shape, checked on the app's configuration (no broker needed)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from vidpipe_tasks.celery_app import TASK_ROUTES, celery_config, create_app, hard_time_limits
from vidpipe_tasks.settings import ALL_QUEUES, CV_QUEUE, GENERATION_QUEUE, REGISTRY_QUEUE, load_settings
from vidpipe_tasks.workflow import build_chain


def app_for(tmp_path):
    return create_app(load_settings({"VIDPIPE_HOME": str(tmp_path)}))


def test_analyses_route_to_the_cv_queue_and_nothing_else_does(tmp_path) -> None:
    app = app_for(tmp_path)
    router = app.amqp.router
    queue_of = {name: router.route({}, name)["queue"].name for name in TASK_ROUTES}
    assert queue_of == {
        "vidpipe.generate_clip": GENERATION_QUEUE,
        "vidpipe.analyze_clip": CV_QUEUE,
        "vidpipe.register_entities": REGISTRY_QUEUE,
        "vidpipe.finalize_project": REGISTRY_QUEUE,
        "vidpipe.recover_stalled": REGISTRY_QUEUE,
        "vidpipe.generate_candidate": GENERATION_QUEUE,
        "vidpipe.analyze_candidate": CV_QUEUE,
        "vidpipe.pick_attempt": REGISTRY_QUEUE,
    }
    # Celery's chord poller (file:// result backend) is unrouted: the default queue, the registry's.
    assert router.route({}, "celery.chord_unlock")["queue"].name == REGISTRY_QUEUE


def test_queues_are_explicit_and_never_created_implicitly(tmp_path) -> None:
    conf = celery_config(load_settings({"VIDPIPE_HOME": str(tmp_path)}))
    assert [q.name for q in conf["task_queues"]] == list(ALL_QUEUES)
    assert conf["task_create_missing_queues"] is False
    assert conf["accept_content"] == ["json"] and conf["task_serializer"] == "json"
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"] and conf["worker_prefetch_multiplier"] == 1
    assert conf["worker_send_task_events"] and conf["task_send_sent_event"]
    assert set(hard_time_limits(load_settings({"VIDPIPE_HOME": str(tmp_path)}))) == set(TASK_ROUTES)


def test_the_embedded_broker_uses_absolute_folders(tmp_path) -> None:
    options = celery_config(load_settings({"VIDPIPE_HOME": str(tmp_path)}))["broker_transport_options"]
    for key in ("data_folder_in", "data_folder_out", "processed_folder", "control_folder"):
        assert options[key].startswith(str(tmp_path.resolve()))


def task_names(sig) -> list[str]:
    return [t.task for t in sig.tasks]


def test_a_manifest_project_is_one_flat_chain_of_generate_analyze_register(tmp_path) -> None:
    sig = build_chain(app_for(tmp_path), 7, [1, 2], with_analysis=True)
    assert task_names(sig) == [
        "vidpipe.generate_clip",
        "vidpipe.analyze_clip",
        "vidpipe.register_entities",
        "vidpipe.generate_clip",
        "vidpipe.analyze_clip",
        "vidpipe.register_entities",
        "vidpipe.finalize_project",
    ]
    generates = [t for t in sig.tasks if t.task == "vidpipe.generate_clip"]
    # Immutable: scene N+1 must not receive scene N's registry result as an argument.
    assert all(t.immutable for t in generates)
    assert [t.args[0]["scene_index"] for t in generates] == [1, 2]


def test_a_project_without_manifest_never_queues_analysis(tmp_path) -> None:
    sig = build_chain(app_for(tmp_path), 3, [1, 2, 3], with_analysis=False)
    assert "vidpipe.analyze_clip" not in task_names(sig)
    assert task_names(sig).count("vidpipe.generate_clip") == 3


def test_generation_and_analysis_limits_follow_settings_with_a_soft_limit_first(tmp_path) -> None:
    settings = replace(load_settings({"VIDPIPE_HOME": str(tmp_path)}), analysis_time_limit=1200)
    annotations = celery_config(settings)["task_annotations"]
    assert annotations["vidpipe.analyze_clip"] == {"time_limit": 1200, "soft_time_limit": 1080}
    assert annotations["vidpipe.register_entities"]["time_limit"] == settings.registry_time_limit
    on_redis = replace(settings, broker_url="redis://127.0.0.1:6379/0", visibility_timeout=1000)
    with pytest.raises(ValueError, match="must exceed the longest task time limit"):
        celery_config(on_redis)


def test_the_embedded_broker_writes_each_message_file_whole_before_a_worker_can_list_it(tmp_path, monkeypatch) -> None:
    import os

    from vidpipe_tasks import fsbroker
    from vidpipe_tasks.settings import prepare_folders

    settings = load_settings({"VIDPIPE_HOME": str(tmp_path)})
    prepare_folders(settings)
    app = create_app(settings)
    seen_while_writing: list[list[str]] = []
    real_replace = os.replace

    def replace_and_look(src, dst):  # what a consumer listing the folder sees just before the rename
        seen_while_writing.append(sorted(p.name for p in (settings.broker_dir / "queue").iterdir()))
        real_replace(src, dst)

    monkeypatch.setattr(fsbroker.os, "replace", replace_and_look)
    with app.connection() as conn:
        assert isinstance(conn.transport, fsbroker.Transport)
    app.send_task("vidpipe.finalize_project", args=({"project_id": 1},))
    (listing,) = seen_while_writing
    assert [n for n in listing if n.endswith(".msg")] == []  # only the temp name existed until then
    (message,) = (settings.broker_dir / "queue").glob("*.registry.msg")
    assert message.stat().st_size > 0
