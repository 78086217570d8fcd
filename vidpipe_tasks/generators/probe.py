"""Read a stored clip's shape (frames, fps, size) without decoding it."""

from __future__ import annotations

from pathlib import Path

import av


def probe_clip(path: Path) -> tuple[int, int, int, int]:
    """(frame count, fps, width, height) of an MP4 from its container headers.

    Raises:
        av.error.FFmpegError (or ValueError): the file is not a readable video.

    """
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = int(round(float(stream.average_rate or stream.guessed_rate or 0)))
        frames = stream.frames or int(round(float(stream.duration * stream.time_base) * fps))
        if frames <= 0 or fps <= 0:
            raise ValueError(f"{path.name}: no video frames")
        return frames, fps, stream.codec_context.width, stream.codec_context.height
