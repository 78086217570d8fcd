"""The Veo adapter: the real google-genai SDK driven at the fake Gemini API through its base-URL option."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from tests.fakes.servers import FakeServer, fake_gemini
from vidpipe_tasks.errors import PermanentStageError
from vidpipe_tasks.generators import stock, validate_generator
from vidpipe_tasks.generators.base import CharacterSpec, ClipRequest
from vidpipe_tasks.generators.remote import GeneratorConfigError, NotAccepted, probe_clip
from vidpipe_tasks.generators.veo import VeoAdapter, aspect_ratio, clip_seconds

KEY = "test-key-123"


@pytest.fixture(scope="module")
def gemini(tmp_path_factory: pytest.TempPathFactory) -> FakeServer:
    server = fake_gemini(tmp_path_factory.mktemp("gemini"), KEY, "--job-seconds", "0.5", "--reject-429", "1",
                         "--retry-after", "3")  # fmt: skip
    yield server
    server.stop()


def veo(settings, gemini: FakeServer, **overrides) -> VeoAdapter:
    return VeoAdapter(replace(settings, veo_api_key=KEY, veo_base_url=f"{gemini.url}/", **overrides))


def request(tmp_path: Path, description: str = "Mara on the quay") -> ClipRequest:
    ref = tmp_path / "mara.png"
    stock.resolve_stock_uri("stock:face/t1-0").save(ref)
    characters = (CharacterSpec("mara", ref), CharacterSpec("wren"))
    return ClipRequest(3, 1, description, "harbour", characters, 4.0, 12, 640, 360, tmp_path / "out.mp4")


def until_done(adapter: VeoAdapter, job_id: str):
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        poll = adapter.poll(adapter.base_url, job_id)
        if poll.state != "running":
            return poll
        time.sleep(0.1)
    raise AssertionError("operation never finished")


def submit(adapter: VeoAdapter, req: ClipRequest) -> str:
    """Submit through the rate limit the fake starts with (one 429)."""
    try:
        return adapter.submit(adapter.base_url, None, req)
    except NotAccepted:
        return adapter.submit(adapter.base_url, None, req)


def test_a_429_is_not_accepted_and_says_when_to_come_back(settings, tmp_path) -> None:
    server = fake_gemini(tmp_path / "limited", KEY, "--reject-429", "1", "--retry-after", "3")
    try:
        with pytest.raises(NotAccepted) as limited:
            veo(settings, server).submit(server.url, None, request(tmp_path))
        assert limited.value.retry_after == 3.0 and server.submissions() == []
    finally:
        server.stop()


def test_an_operation_is_polled_and_its_video_downloaded_with_the_references_sent(settings, gemini, tmp_path) -> None:
    adapter = veo(settings, gemini)
    name = submit(adapter, request(tmp_path))
    assert name.startswith("models/veo-3.0-generate-001/operations/")
    poll = until_done(adapter, name)
    assert poll.state == "succeeded" and poll.outputs["uri"].startswith("https://generativelanguage.googleapis.com/")
    dest = tmp_path / "veo.mp4"
    adapter.download(adapter.base_url, name, poll.outputs, dest)  # files.download follows the fake's redirect
    info = probe_clip(dest)
    assert (info.width, info.height) == (640, 360) and info.frame_count == 8 * 8  # references force 8 s
    assert gemini.stats()["downloads"] >= 1


def test_content_filtering_is_its_own_outcome_with_the_providers_reasons(settings, gemini, tmp_path) -> None:
    adapter = veo(settings, gemini)
    poll = until_done(adapter, submit(adapter, request(tmp_path, "FAKE_BLOCKED")))
    assert poll.state == "content_policy"
    assert poll.detail["rai_media_filtered_count"] == 1
    assert "safety settings" in poll.detail["rai_media_filtered_reasons"][0]


def test_a_wrong_key_is_a_permanent_failure(settings, gemini, tmp_path) -> None:
    adapter = VeoAdapter(replace(settings, veo_api_key="wrong", veo_base_url=f"{gemini.url}/"))
    with pytest.raises(PermanentStageError) as refused:
        submit(adapter, request(tmp_path))
    assert refused.value.reason == "bad_request" and "API key not valid" in str(refused.value)


def test_clip_lengths_and_aspect_ratios() -> None:
    assert clip_seconds("veo-3.0-generate-001", 3, False) == 4
    assert clip_seconds("veo-3.0-generate-001", 5, False) == 6
    assert clip_seconds("veo-3.0-generate-001", 30, False) == 8
    assert clip_seconds("veo-3.0-generate-001", 3, True) == 8
    assert (aspect_ratio(640, 360), aspect_ratio(360, 640)) == ("16:9", "9:16")


def test_configuration_problems_are_one_line_errors(settings) -> None:
    with pytest.raises(GeneratorConfigError, match="needs VIDPIPE_VEO_API_KEY"):
        validate_generator(settings, "veo")
    with pytest.raises(GeneratorConfigError, match="VIDPIPE_VEO_MODEL='veo-9' is unknown"):
        validate_generator(replace(settings, veo_api_key="k", veo_model="veo-9"), "veo")
    with pytest.raises(ValueError, match="unknown clip generator 'sora'"):
        validate_generator(settings, "sora")


def test_the_api_key_never_shows_in_the_settings_repr(settings) -> None:
    keyed = replace(settings, veo_api_key="sk-very-secret")
    assert "sk-very-secret" not in repr(keyed) and "sk-very-secret" not in str(keyed)


def test_google_genai_loads_only_when_veo_is_used(tmp_path) -> None:
    code = (
        "import sys\n"
        "import vidpipe_tasks.tasks, vidpipe_tasks.workflow, vidpipe_tasks.generators.veo\n"
        "import vidpipe_tasks.generators.comfyui, vidpipe_tasks.generators.remote, vidpipe_tasks.cli\n"
        "print(sorted(m for m in sys.modules if m.startswith('google')))\n"
    )
    env = {"VIDPIPE_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]"
