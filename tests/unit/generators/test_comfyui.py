"""The ComfyUI adapter: templates and placeholders, and the wire protocol against the fake ComfyUI server."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import pytest

from tests.fakes.servers import FakeServer, fake_comfyui
from tests.servers import free_port
from vidpipe_tasks.errors import PermanentStageError, TransientError
from vidpipe_tasks.generators import stock, validate_generator
from vidpipe_tasks.generators.base import CharacterSpec, ClipRequest
from vidpipe_tasks.generators.comfyui import (
    DEFAULT_TEMPLATE,
    ComfyUIAdapter,
    describe_node_errors,
    fill_template,
    load_template,
    video_output,
    wan_frames,
)
from vidpipe_tasks.generators.remote import GeneratorConfigError, NotAccepted, client_job_id, probe_clip

VALUES = {"prompt": "P", "negative_prompt": "N", "seed": 7, "width": 640, "height": 352, "frames": 49, "fps": 12}


def test_the_shipped_template_fills_every_placeholder() -> None:
    graph = fill_template(load_template(DEFAULT_TEMPLATE), VALUES, {"start_image": "board.png"})
    text = json.dumps(graph)
    assert "{{" not in text
    wan = graph["10"]["inputs"]
    assert (wan["width"], wan["height"], wan["length"], wan["start_image"]) == (640, 352, 49, ["9", 0])
    assert graph["9"]["inputs"]["image"] == "board.png" and graph["11"]["inputs"]["noise_seed"] == 7
    assert graph["7"]["inputs"]["text"] == "P" and graph["8"]["inputs"]["text"] == "N"


def test_an_image_placeholder_without_an_image_drops_its_node_and_the_links_to_it() -> None:
    graph = fill_template(load_template(DEFAULT_TEMPLATE), VALUES, {})
    assert "9" not in graph and "start_image" not in graph["10"]["inputs"]
    assert graph["10"]["inputs"]["positive"] == ["7", 0]


def test_templates_are_checked_with_a_clear_message(tmp_path: Path) -> None:
    with pytest.raises(GeneratorConfigError, match="template not found"):
        load_template(tmp_path / "missing.json")
    ui_format = tmp_path / "ui.json"
    ui_format.write_text(json.dumps({"nodes": [], "links": []}))
    with pytest.raises(GeneratorConfigError, match="Save \\(API\\)"):
        load_template(ui_format)
    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps({"1": {"class_type": "X", "inputs": {"a": "{{colour}}"}}}))
    with pytest.raises(GeneratorConfigError, match="unknown placeholder"):
        load_template(odd)


def test_wan_lengths_are_4k_plus_1_frames() -> None:
    assert [wan_frames(d, 16) for d in (1, 3, 5)] == [17, 49, 81]


def test_node_errors_name_the_node_and_its_class() -> None:
    body = {
        "error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation"},
        "node_errors": {"9": {"errors": [{"message": "Custom validation failed for node", "details": "bad"}],
                              "class_type": "LoadImage", "dependent_outputs": ["15"]}},
    }  # fmt: skip
    assert describe_node_errors(body) == (
        "Prompt outputs failed validation: node 9 (LoadImage): Custom validation failed for node: bad"
    )


def test_the_saved_video_is_found_in_the_history_entry() -> None:
    entry = {"outputs": {"15": {"images": [{"filename": "v.mp4", "subfolder": "video", "type": "output"}],
                                "animated": [True]}}}  # fmt: skip
    assert video_output(entry) == {"filename": "v.mp4", "subfolder": "video", "type": "output"}
    assert video_output({"outputs": {}}) is None


def test_configuration_problems_are_one_line_errors(settings, tmp_path: Path) -> None:
    with pytest.raises(GeneratorConfigError, match="VIDPIPE_COMFYUI_SERVERS"):
        validate_generator(replace(settings, generator="comfyui"))
    missing = replace(settings, comfyui_servers="http://gpu1:8188", comfyui_template=str(tmp_path / "nope.json"))
    with pytest.raises(GeneratorConfigError, match="template not found"):
        validate_generator(missing, "comfyui")
    validate_generator(replace(settings, comfyui_servers="http://gpu1:8188"), "comfyui")


# --- against the fake server ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def comfy(tmp_path_factory: pytest.TempPathFactory) -> FakeServer:
    server = fake_comfyui(tmp_path_factory.mktemp("comfy"), "--job-seconds", "1.5")
    yield server
    server.stop()


def adapter_for(settings, *servers: str, **overrides) -> ComfyUIAdapter:
    return ComfyUIAdapter(replace(settings, comfyui_servers=",".join(servers), **overrides))


def request(tmp_path: Path, scene: int, description: str = "Mara on the quay") -> ClipRequest:
    ref = tmp_path / "mara.png"
    stock.resolve_stock_uri("stock:face/t1-0").save(ref)
    characters = (CharacterSpec("mara", ref), CharacterSpec("wren"))
    return ClipRequest(9, scene, description, "harbour", characters, 1.0, 12, 320, 180, tmp_path / f"{scene}.mp4")


def until_done(adapter: ComfyUIAdapter, server: str, job_id: str, timeout: float = 30):
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        poll = adapter.poll(server, job_id)
        seen.append(poll.state)
        if poll.state not in ("queued", "running"):
            return poll, seen
    raise AssertionError(f"not done: {seen}")


def test_a_job_runs_and_its_video_comes_down_through_view(settings, comfy, tmp_path) -> None:
    adapter = adapter_for(settings, comfy.url)
    job_id = client_job_id(9, 1, 1, 0)
    assert adapter.submit(comfy.url, job_id, request(tmp_path, 1)) == job_id
    poll, seen = until_done(adapter, comfy.url, job_id)
    assert poll.state == "succeeded" and seen[0] in ("queued", "running")
    dest = tmp_path / "out.mp4"
    adapter.download(comfy.url, job_id, poll.outputs, dest)
    info = probe_clip(dest)
    assert (info.width, info.height, info.frame_count) == (320, 176, wan_frames(1.0, 12))


def test_history_stays_empty_while_a_job_waits_in_the_queue(settings, comfy, tmp_path) -> None:
    adapter = adapter_for(settings, comfy.url)
    first, second = client_job_id(9, 2, 1, 0), client_job_id(9, 3, 1, 0)
    adapter.submit(comfy.url, first, request(tmp_path, 2))
    adapter.submit(comfy.url, second, request(tmp_path, 3))
    assert adapter.poll(comfy.url, second).state == "queued"  # /history/{id} is {} until it has run
    assert adapter.queue_depth(comfy.url) == 2
    assert until_done(adapter, comfy.url, second)[0].state == "succeeded"


def test_an_invalid_workflow_fails_the_scene_naming_the_node(settings, comfy, tmp_path) -> None:
    graph = load_template(DEFAULT_TEMPLATE)
    graph["9"]["inputs"]["image"] = "never-uploaded.png"
    template = tmp_path / "bad.json"
    template.write_text(json.dumps(graph))
    adapter = adapter_for(settings, comfy.url, comfyui_template=str(template))
    with pytest.raises(PermanentStageError) as refused:
        adapter.submit(comfy.url, client_job_id(9, 4, 1, 0), request(tmp_path, 4))
    assert refused.value.reason == "invalid_workflow"
    assert "node 9 (LoadImage)" in str(refused.value) and "never-uploaded.png" in str(refused.value)
    assert refused.value.detail["node_errors"]["9"]["class_type"] == "LoadImage"
    graph["12"]["class_type"] = "NoSuchSampler"
    template.write_text(json.dumps(graph))
    with pytest.raises(PermanentStageError, match="node NoSuchSampler does not exist"):
        adapter.submit(comfy.url, client_job_id(9, 5, 1, 0), request(tmp_path, 5))


def test_an_execution_error_names_the_failing_node(settings, comfy, tmp_path) -> None:
    adapter = adapter_for(settings, comfy.url)
    job_id = client_job_id(9, 6, 1, 0)
    adapter.submit(comfy.url, job_id, request(tmp_path, 6, "FAKE_EXECUTION_ERROR"))
    poll, _ = until_done(adapter, comfy.url, job_id)
    assert poll.state == "failed" and poll.message.startswith("node 11 (KSamplerAdvanced) failed: CUDA error")
    assert poll.detail["exception_type"] == "RuntimeError"


def test_progress_comes_over_the_websocket(settings, comfy, tmp_path) -> None:
    adapter = adapter_for(settings, comfy.url)
    job_id = client_job_id(9, 7, 1, 0)
    adapter.submit(comfy.url, job_id, request(tmp_path, 7))
    progress = []
    while (poll := adapter.poll(comfy.url, job_id)).state in ("queued", "running"):
        progress.append(poll.progress)
    assert any(p.get("total") == 4 and p.get("node") == "11" for p in progress), progress


def test_a_dropped_websocket_falls_back_to_history(settings, tmp_path) -> None:
    server = fake_comfyui(tmp_path / "dropping", "--drop-ws", "--job-seconds", "0.5")
    try:
        adapter = adapter_for(settings, server.url)
        job_id = client_job_id(9, 8, 1, 0)
        adapter.submit(server.url, job_id, request(tmp_path, 8))
        assert until_done(adapter, server.url, job_id)[0].state == "succeeded"
    finally:
        server.stop()


def test_servers_that_do_not_answer_are_skipped_and_the_least_queued_one_is_chosen(settings, comfy, tmp_path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    other = fake_comfyui(tmp_path / "other", "--job-seconds", "3")
    try:
        busy = adapter_for(settings, other.url)
        busy.submit(other.url, client_job_id(9, 9, 1, 0), request(tmp_path, 9))
        adapter = adapter_for(settings, dead, other.url, comfy.url)
        depths = adapter.depths()
        assert depths[dead] is None and depths[other.url] == 1
        assert adapter.choose_server() == comfy.url  # comfy is idle by now (its jobs ran)
        assert adapter_for(settings, dead, other.url, comfyui_choice="first-up").choose_server() == other.url
        with pytest.raises(TransientError, match="no ComfyUI server answers"):
            adapter_for(settings, dead).choose_server()
        with pytest.raises(NotAccepted, match="unreachable"):
            adapter_for(settings, dead).submit(dead, "x", request(tmp_path, 10))
    finally:
        other.stop()


def test_a_429_is_not_accepted_and_carries_retry_after(settings, tmp_path) -> None:
    server = fake_comfyui(tmp_path / "limited", "--reject-429", "1", "--retry-after", "4")
    try:
        adapter = adapter_for(settings, server.url)
        with pytest.raises(NotAccepted) as limited:
            adapter.submit(server.url, client_job_id(9, 11, 1, 0), request(tmp_path, 11))
        assert limited.value.retry_after == 4.0 and server.submissions() == []
    finally:
        server.stop()
