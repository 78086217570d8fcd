"""The insightface engine's real loading and inference code on tiny synthetic ONNX models (plumbing, not accuracy)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from gpu_worker.faces.base import EngineUnavailable
from gpu_worker.faces.insightface_engine import STAGING_HINT, InsightFaceEngine, pack_problems, select_providers
from tests.tiny_models import FACE_CELL, build_tiny_arcface, build_tiny_pack, build_tiny_scrfd

# insightface's norm_crop still calls scikit-image's deprecated SimilarityTransform.estimate; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:`estimate` is deprecated:FutureWarning")

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
RED, BLUE = (255, 0, 0), (0, 0, 255)
#: A 640x360 frame is not rescaled by a 640x640 detector input, so 32x32 cells of the frame are the detector's.
FRAME_HW = (360, 640)


@pytest.fixture(scope="module")
def pack(tmp_path_factory) -> Path:
    return build_tiny_pack(tmp_path_factory.mktemp("insightface") / "buffalo_l")


@pytest.fixture
def make_engine(pack):
    def make(**kwargs) -> InsightFaceEngine:
        engine = InsightFaceEngine(pack, **{"device": "cpu", **kwargs})
        engine.load()
        return engine

    return make


def frame_with_faces(cells, *, colour=RED, variants=None) -> np.ndarray:
    """A dark RGB frame with a bright square filling each (row, col) cell: one face each for the tiny detector.

    A variant v darkens quadrant v of its square, so faces differ in layout (and embedding) but not in
    brightness (all are equally strong detections).
    """
    frame = np.zeros((*FRAME_HW, 3), np.uint8)
    for i, (row, col) in enumerate(cells):
        y, x = row * FACE_CELL, col * FACE_CELL
        frame[y : y + FACE_CELL, x : x + FACE_CELL] = colour
        if variants is not None:
            half = FACE_CELL // 2
            qy, qx = divmod(variants[i], 2)
            frame[y + qy * half : y + (qy + 1) * half, x + qx * half : x + (qx + 1) * half] = 0
    return frame


# --- provider selection (pure) ---


def test_cpu_device_uses_only_the_cpu_provider_even_when_cuda_is_available() -> None:
    assert select_providers("cpu", [CUDA, CPU]) == [CPU]


def test_cuda_device_puts_cuda_first_with_cpu_as_fallback() -> None:
    assert select_providers("cuda", ["AzureExecutionProvider", CPU, CUDA]) == [CUDA, CPU]


def test_cuda_device_without_a_cuda_provider_is_unavailable_with_a_clear_message() -> None:
    with pytest.raises(EngineUnavailable) as err:
        select_providers("cuda", [CPU])
    assert "'cuda' requested" in str(err.value)
    assert "onnxruntime-gpu" in str(err.value)
    assert CPU in str(err.value)


@pytest.mark.parametrize(
    ("available", "expected"),
    [([CUDA, CPU], [CUDA, CPU]), ([CPU], [CPU]), (["AzureExecutionProvider", CPU], [CPU])],
)
def test_auto_device_prefers_cuda_and_falls_back_to_cpu(available, expected) -> None:
    assert select_providers("auto", available) == expected


def test_an_unknown_device_is_rejected(pack) -> None:
    with pytest.raises(ValueError, match="unknown CV device 'tpu'"):
        select_providers("tpu", [CPU])
    with pytest.raises(ValueError, match="unknown CV device"):
        InsightFaceEngine(pack, device="gpu")


# --- the model pack ---


def test_a_complete_pack_has_no_problems(pack) -> None:
    assert pack_problems(pack) == []


def test_other_packs_are_recognised_by_the_file_name_rule(tmp_path) -> None:
    # antelopev2's layout, with the extra models that are never loaded.
    for name in ("scrfd_10g_bnkps.onnx", "glintr100.onnx", "1k3d68.onnx", "2d106det.onnx", "genderage.onnx"):
        (tmp_path / name).write_bytes(b"onnx")
    assert pack_problems(tmp_path) == []


def test_a_pack_with_two_candidate_recognizers_or_an_empty_file_has_problems(tmp_path) -> None:
    (tmp_path / "det_10g.onnx").write_bytes(b"")
    (tmp_path / "w600k_r50.onnx").write_bytes(b"onnx")
    (tmp_path / "w600k_mbf.onnx").write_bytes(b"onnx")
    problems = pack_problems(tmp_path)
    assert any("several recognizers" in p and "w600k_mbf.onnx" in p and "w600k_r50.onnx" in p for p in problems)
    assert any("det_10g.onnx is empty" in p for p in problems)


def test_a_missing_pack_is_unavailable_naming_the_folder_and_the_staging_command(tmp_path) -> None:
    missing = tmp_path / "buffalo_l"
    assert pack_problems(missing) == [f"insightface pack folder {missing} does not exist"]
    with pytest.raises(EngineUnavailable) as err:
        InsightFaceEngine(missing, device="cpu").load()
    assert str(missing) in str(err.value)
    assert str(err.value).endswith(STAGING_HINT)


def test_a_pack_without_a_recognizer_is_unavailable_naming_the_missing_file_and_the_staging_command(tmp_path) -> None:
    build_tiny_scrfd(tmp_path / "det_10g.onnx")
    with pytest.raises(EngineUnavailable) as err:
        InsightFaceEngine(tmp_path, device="cpu").load()
    assert "no ArcFace recognizer" in str(err.value)
    assert "w600k_r50.onnx" in str(err.value)
    assert STAGING_HINT in str(err.value)


def test_a_pack_without_a_detector_is_unavailable_naming_the_missing_file(tmp_path) -> None:
    build_tiny_arcface(tmp_path / "w600k_r50.onnx")
    with pytest.raises(EngineUnavailable, match=r"no SCRFD detector .*det_10g\.onnx"):
        InsightFaceEngine(tmp_path, device="cpu").load()


def test_models_in_swapped_roles_are_unavailable(tmp_path) -> None:
    build_tiny_arcface(tmp_path / "det_10g.onnx")
    build_tiny_scrfd(tmp_path / "w600k_r50.onnx")
    with pytest.raises(EngineUnavailable, match=r"det_10g\.onnx is not a detection model"):
        InsightFaceEngine(tmp_path, device="cpu").load()


def test_a_corrupt_model_file_is_unavailable_naming_it(tmp_path) -> None:
    (tmp_path / "det_10g.onnx").write_bytes(b"not an onnx model")
    build_tiny_arcface(tmp_path / "w600k_r50.onnx")
    with pytest.raises(EngineUnavailable, match=r"cannot load .*det_10g\.onnx"):
        InsightFaceEngine(tmp_path, device="cpu").load()


# --- loading ---


def test_importing_constructing_and_checking_the_pack_import_no_heavy_library(pack) -> None:
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from gpu_worker.faces.insightface_engine import InsightFaceEngine, pack_problems\n"
        f"assert pack_problems(Path({str(pack)!r})) == []\n"
        f"InsightFaceEngine(Path({str(pack)!r}), device='cuda')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('onnxruntime', 'insightface', 'cv2', 'onnx')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_loading_on_cpu_reports_the_cpu_provider(make_engine) -> None:
    engine = make_engine()
    assert engine.providers == [CPU]
    assert engine.session_providers == {"detector": [CPU], "recognizer": [CPU]}


def test_cuda_required_but_sessions_left_on_cpu_is_unavailable(pack, monkeypatch) -> None:
    # onnxruntime claims CUDA, yet its sessions run on CPU: what a host with broken CUDA libraries looks like.
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CUDA, CPU])
    with pytest.warns(UserWarning, match="CUDAExecutionProvider"), pytest.raises(EngineUnavailable) as err:
        InsightFaceEngine(pack, device="cuda").load()
    assert "CUDA requested but the detector and recognizer sessions fell back" in str(err.value)


def test_embedding_dim_is_the_recognizers_output_length_after_load(tmp_path) -> None:
    build_tiny_pack(tmp_path, dim=128)
    engine = InsightFaceEngine(tmp_path, device="cpu")
    assert engine.embedding_dim == 512
    engine.load()
    assert engine.embedding_dim == 128
    faces = engine.detect_and_embed([frame_with_faces([(2, 3)])], [0])
    assert faces[0].embedding.shape == (128,)


# --- detection and embedding ---


def test_faces_keep_their_frame_indices_and_their_boxes_lie_inside_the_frame(make_engine) -> None:
    engine = make_engine()
    frames = [frame_with_faces([(1, 2)]), frame_with_faces([]), frame_with_faces([(3, 4), (10, 19)])]
    faces = engine.detect_and_embed(frames, [40, 41, 57])
    assert [(f.frame_index, f.bbox) for f in faces] == [
        (40, (64, 32, 96, 64)),
        (57, (128, 96, 160, 128)),
        (57, (608, 320, 640, 352)),
    ]
    for face in faces:
        x1, y1, x2, y2 = face.bbox
        assert all(isinstance(v, int) for v in face.bbox)
        assert 0 <= x1 < x2 <= FRAME_HW[1] and 0 <= y1 < y2 <= FRAME_HW[0]
        assert isinstance(face.det_score, float) and face.det_score >= engine.det_thresh


def test_embeddings_are_unit_length_float32_of_the_recognizers_dimension(make_engine) -> None:
    engine = make_engine()
    faces = engine.detect_and_embed([frame_with_faces([(1, 1), (5, 9)], variants=[0, 3])], [0])
    assert len(faces) == 2
    for face in faces:
        assert face.embedding.dtype == np.float32
        assert face.embedding.shape == (engine.embedding_dim,)
        assert np.linalg.norm(face.embedding) == pytest.approx(1.0, abs=1e-5)


def test_different_crops_get_different_embeddings_and_the_same_crop_the_same(make_engine) -> None:
    engine = make_engine()
    faces = engine.detect_and_embed([frame_with_faces([(1, 1), (1, 5), (6, 9)], variants=[0, 3, 0])], [0])
    sims = engine.similarity(np.stack([f.embedding for f in faces]), np.stack([f.embedding for f in faces]))
    assert sims[0, 2] == pytest.approx(1.0, abs=1e-4)  # same layout at another place
    assert sims[0, 1] < 0.99


def test_the_recognizer_receives_faces_in_batches_of_at_most_the_configured_size(make_engine, monkeypatch) -> None:
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX

    batches = []
    real_get_feat = ArcFaceONNX.get_feat

    def spy(self, imgs):
        batches.append(len(imgs))
        return real_get_feat(self, imgs)

    monkeypatch.setattr(ArcFaceONNX, "get_feat", spy)
    engine = make_engine(detect_batch=4)
    frames = [frame_with_faces([(1, 1), (4, 7), (8, 15)], variants=[i % 4, 1, 2]) for i in range(5)]
    faces = engine.detect_and_embed(frames, list(range(5)))
    assert len(faces) == 15
    assert batches == [4, 4, 4, 3]  # crops of different frames share a batch
    assert [f.frame_index for f in faces] == [i for i in range(5) for _ in range(3)]


def test_a_frame_without_faces_gives_no_faces_and_no_recognizer_call(make_engine, monkeypatch) -> None:
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX

    def refuse(self, imgs):
        raise AssertionError("the recognizer was called without faces")

    monkeypatch.setattr(ArcFaceONNX, "get_feat", refuse)
    assert make_engine().detect_and_embed([frame_with_faces([])], [0]) == []


def test_frames_are_handed_to_the_detector_in_bgr_order(make_engine, monkeypatch) -> None:
    from insightface.model_zoo.scrfd import SCRFD

    seen = []
    real_detect = SCRFD.detect

    def spy(self, img, *args, **kwargs):
        seen.append(img.copy())
        return real_detect(self, img, *args, **kwargs)

    monkeypatch.setattr(SCRFD, "detect", spy)
    engine = make_engine()
    red, blue = frame_with_faces([(2, 2)], colour=RED), frame_with_faces([(2, 2)], colour=BLUE)
    found = engine.detect_and_embed([red, blue], [0, 1])
    assert np.array_equal(seen[0], red[:, :, ::-1]) and np.array_equal(seen[1], blue[:, :, ::-1])
    # The tiny detector keys on the network's red channel: only a correctly swapped red square is a face.
    assert [f.frame_index for f in found] == [0]


def test_the_detection_threshold_comes_from_configuration(make_engine) -> None:
    frame = frame_with_faces([(2, 2)])  # the tiny detector scores it about 0.98
    assert len(make_engine(det_thresh=0.5).detect_and_embed([frame], [0])) == 1
    assert make_engine(det_thresh=0.99).detect_and_embed([frame], [0]) == []


def test_the_match_threshold_comes_from_configuration(pack) -> None:
    engine = InsightFaceEngine(pack, device="cpu", match_threshold=0.42)
    assert engine.match_threshold == 0.42

    def pair(cosine: float) -> tuple[np.ndarray, np.ndarray]:
        a = np.zeros((1, 512), np.float32)
        b = np.zeros((1, 512), np.float32)
        a[0, 0] = 1.0
        b[0, 0], b[0, 1] = cosine, np.sqrt(1 - cosine**2)
        return a, b

    assert engine.similarity(*pair(0.43))[0, 0] >= engine.match_threshold  # merged: one person
    assert engine.similarity(*pair(0.41))[0, 0] < engine.match_threshold  # split: two people


def test_no_files_are_written_while_detecting_and_embedding(make_engine, pack, tmp_path, monkeypatch) -> None:
    import cv2

    def refuse(*args, **kwargs):
        raise AssertionError("cv2.imwrite called")

    engine = make_engine()
    monkeypatch.setattr(cv2, "imwrite", refuse)
    monkeypatch.chdir(tmp_path)
    pack_before = sorted(pack.iterdir())
    faces = engine.detect_and_embed([frame_with_faces([(1, 1), (6, 6)]) for _ in range(3)], [0, 1, 2])
    assert len(faces) == 6
    assert list(tmp_path.iterdir()) == []
    assert sorted(pack.iterdir()) == pack_before


def test_detect_and_embed_times_add_up_in_milliseconds(make_engine) -> None:
    engine = make_engine()
    engine.timings_ms = {"detect": 0.0, "embed": 0.0}
    engine.detect_and_embed([frame_with_faces([(1, 1)])], [0])
    first = dict(engine.timings_ms)
    engine.detect_and_embed([frame_with_faces([(1, 1)])], [1])
    assert 0 < first["detect"] < engine.timings_ms["detect"]
    assert 0 < first["embed"] < engine.timings_ms["embed"]


def test_frames_and_indices_of_different_lengths_are_rejected(make_engine) -> None:
    with pytest.raises(ValueError):
        make_engine().detect_and_embed([frame_with_faces([(1, 1)])], [0, 1])


# --- detect + embed_faces (the analysis path: concurrent detection, embedding chosen faces only) ---


def test_detect_then_embed_faces_gives_what_detect_and_embed_gives(make_engine) -> None:
    engine = make_engine(detect_batch=2)
    frames = [frame_with_faces([(0, 0), (1, 2)], variants=[0, 1]), frame_with_faces([(2, 1)], variants=[2])] * 3
    indices = list(range(10, 16))
    faces = engine.detect_and_embed(frames, indices)
    boxes = engine.detect(frames, indices)
    assert [(b.frame_index, b.bbox) for b in boxes] == [(f.frame_index, f.bbox) for f in faces]
    vectors = engine.embed_faces(dict(zip(indices, frames, strict=True)), boxes)
    np.testing.assert_allclose(vectors, np.stack([f.embedding for f in faces]), atol=1e-5)
    assert engine.embed_faces({}, []).shape == (0, engine.embedding_dim)


def test_frames_are_detected_concurrently(make_engine, monkeypatch) -> None:
    import threading

    engine = make_engine()
    threads, real = set(), engine._detector.detect

    def spy(img, **kwargs):
        threads.add(threading.get_ident())
        time.sleep(0.02)  # long enough that a pool hands frames to several threads
        return real(img, **kwargs)

    monkeypatch.setattr(engine._detector, "detect", spy)
    engine.detect([frame_with_faces([(0, 0)])] * 8, list(range(8)))
    assert len(threads) > 1


def test_a_detector_exported_with_a_dynamic_batch_detects_all_frames_in_one_run_with_the_same_boxes(
    pack, tmp_path, monkeypatch
) -> None:
    import shutil

    batched_pack = tmp_path / "batched"
    shutil.copytree(pack, batched_pack)
    build_tiny_scrfd(batched_pack / "det_10g.onnx", batched=True)
    per_frame = InsightFaceEngine(pack, device="cpu")
    batched = InsightFaceEngine(batched_pack, device="cpu")
    per_frame.load(), batched.load()
    assert batched._detector.batched and not per_frame._detector.batched
    runs = []
    session = batched._detector._session_for_input_size(batched.det_size)
    real_run = session.run

    def counting(names, feeds):
        runs.append(next(iter(feeds.values())).shape[0])
        return real_run(names, feeds)

    monkeypatch.setattr(session, "run", counting)
    frames = [frame_with_faces(cells, variants=list(range(len(cells)))) for cells in ([(0, 0), (3, 4)], [(2, 2)], [])]
    got = batched.detect(frames * 2, list(range(6)))
    want = per_frame.detect(frames * 2, list(range(6)))
    assert runs == [6], "one session run for the six frames"
    assert [(b.frame_index, b.bbox) for b in got] == [(b.frame_index, b.bbox) for b in want] and got
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a.landmarks, b.landmarks, atol=1e-4)
        assert abs(a.det_score - b.det_score) < 1e-5
