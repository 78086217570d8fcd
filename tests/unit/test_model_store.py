"""`vidpipe models stage|status`: checksum-verified staging of insightface packs and open_clip weights."""

from __future__ import annotations

import functools
import http.server
import json
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from tests.conftest import make_settings
from tests.helpers import run_vidpipe as vidpipe
from tests.tiny_models import build_tiny_pack
from vidpipe_tasks.cli import models as model_store
from vidpipe_tasks.settings import Settings


@pytest.fixture(scope="module")
def pack_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A buffalo_l-layout zip of tiny synthetic models, with the top folder real packs have."""
    root = tmp_path_factory.mktemp("pack")
    build_tiny_pack(root / "buffalo_l")
    archive = root / "buffalo_l.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for file in sorted((root / "buffalo_l").iterdir()):
            zf.write(file, f"buffalo_l/{file.name}")
    return archive


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "work")


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A real HTTP server on loopback serving a folder (staging from a URL, offline)."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_a_pack_zip_with_the_right_checksum_is_installed_with_its_provenance(settings, pack_zip) -> None:
    digest = model_store.sha256_file(pack_zip)
    installed = model_store.stage_insightface(settings, str(pack_zip), digest)
    assert installed == settings.insightface_dir
    assert {"det_10g.onnx", "w600k_r50.onnx"} <= {p.name for p in installed.iterdir()}
    provenance = json.loads((installed / model_store.PROVENANCE).read_text())
    assert provenance["sha256"] == digest and provenance["source"] == str(pack_zip)
    status = model_store.models_status(settings)
    assert status["engines"]["insightface"]["problems"] == [] or "onnxruntime" in str(
        status["engines"]["insightface"]["problems"]
    )
    assert status["engines"]["insightface"]["staged"]["sha256"] == digest


def test_a_wrong_checksum_stages_nothing_and_keeps_the_pack_already_there(settings, pack_zip) -> None:
    model_store.stage_insightface(settings, str(pack_zip), model_store.sha256_file(pack_zip))
    before = sorted(p.name for p in settings.insightface_dir.iterdir())
    with pytest.raises(model_store.StagingError, match="checksum mismatch"):
        model_store.stage_insightface(settings, str(pack_zip), "0" * 64)
    assert sorted(p.name for p in settings.insightface_dir.iterdir()) == before
    assert [p.name for p in settings.insightface_dir.parent.iterdir()] == [settings.insightface_pack]


def test_a_zip_whose_members_escape_the_target_is_refused(settings, tmp_path) -> None:
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../../outside.onnx", b"x")
    with pytest.raises(model_store.StagingError, match="escape"):
        model_store.stage_insightface(settings, str(evil), model_store.sha256_file(evil))
    assert not (tmp_path / "outside.onnx").exists()


def test_a_folder_without_a_recognizer_is_not_a_usable_pack(settings, tmp_path) -> None:
    folder = tmp_path / "half"
    build_tiny_pack(folder)
    (folder / "w600k_r50.onnx").unlink()
    with pytest.raises(model_store.StagingError, match="not a usable insightface pack"):
        model_store.stage_insightface(settings, str(folder), model_store.sha256_folder(folder))
    assert not settings.insightface_dir.exists()


def test_a_pack_and_weights_are_staged_from_urls(settings, pack_zip, http_root) -> None:
    folder, base = http_root
    (folder / "pack.zip").write_bytes(pack_zip.read_bytes())
    (folder / "weights.pt").write_bytes(b"not really a state dict, only bytes to move")
    model_store.stage_insightface(settings, f"{base}/pack.zip", model_store.sha256_file(pack_zip))
    weights = model_store.stage_open_clip(
        settings, f"{base}/weights.pt", model_store.sha256_file(folder / "weights.pt")
    )
    assert weights == settings.clip_weights_path and weights.read_bytes() == (folder / "weights.pt").read_bytes()
    assert json.loads(model_store.clip_provenance(settings).read_text())["source"] == f"{base}/weights.pt"


def test_open_clip_weights_for_a_custom_architecture_bring_their_config(settings, tmp_path) -> None:
    weights, config = tmp_path / "w.pt", tmp_path / "tiny.json"
    weights.write_bytes(b"weights")
    config.write_text(json.dumps({"embed_dim": 8}))
    settings = replace(settings, clip_model="tiny")
    model_store.stage_open_clip(settings, str(weights), model_store.sha256_file(weights), config)
    assert settings.clip_weights_path.name == "tiny.pt"
    assert json.loads(settings.clip_weights_path.with_name("tiny.json").read_text()) == {"embed_dim": 8}


def test_the_stage_command_requires_a_checksum_per_source(settings, pack_zip) -> None:
    refused = vidpipe(settings, "models", "stage", "--insightface", str(pack_zip))
    assert refused.returncode == 2 and "--sha256" in refused.stderr
    digest = model_store.sha256_file(pack_zip)
    staged = vidpipe(settings, "models", "stage", "--insightface", str(pack_zip), "--sha256", digest)
    assert staged.returncode == 0, staged.stderr
    assert f"insightface staged at {settings.insightface_dir}" in staged.stdout


def test_status_says_what_is_missing_and_what_a_worker_would_refuse(settings) -> None:
    explicit = replace(settings, face_engine="insightface", embedder="open_clip")
    status = model_store.models_status(explicit)
    assert status["engines"]["dlib-offline"]["usable"] is True
    assert any("does not exist" in p for p in status["engines"]["insightface"]["problems"])
    assert any(str(explicit.clip_weights_path) in p for p in status["engines"]["open_clip"]["problems"])
    assert status["auto_would_choose"] == {"face_engine": "dlib-offline", "embedder": None}
    assert status["worker_would_start"] is False
    assert any("vidpipe models stage" in p for p in status["start_problems"])
    shown = vidpipe(settings, "models", "status")
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert "dlib-offline  usable" in out and "insightface   unavailable" in out
