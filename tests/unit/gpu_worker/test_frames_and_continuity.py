"""Frame sampling, clustering and the continuity score."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from gpu_worker.clustering import cluster_faces
from gpu_worker.continuity import adherence_component, continuity, identity_component
from gpu_worker.faces.base import DetectedFace
from gpu_worker.frames import ClipUnreadable, even_indices, sample_frames
from vidpipe_tasks.similarity import similarity_matrix


def write_clip(path: Path, frames: int = 48, jump_at: int = 30, options: dict | None = None) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=12)
        stream.width, stream.height, stream.pix_fmt = 160, 96, "yuv420p"
        stream.options = {"g": "24", **(options or {})}
        for i in range(frames):
            level = 40 if i < jump_at else 220  # one abrupt change: the motion pass must pick it
            img = np.full((96, 160, 3), level, dtype=np.uint8)
            img[:, (i * 3) % 160] = 0
            img[(i * 2) % 96, :] = 255  # every frame differs from the others
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_sampling_spreads_frames_evenly_adds_motion_frames_and_caps(tmp_path: Path) -> None:
    clip = tmp_path / "c.mp4"
    write_clip(clip)
    sampled = sample_frames(clip, max_frames=10, even=6)
    assert len(sampled.indices) == len(sampled.frames) <= 10 and sampled.frame_count == 48
    assert set(even_indices(48, 6)) <= set(sampled.indices)
    assert 30 in sampled.indices  # the frame where the picture jumps
    assert sampled.frames.shape[1:] == (96, 160, 3)


def test_frames_sampled_from_a_clip_with_b_frames_are_the_frames_a_full_decode_gives_at_their_index(
    tmp_path: Path,
) -> None:
    clip = tmp_path / "b.mp4"
    write_clip(clip, options={"bf": "3", "x264-params": "b-adapt=0:b-pyramid=none"})
    with av.open(str(clip)) as container:
        every = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        container.seek(0)
        assert sum(f.pict_type == av.video.frame.PictureType.B for f in container.decode(video=0)) >= 16
    sampled = sample_frames(clip, max_frames=10, even=6)
    assert sampled.frame_count == 48 and set(even_indices(48, 6)) <= set(sampled.indices)
    for index, frame in zip(sampled.indices, sampled.frames, strict=True):
        assert np.array_equal(frame, every[index]), index


def test_a_corrupt_or_missing_clip_is_unreadable(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video" * 100)
    with pytest.raises(ClipUnreadable):
        sample_frames(bad)
    with pytest.raises(ClipUnreadable, match="not found"):
        sample_frames(tmp_path / "missing.mp4")


def face(frame: int, vector: np.ndarray) -> DetectedFace:
    return DetectedFace(frame, (0, 0, 50, 50), 1.0, vector.astype(np.float32))


def test_faces_of_one_person_across_frames_form_one_cluster() -> None:
    rng = np.random.default_rng(0)
    a, b = (0.5 * v / np.linalg.norm(v) for v in rng.normal(size=(2, 128)))
    faces = [face(i, a + rng.normal(scale=0.005, size=128)) for i in range(4)]
    faces += [face(i, b + rng.normal(scale=0.005, size=128)) for i in range(3)]
    clusters = cluster_faces(faces, lambda x, y: similarity_matrix(x, y, "euclidean"), 0.4)
    assert sorted(len(c.faces) for c in clusters) == [3, 4]


def test_missing_components_are_none_not_zero() -> None:
    result = continuity({"identity": 0.9, "adherence": 0.5})
    assert result["score"] == pytest.approx(0.7)
    assert result["components"]["cross_scene"] is None and result["missing"] == ["cross_scene", "visual"]
    assert continuity({})["score"] is None
    assert identity_component([]) is None and adherence_component([], set(), set(), 0) is None


def test_adherence_counts_matched_and_newly_seen_characters() -> None:
    assert adherence_component(["a", "b", "c"], {"a", "b"}, {"a"}, candidates=1) == pytest.approx(2 / 3)


def test_adherence_counts_a_face_matched_to_a_still_unbound_extract_for_a_reference_less_character() -> None:
    # Scene 3 of the two-at-once case: cal has no reference yet, her face matched the unbound extract-002.
    registry_tags = {"ada", "extract-001", "extract-002"}
    assert adherence_component(["ada", "cal"], registry_tags, {"ada", "extract-002"}, candidates=0) == 1.0
    # Without that match she is not seen.
    assert adherence_component(["ada", "cal"], registry_tags, {"ada"}, candidates=0) == 0.5
