"""`vidpipe export` checked by decoding what it wrote: frames, duration, size, crossfades and the audio track."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from vidpipe_tasks.export import AUDIO_RATE, ExportError, export_clips, project_clips

RED, BLUE, GREEN = (220, 30, 30), (30, 30, 220), (30, 200, 30)


def make_clip(
    path: Path, *, size: tuple[int, int], fps: int, frames: int, colour: tuple, tone_hz: float | None = None
) -> Path:
    """A solid-colour H.264 clip, with a sine tone (44.1 kHz mono AAC) when tone_hz is given."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = *size, "yuv420p"
        audio = container.add_stream("aac", rate=44100, layout="mono") if tone_hz else None
        picture = np.zeros((size[1], size[0], 3), dtype=np.uint8)
        picture[:] = colour
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if audio is not None:
            t = np.arange(round(frames / fps * 44100)) / 44100
            pcm = (0.5 * np.sin(2 * np.pi * tone_hz * t)).astype(np.float32)
            for start in range(0, len(pcm), 1024):
                chunk = av.AudioFrame.from_ndarray(pcm[None, start : start + 1024], format="fltp", layout="mono")
                chunk.sample_rate, chunk.pts = 44100, start
                container.mux(audio.encode(chunk))
            container.mux(audio.encode(None))
    return path


def decode(path: Path) -> dict:
    """Every video frame's mean colour, the stream's rate and size, and the audio as float samples."""
    with av.open(str(path)) as container:
        vs = container.streams.video[0]
        colours = [f.to_ndarray(format="rgb24").reshape(-1, 3).mean(axis=0) for f in container.decode(vs)]
        out = {"colours": colours, "fps": Fraction(vs.average_rate), "size": (vs.width, vs.height), "audio": None}
        out["duration"] = float(vs.duration * vs.time_base) if vs.duration else None
    with av.open(str(path)) as container:
        if container.streams.audio:
            a = container.streams.audio[0]
            pcm = np.concatenate([f.to_ndarray().mean(axis=0) for f in container.decode(a)])
            out["audio"] = {"rate": a.rate, "samples": pcm}
    return out


def near(colour: np.ndarray, expected: tuple, tol: float = 20) -> bool:
    return bool(np.all(np.abs(colour - np.asarray(expected)) < tol))


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("clips")
    return {
        "red": make_clip(root / "red.mp4", size=(320, 180), fps=12, frames=24, colour=RED, tone_hz=440),
        "blue": make_clip(root / "blue.mp4", size=(320, 180), fps=12, frames=18, colour=BLUE),
        # Twice the rate and a different, taller size: resampled to 12 fps and letterboxed into 320x180.
        "green": make_clip(root / "green.mp4", size=(240, 240), fps=24, frames=36, colour=GREEN, tone_hz=880),
    }


def test_clips_are_joined_in_order_with_every_frame_and_the_summed_duration(clips, tmp_path) -> None:
    result = export_clips([clips["red"], clips["blue"]], tmp_path / "final.mp4")
    assert result.path == tmp_path / "final.mp4" and [p.name for p in tmp_path.iterdir()] == ["final.mp4"]
    got = decode(result.path)
    assert len(got["colours"]) == result.frame_count == 24 + 18
    assert got["fps"] == 12 and got["size"] == (320, 180)
    assert got["duration"] == pytest.approx(42 / 12, abs=1 / 12)
    assert all(near(c, RED) for c in got["colours"][:24]) and all(near(c, BLUE) for c in got["colours"][24:])


def test_differing_sizes_and_rates_are_normalised_to_the_first_clip(clips, tmp_path) -> None:
    result = export_clips([clips["red"], clips["green"]], tmp_path / "mixed.mp4")
    got = decode(result.path)
    # 36 frames at 24 fps are 1.5 s: 18 frames at the first clip's 12 fps.
    assert len(got["colours"]) == result.frame_count == 24 + 18
    assert got["fps"] == 12 and got["size"] == (320, 180) and (result.width, result.height) == (320, 180)
    with av.open(str(result.path)) as container:
        last = list(container.decode(video=0))[-1].to_ndarray(format="rgb24")
    # Letterboxed, aspect kept: a 180x180 green square in the middle, black bars either side.
    assert near(last[90, 160], GREEN) and near(last[90, 10], (0, 0, 0), tol=12) and near(last[90, 310], (0, 0, 0), 12)


def test_a_given_size_and_rate_override_the_first_clip(clips, tmp_path) -> None:
    result = export_clips([clips["red"], clips["green"]], tmp_path / "given.mp4", size=(160, 90), fps=24)
    got = decode(result.path)
    assert got["size"] == (160, 90) and got["fps"] == 24
    assert len(got["colours"]) == 48 + 36  # 2 s at 24 fps, then 1.5 s


def test_a_crossfade_shortens_the_video_by_the_overlap_and_blends_the_two_clips(clips, tmp_path) -> None:
    result = export_clips([clips["red"], clips["blue"], clips["red"]], tmp_path / "fade.mp4", crossfade_s=0.5)
    got = decode(result.path)
    overlap = 6  # 0.5 s at 12 fps, once per cut
    assert len(got["colours"]) == result.frame_count == 24 + 18 + 24 - 2 * overlap
    assert got["duration"] == pytest.approx((66 - 12) / 12, abs=1 / 12)
    assert near(got["colours"][0], RED) and near(got["colours"][-1], RED)
    # The middle of the first fade is half red, half blue; after it the blue clip plays alone.
    middle = np.asarray(RED) * 0.5 + np.asarray(BLUE) * 0.5
    assert near(got["colours"][24 - overlap + 2], middle, tol=30)
    assert near(got["colours"][24 + 1], BLUE)


def test_audio_is_kept_where_a_clip_has_it_and_silence_fills_the_clips_without(clips, tmp_path) -> None:
    result = export_clips([clips["red"], clips["blue"], clips["green"]], tmp_path / "audio.mp4")
    got = decode(result.path)
    assert result.audio and got["audio"]["rate"] == AUDIO_RATE
    pcm = got["audio"]["samples"]
    video_s = len(got["colours"]) / 12
    assert len(pcm) / AUDIO_RATE == pytest.approx(video_s, abs=0.1)  # AAC adds at most a frame of priming

    def loudness(start_s: float, end_s: float) -> float:
        return float(np.sqrt(np.mean(pcm[int(start_s * AUDIO_RATE) : int(end_s * AUDIO_RATE)] ** 2)))

    assert loudness(0.2, 1.8) > 0.2  # the red clip's tone (0.5 amplitude mono, upmixed to stereo: RMS 0.25)
    assert loudness(2.2, 3.3) < 0.01  # the blue clip has no audio: silence
    assert loudness(3.7, 4.8) > 0.2  # the green clip's tone


def test_clips_without_any_audio_give_a_video_without_an_audio_track(clips, tmp_path) -> None:
    result = export_clips([clips["blue"], clips["blue"]], tmp_path / "silent.mp4")
    assert not result.audio and decode(result.path)["audio"] is None


def test_a_crossfade_longer_than_a_clip_can_give_is_refused_before_anything_is_written(clips, tmp_path) -> None:
    out = tmp_path / "too-long.mp4"
    with pytest.raises(ExportError, match="crossfade"):
        export_clips([clips["red"], clips["blue"], clips["red"]], out, crossfade_s=1.0)  # blue is 1.5 s
    with pytest.raises(ExportError, match="crossfade"):
        export_clips([clips["red"]], out, crossfade_s=-1)
    assert list(tmp_path.iterdir()) == []


def test_an_unreadable_clip_is_a_clear_error(tmp_path) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video" * 10)
    with pytest.raises(ExportError, match="bad.mp4"):
        export_clips([bad], tmp_path / "out.mp4")
    with pytest.raises(ExportError, match="not found"):
        export_clips([tmp_path / "missing.mp4"], tmp_path / "out.mp4")


def test_a_project_with_a_scene_not_yet_generated_cannot_be_exported(settings) -> None:
    from tests.conftest import DATA
    from vidpipe_tasks.storyboard import load_storyboard
    from vidpipe_tasks.workflow import create_project

    project_id = create_project(settings, DATA / "quay.yaml", load_storyboard(DATA / "quay.yaml"))
    with pytest.raises(ExportError, match=r"no clip yet for scene\(s\) 1 \(PENDING\)"):
        project_clips(settings, project_id)
    with pytest.raises(LookupError):
        project_clips(settings, project_id + 100)


def test_the_export_command_refuses_bad_options_and_unfinished_projects_with_a_clear_message(tmp_path) -> None:
    from tests.conftest import DATA
    from tests.helpers import run_vidpipe

    home = tmp_path / "work"
    assert run_vidpipe(home, "submit", str(DATA / "quay.yaml")).returncode == 0
    bad_size = run_vidpipe(home, "export", "1", "-o", str(tmp_path / "x.mp4"), "--size", "wide")
    assert bad_size.returncode == 2 and "expected WIDTHxHEIGHT" in bad_size.stderr
    pending = run_vidpipe(home, "export", "1", "-o", str(tmp_path / "x.mp4"))
    assert (
        pending.returncode == 1 and "no clip yet for scene(s) 1 (PENDING), 2 (PENDING), 3 (PENDING)" in pending.stderr
    )
    unknown = run_vidpipe(home, "report", "7")
    assert unknown.returncode == 1 and "no project 7" in unknown.stderr
    nowhere = run_vidpipe(tmp_path / "empty", "export", "1", "-o", str(tmp_path / "x.mp4"))
    assert nowhere.returncode == 3 and "no vidpipe database" in nowhere.stderr
    assert not (tmp_path / "x.mp4").exists() and not (tmp_path / "empty" / "vidpipe.db").exists()


def test_a_scene_skipped_by_the_content_policy_is_left_out_of_the_export(settings, clips) -> None:
    from sqlalchemy import select

    from tests.conftest import DATA
    from vidpipe_tasks.db.models import Clip, Scene, StageStatus
    from vidpipe_tasks.db.session import session_scope
    from vidpipe_tasks.storyboard import load_storyboard
    from vidpipe_tasks.workflow import create_project

    project_id = create_project(settings, DATA / "quay.yaml", load_storyboard(DATA / "quay.yaml"))
    (settings.media_root / "c").mkdir(parents=True)
    with session_scope(settings.database_url) as s:
        for scene in s.scalars(select(Scene).where(Scene.project_id == project_id)):
            if scene.scene_index == 2:
                scene.generation_status = StageStatus.SKIPPED
                continue
            target = settings.media_root / "c" / f"{scene.scene_index}.mp4"
            target.write_bytes(clips["red"].read_bytes())
            s.add(
                Clip(
                    scene_id=scene.id,
                    path=f"c/{scene.scene_index}.mp4",
                    size_bytes=1,
                    frame_count=24,
                    fps=12,
                    width=320,
                    height=180,
                    generator="test",
                )
            )
            scene.generation_status = StageStatus.DONE
    assert [p.name for p in project_clips(settings, project_id)] == ["1.mp4", "3.mp4"]
