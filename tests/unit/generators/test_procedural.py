"""The procedural generator's container, timing, atomic writing and invented appearances."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import av
import numpy as np
import pytest

from vidpipe_tasks.generators import GENERATOR_NAMES, get_generator
from vidpipe_tasks.generators import procedural as procedural_module
from vidpipe_tasks.generators.base import CharacterSpec, ClipRequest
from vidpipe_tasks.generators.procedural import ProceduralGenerator, assign_invented_faces
from vidpipe_tasks.generators.stock import INVENTED_FACE_POOL, stock_face


def make_request(tmp_path: Path, **changes) -> ClipRequest:
    request = ClipRequest(
        project_id=7,
        scene_index=0,
        description="Mara hands Bob the map",
        location="harbour",
        characters=(CharacterSpec("mara"), CharacterSpec("bob")),
        duration_s=4.0,
        fps=12,
        width=320,
        height=180,
        output_path=tmp_path / "clips" / "scene_000.mp4",
    )
    return replace(request, **changes)


def decode(path: Path) -> tuple[av.video.stream.VideoStream, list[bool], list[np.ndarray]]:
    """Return the stream (closed container), each frame's keyframe flag, and the frames as RGB arrays."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        keys, frames = [], []
        for frame in container.decode(stream):
            keys.append(bool(frame.key_frame))
            frames.append(frame.to_ndarray(format="rgb24"))
    return stream, keys, frames


def test_the_clip_is_h264_with_the_requested_size_fps_and_frame_count_and_keyframes_every_two_seconds(
    tmp_path: Path,
) -> None:
    info = ProceduralGenerator().generate(make_request(tmp_path))
    stream, keys, frames = decode(info.path)
    assert stream.codec_context.name == "h264"
    assert stream.codec_context.pix_fmt == "yuv420p"
    assert (stream.codec_context.width, stream.codec_context.height) == (320, 180)
    assert stream.average_rate == 12
    assert len(frames) == info.frame_count == 48
    assert frames[0].shape == (180, 320, 3)
    assert [i for i, key in enumerate(keys) if key] == [0, 24]
    assert (info.path, info.fps, info.width, info.height) == (tmp_path / "clips" / "scene_000.mp4", 12, 320, 180)


def test_the_keyframe_interval_is_configurable_and_exact(tmp_path: Path) -> None:
    generator = ProceduralGenerator(keyframe_interval_s=0.5)
    info = generator.generate(make_request(tmp_path, duration_s=2.0, fps=24))
    _, keys, _ = decode(info.path)
    assert generator.keyframe_interval(24) == 12
    assert [i for i, key in enumerate(keys) if key] == [0, 12, 24, 36]


def test_the_frame_count_is_duration_times_fps_rounded(tmp_path: Path) -> None:
    info = ProceduralGenerator().generate(make_request(tmp_path, duration_s=1.3, fps=10))
    assert info.frame_count == 13
    assert len(decode(info.path)[2]) == 13


def test_frames_move_over_time(tmp_path: Path) -> None:
    _, _, frames = decode(ProceduralGenerator().generate(make_request(tmp_path)).path)
    assert np.abs(frames[0].astype(int) - frames[-1].astype(int)).mean() > 3


def test_rendering_the_same_request_twice_gives_identical_appearances(tmp_path: Path) -> None:
    reference = tmp_path / "mara.png"
    stock_face("t1-0").save(reference)
    request = make_request(tmp_path, characters=(CharacterSpec("mara", reference), CharacterSpec("bob")))
    first = ProceduralGenerator().generate(request)
    second = ProceduralGenerator().generate(request)
    assert first.appearances == second.appearances
    assert first.appearances["mara"] == "reference"
    assert first.appearances["bob"].removeprefix("invented:") in INVENTED_FACE_POOL


def test_writing_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    request = make_request(tmp_path, duration_s=1.0)
    ProceduralGenerator().generate(request)
    assert sorted(p.name for p in request.output_path.parent.iterdir()) == ["scene_000.mp4"]


def test_a_failed_render_keeps_the_previous_file_and_leaves_no_temp_files(tmp_path: Path, monkeypatch) -> None:
    request = make_request(tmp_path, duration_s=1.0)
    request.output_path.parent.mkdir(parents=True)
    request.output_path.write_bytes(b"previous clip")

    def broken_render(self, index: int):
        if index == 5:
            raise RuntimeError("renderer crashed")
        return original_render(self, index)

    original_render = procedural_module._Frames.render
    monkeypatch.setattr(procedural_module._Frames, "render", broken_render)
    with pytest.raises(RuntimeError, match="renderer crashed"):
        ProceduralGenerator().generate(request)
    assert request.output_path.read_bytes() == b"previous clip"
    assert sorted(p.name for p in request.output_path.parent.iterdir()) == ["scene_000.mp4"]


def test_invented_appearance_differs_between_consecutive_scenes_for_the_same_tag(tmp_path: Path) -> None:
    faces = [
        ProceduralGenerator().generate(make_request(tmp_path, scene_index=i, duration_s=0.25)).appearances["mara"]
        for i in range(4)
    ]
    assert all(a != b for a, b in itertools.pairwise(faces))
    assert all(face.startswith("invented:") for face in faces)


def test_consecutive_scenes_never_reuse_a_tags_invented_face_while_at_most_two_characters_lack_references() -> None:
    tags = ("mara", "bob", "zed")
    casts = [cast for n in (1, 2) for cast in itertools.combinations(tags, n)]
    for project_id, seed, scene in itertools.product((1, 2, 99), (0, 5), range(12)):
        for before, after in itertools.product(casts, casts):
            first = assign_invented_faces(request_for(project_id, scene, seed, before))
            second = assign_invented_faces(request_for(project_id, scene + 1, seed, after))
            for tag in set(before) & set(after):
                assert first[tag] != second[tag], (project_id, seed, scene, before, after, tag)


def test_reference_less_characters_in_one_scene_get_different_faces() -> None:
    for project_id, scene in itertools.product(range(5), range(8)):
        chosen = assign_invented_faces(request_for(project_id, scene, 0, ("a", "b", "c", "d")))
        assert len(set(chosen.values())) == 4


def test_a_new_character_per_scene_cycles_through_the_whole_invented_pool() -> None:
    chosen = {assign_invented_faces(request_for(3, scene, 0, (f"new{scene}",)))[f"new{scene}"] for scene in range(4)}
    assert chosen == set(INVENTED_FACE_POOL)


def test_characters_with_references_get_no_invented_face() -> None:
    request = request_for(1, 0, 0, ("a",))
    request = replace(request, characters=(CharacterSpec("a", Path("/refs/a.png")), CharacterSpec("b")))
    assert list(assign_invented_faces(request)) == ["b"]


def request_for(project_id: int, scene: int, seed: int, tags: tuple[str, ...]) -> ClipRequest:
    return ClipRequest(
        project_id=project_id,
        scene_index=scene,
        description="",
        location=None,
        characters=tuple(CharacterSpec(tag) for tag in tags),
        duration_s=1.0,
        fps=12,
        width=64,
        height=64,
        output_path=Path("/unused.mp4"),
        seed=seed,
    )


def test_stock_uris_are_accepted_as_reference_images(tmp_path: Path) -> None:
    request = make_request(tmp_path, duration_s=0.25, characters=(CharacterSpec("mara", Path("stock:face/t1-0")),))
    assert ProceduralGenerator().generate(request).appearances == {"mara": "reference"}


def test_an_unreadable_reference_image_is_a_clear_error(tmp_path: Path) -> None:
    request = make_request(tmp_path, characters=(CharacterSpec("mara", tmp_path / "missing.png"),))
    with pytest.raises(ValueError, match="reference image for 'mara'"):
        ProceduralGenerator().generate(request)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"width": 321}, "even"),
        ({"height": 0}, "even"),
        ({"fps": 0}, "fps"),
        ({"duration_s": 0}, "duration_s"),
        ({"characters": (CharacterSpec("a"), CharacterSpec("a"))}, "duplicate"),
    ],
)
def test_invalid_requests_are_rejected_before_anything_is_written(tmp_path: Path, changes, message) -> None:
    with pytest.raises(ValueError, match=message):
        ProceduralGenerator().generate(make_request(tmp_path, **changes))
    assert not (tmp_path / "clips").exists()


def test_a_scene_without_characters_or_location_still_renders(tmp_path: Path) -> None:
    info = ProceduralGenerator().generate(make_request(tmp_path, characters=(), location=None, duration_s=0.5))
    assert info.appearances == {} and info.frame_count == 6


def test_the_registry_returns_the_procedural_generator_and_rejects_unknown_names() -> None:
    assert "procedural" in GENERATOR_NAMES
    generator = get_generator("procedural")
    assert isinstance(generator, ProceduralGenerator) and generator.name == "procedural"
    with pytest.raises(ValueError, match="unknown clip generator 'sora'.*procedural"):
        get_generator("sora")


def test_an_unknown_face_in_a_custom_invented_pool_is_rejected_up_front() -> None:
    with pytest.raises(ValueError, match="unknown stock face"):
        ProceduralGenerator(invented_pool=("t1-3", "nobody"))
