"""`vidpipe export`: a project's clips joined in scene order into one MP4, normalised, crossfaded, with audio."""

from __future__ import annotations

import logging
import math
import os
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from vidpipe_tasks import media
from vidpipe_tasks.settings import Settings

log = logging.getLogger(__name__)

#: The exported audio track: AAC, stereo, 48 kHz (every input is resampled to it; clips without audio are silent).
AUDIO_RATE = 48000
AUDIO_LAYOUT = "stereo"
#: Samples per encoded audio frame (AAC's frame size).
AUDIO_FRAME = 1024


class ExportError(ValueError):
    """The clips cannot be exported as asked (the message says why); nothing is written."""


@dataclass(frozen=True)
class ClipInfo:
    """What export needs to know about one input clip."""

    path: Path
    width: int
    height: int
    fps: Fraction
    frames: int
    has_audio: bool


@dataclass(frozen=True)
class ExportPlan:
    """The output's shape: every clip is normalised to it."""

    width: int
    height: int
    fps: Fraction
    crossfade_frames: int
    audio: bool

    def frames_of(self, clip: ClipInfo) -> int:
        """Output frames of a clip at the plan's rate (its duration kept, rounded up to a whole frame)."""
        return math.ceil(clip.frames * self.fps / clip.fps)

    def samples_of(self, frames: int) -> int:
        return round(frames * AUDIO_RATE / self.fps)


@dataclass(frozen=True)
class ExportResult:
    """The written file and what it holds."""

    path: Path
    clips: int
    frame_count: int
    fps: Fraction
    width: int
    height: int
    audio: bool

    @property
    def duration_s(self) -> float:
        return float(self.frame_count / self.fps)


def probe(path: Path) -> ClipInfo:
    """Size, rate, frame count and whether the clip has audio.

    Raises:
        ExportError: missing or unreadable clip, or one without video.

    """
    import av

    if not path.is_file():
        raise ExportError(f"clip not found: {path}")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ExportError(f"{path} has no video stream")
            stream = container.streams.video[0]
            fps = Fraction(stream.average_rate or stream.guessed_rate or 0)
            frames = stream.frames or sum(1 for _ in container.decode(stream))
            info = ClipInfo(path, stream.width, stream.height, fps, frames, bool(container.streams.audio))
    except av.error.FFmpegError as exc:
        raise ExportError(f"cannot read {path}: {exc}") from exc
    if info.fps <= 0 or info.frames <= 0:
        raise ExportError(f"{path} has no frames or no frame rate")
    return info


def plan_export(
    clips: list[ClipInfo],
    size: tuple[int, int] | None = None,
    fps: Fraction | int | None = None,
    crossfade_s: float = 0.0,
) -> ExportPlan:
    """The output shape: the first clip's size and rate unless given; the crossfade in whole frames.

    Raises:
        ExportError: no clips, a bad size, rate or crossfade, or a crossfade longer than a clip can give.

    """
    if not clips:
        raise ExportError("nothing to export: no clips")
    width, height = size or (clips[0].width, clips[0].height)
    rate = Fraction(fps) if fps is not None else clips[0].fps
    if width < 2 or height < 2 or rate <= 0 or rate > 240:
        raise ExportError(f"bad output shape: {width}x{height} at {rate} fps")
    if crossfade_s < 0 or not math.isfinite(crossfade_s):
        raise ExportError(f"crossfade must be 0 or more seconds, not {crossfade_s}")
    plan = ExportPlan(
        width - width % 2, height - height % 2, rate, round(crossfade_s * rate), any(c.has_audio for c in clips)
    )
    for i, clip in enumerate(clips):
        # A clip gives its head to the fade in and its tail to the fade out; both must fit in it.
        needed = plan.crossfade_frames * ((i > 0) + (i < len(clips) - 1))
        if needed > plan.frames_of(clip):
            raise ExportError(f"crossfade of {crossfade_s} s is too long for {clip.path.name} ({clip.frames} frames)")
    return plan


def _fit(frame, plan: ExportPlan) -> np.ndarray:  # noqa: ANN001 - av.VideoFrame
    """The frame scaled to fit the output size, aspect kept, centred on black."""
    scale = min(plan.width / frame.width, plan.height / frame.height)
    w, h = max(2, round(frame.width * scale)), max(2, round(frame.height * scale))
    rgb = frame.reformat(width=w, height=h, format="rgb24").to_ndarray()
    if (w, h) == (plan.width, plan.height):
        return rgb
    canvas = np.zeros((plan.height, plan.width, 3), dtype=np.uint8)
    x, y = (plan.width - w) // 2, (plan.height - h) // 2
    canvas[y : y + h, x : x + w] = rgb[: plan.height, : plan.width]
    return canvas


def _video(clip: ClipInfo, plan: ExportPlan) -> Iterator[np.ndarray]:
    """Exactly plan.frames_of(clip) frames: each source frame repeated or dropped to land on the output rate."""
    import av

    total, emitted, last = plan.frames_of(clip), 0, None
    ratio = plan.fps / clip.fps
    with av.open(str(clip.path)) as container:
        for j, frame in enumerate(container.decode(container.streams.video[0])):
            # Output frame k shows source frame floor(k / ratio): source j covers k in [ceil(j*r), ceil((j+1)*r)).
            repeats = min(math.ceil((j + 1) * ratio), total) - max(math.ceil(j * ratio), emitted)
            if repeats <= 0:
                continue
            last = _fit(frame, plan)
            for _ in range(repeats):
                yield last
            emitted += repeats
            if emitted >= total:
                return
    for _ in range(total - emitted):  # fewer frames than the container said: hold the last one
        yield last if last is not None else np.zeros((plan.height, plan.width, 3), dtype=np.uint8)


def _audio(clip: ClipInfo, samples: int) -> np.ndarray:
    """The clip's audio as float32 (2, samples) at AUDIO_RATE: padded with silence or cut to the clip's length."""
    import av

    out = np.zeros((2, samples), dtype=np.float32)
    if not clip.has_audio:
        return out
    resampler = av.AudioResampler(format="fltp", layout=AUDIO_LAYOUT, rate=AUDIO_RATE)
    parts = []
    with av.open(str(clip.path)) as container:
        for frame in container.decode(container.streams.audio[0]):
            parts += [f.to_ndarray() for f in resampler.resample(frame)]
    parts += [f.to_ndarray() for f in resampler.resample(None)]
    if parts:
        pcm = np.concatenate(parts, axis=1)[:, :samples]
        out[:, : pcm.shape[1]] = pcm
    return out


def _joined(clips: list[Iterator[np.ndarray]], overlap: int) -> Iterator[np.ndarray]:
    """Frames of consecutive clips, each clip's last `overlap` frames blended into the next clip's first."""
    held: list[np.ndarray] = []
    for i, frames in enumerate(clips):
        frames = iter(frames)
        for k, previous in enumerate(held):
            alpha = (k + 1) / (len(held) + 1)
            yield (previous * (1 - alpha) + next(frames) * alpha).round().astype(np.uint8)
        keep = 0 if i == len(clips) - 1 else overlap
        tail: deque[np.ndarray] = deque()
        for frame in frames:
            tail.append(frame)
            if len(tail) > keep:
                yield tail.popleft()
        held = list(tail)


def _crossfade_audio(previous_tail: np.ndarray, head: np.ndarray) -> np.ndarray:
    ramp = np.linspace(0.0, 1.0, head.shape[1], endpoint=False, dtype=np.float32) if head.shape[1] else head[0]
    return previous_tail * (1 - ramp) + head * ramp


class _AudioWriter:
    """Encodes the audio track in AAC-sized frames as the clips come."""

    def __init__(self, container, stream) -> None:  # noqa: ANN001 - PyAV objects
        self.container, self.stream, self.pts = container, stream, 0
        self.pending = np.zeros((2, 0), dtype=np.float32)

    def write(self, pcm: np.ndarray, final: bool = False) -> None:
        import av

        self.pending = np.concatenate([self.pending, pcm], axis=1)
        while self.pending.shape[1] >= AUDIO_FRAME or (final and self.pending.shape[1]):
            chunk, self.pending = self.pending[:, :AUDIO_FRAME], self.pending[:, AUDIO_FRAME:]
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="fltp", layout=AUDIO_LAYOUT)
            frame.sample_rate, frame.pts, frame.time_base = AUDIO_RATE, self.pts, Fraction(1, AUDIO_RATE)
            self.pts += chunk.shape[1]
            self.container.mux(self.stream.encode(frame))
        if final:
            self.container.mux(self.stream.encode(None))


class _AudioTrack:
    """The audio track, each clip's part written once the video has passed it (so the file interleaves)."""

    def __init__(self, container, clips: list[ClipInfo], plan: ExportPlan) -> None:  # noqa: ANN001 - PyAV
        stream = container.add_stream("aac", rate=AUDIO_RATE, layout=AUDIO_LAYOUT)
        self.writer, self.clips, self.plan = _AudioWriter(container, stream), clips, plan
        self.overlap = plan.samples_of(plan.crossfade_frames)
        self.tail = np.zeros((2, 0), dtype=np.float32)
        self.written = 0
        # Output frames after which clip i's audio is complete, less what it shares with the next clip.
        self.due, start = [], 0
        for i, clip in enumerate(clips):
            shared = plan.crossfade_frames if i < len(clips) - 1 else 0
            self.due.append(start + plan.frames_of(clip) - shared)
            start += plan.frames_of(clip) - plan.crossfade_frames

    def advance(self, frames: float) -> None:
        """Write the audio of every clip whose video ends within the first `frames` output frames."""
        while self.written < len(self.clips) and frames >= self.due[self.written]:
            self._write(self.written)
            self.written += 1

    def _write(self, i: int) -> None:
        clip, last = self.clips[i], i == len(self.clips) - 1
        pcm = _audio(clip, self.plan.samples_of(self.plan.frames_of(clip)))
        if i > 0:
            fade = self.tail.shape[1]
            pcm = np.concatenate([_crossfade_audio(self.tail, pcm[:, :fade]), pcm[:, fade:]], axis=1)
        cut = pcm.shape[1] - (0 if last else self.overlap)
        self.writer.write(pcm[:, :cut], final=last)
        self.tail = pcm[:, cut:]


def _encode(clips: list[ClipInfo], plan: ExportPlan, path: str) -> int:
    import av

    with av.open(path, mode="w", format="mp4", options={"movflags": "+faststart"}) as container:
        video = container.add_stream("libx264", rate=plan.fps, options={"crf": "20", "preset": "veryfast"})
        video.width, video.height, video.pix_fmt = plan.width, plan.height, "yuv420p"
        video.codec_context.time_base = 1 / plan.fps
        audio = _AudioTrack(container, clips, plan) if plan.audio else None
        count = 0
        for frame in _joined([_video(c, plan) for c in clips], plan.crossfade_frames):
            out = av.VideoFrame.from_ndarray(frame, format="rgb24")
            out.pts, out.time_base = count, 1 / plan.fps
            container.mux(video.encode(out))
            count += 1
            if audio is not None:
                audio.advance(count)
        container.mux(video.encode(None))
        if audio is not None:
            audio.advance(math.inf)
    return count


def export_clips(
    paths: list[Path],
    out: Path,
    *,
    size: tuple[int, int] | None = None,
    fps: Fraction | int | None = None,
    crossfade_s: float = 0.0,
) -> ExportResult:
    """Join clips in order into `out` (written atomically: a failed export leaves no partial file).

    Raises:
        ExportError: see probe and plan_export.

    """
    clips = [probe(p) for p in paths]
    plan = plan_export(clips, size, fps, crossfade_s)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{media.temp_prefix(out)}part")
    import av

    try:
        count = _encode(clips, plan, str(tmp))
        os.replace(tmp, out)
    except av.error.FFmpegError as exc:  # a clip that probed well but does not decode to the end
        raise ExportError(f"export to {out.name} failed: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return ExportResult(out, len(clips), count, plan.fps, plan.width, plan.height, plan.audio)


def project_clips(settings: Settings, project_id: int) -> list[Path]:
    """The project's clips in scene order; a scene whose generation was skipped (content policy) is left out.

    Raises:
        LookupError: no such project.
        ExportError: a scene has no clip yet (the message names it and its generation stage).

    """
    from vidpipe_tasks.db.models import Project, StageStatus
    from vidpipe_tasks.db.session import session_scope

    with session_scope(settings.database_url) as s:
        project = s.get(Project, project_id)
        if project is None:
            raise LookupError(f"no project {project_id}")
        scenes = [sc for sc in project.scenes if sc.clip is not None or sc.generation_status != StageStatus.SKIPPED]
        missing = [f"{sc.scene_index} ({sc.generation_status.value})" for sc in scenes if sc.clip is None]
        if missing:
            raise ExportError(f"project {project_id}: no clip yet for scene(s) {', '.join(missing)}")
        try:
            return [media.absolute(settings.media_root, sc.clip.path) for sc in scenes]
        except ValueError as exc:
            raise ExportError(f"project {project_id}: {exc}") from exc


def export_project(settings: Settings, project_id: int, out: Path, **options: object) -> ExportResult:
    """export_clips over a project's clips (same options)."""
    return export_clips(project_clips(settings, project_id), out, **options)


def export_final(settings: Settings, project_id: int) -> dict:
    """The chain's last step (VIDPIPE_EXPORT_ON_FINISH): export to media.final_path, overwriting a previous run's.

    Returns:
        {"path": the file relative to the media root, "frames": frame count}, or {"path": None, "error": why}.

    """
    from celery.exceptions import SoftTimeLimitExceeded

    relative = media.final_path(project_id)
    try:
        result = export_project(settings, project_id, media.absolute(settings.media_root, relative))
    except (ExportError, LookupError, SoftTimeLimitExceeded) as exc:
        log.warning("project %s: export failed: %s", project_id, exc)
        return {"path": None, "error": str(exc)}
    return {"path": relative, "frames": result.frame_count}
