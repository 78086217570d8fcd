"""The built-in procedural renderer: stock backgrounds with Ken Burns motion and composited character faces."""

from __future__ import annotations

import math
import os
import tempfile
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from vidpipe_tasks import media
from vidpipe_tasks.generators.base import CharacterSpec, ClipInfo, ClipRequest
from vidpipe_tasks.generators.imperfection import Drift, Imperfection, SceneFlaws, draw_flaws
from vidpipe_tasks.generators.stock import (
    INVENTED_FACE_POOL,
    STOCK_FACES,
    background_for,
    is_stock_uri,
    resolve_stock_uri,
    stock_face,
    stock_face_box,
)

#: Sprite (head crop) height as a fraction of frame height; the dlib face box is roughly half of it.
FACE_HEIGHT_FRACTION = 0.45
#: A sprite never takes more than this fraction of its character's column, so faces never overlap.
MAX_COLUMN_FILL = 0.8
#: Background is rendered this much larger than the frame so the Ken Burns window can pan and zoom.
_BACKGROUND_MARGIN = 1.12
#: Final zoom of the Ken Burns window at the end of the clip.
_KEN_BURNS_ZOOM = 1.08
#: Relative amplitude of the faces' slow "breathing" scale change.
_FACE_SCALE_AMPLITUDE = 0.03
#: Fraction of the ellipse radius over which the face mask fades out.
_MASK_FEATHER = 0.18


@dataclass(frozen=True)
class _Sprite:
    """One character's pre-masked head image and its motion parameters."""

    image: Image.Image  # RGBA, already at the largest size it is drawn at
    base_size: int  # longest side at scale 1.0
    center: tuple[float, float]  # rest position in frame pixels
    amplitude: tuple[float, float]  # drift amplitude in pixels (x, y)
    phase: tuple[float, float, float]  # phases of the x, y and scale oscillations


def _stable_hash(text: str) -> int:
    """Hash that is stable across processes (Python's hash() is salted per process)."""
    return zlib.crc32(text.encode("utf-8"))


def assign_invented_faces(request: ClipRequest, pool: tuple[str, ...] = INVENTED_FACE_POOL) -> dict[str, str]:
    """Choose a stock face for every character of the request that has no reference image.

    The choice is a pure function of (project_id, scene_index, seed) and the set of reference-less tags.
    The pool is split into two halves; even and odd scenes (offset per project) draw first from different
    halves, each half rotated every other scene. Reference-less tags, ordered by a per-project hash, take
    the faces in that order. Hence:

    * faces within a scene are distinct (up to ``len(pool)`` reference-less characters);
    * a tag never keeps its invented face from one scene to the next while at most ``len(pool) // 2``
      characters per scene are reference-less (2 with the default pool);
    * a single new character per scene cycles through the whole pool, so a newcomer rarely gets the
      face of a character invented (and registered) a scene or two earlier.

    Args:
        request: the clip request.
        pool: stock face names to draw from.

    Returns:
        Tag -> stock face name, only for characters without a reference image.

    """
    tags = sorted(
        {c.tag for c in request.characters if c.reference_image is None},
        key=lambda tag: (_stable_hash(f"{request.project_id}:{request.seed}:{tag}"), tag),
    )
    if not tags:
        return {}
    if not pool:
        raise ValueError("the invented face pool is empty")
    base = _stable_hash(f"{request.project_id}:{request.seed}")
    k = request.scene_index + base
    half = len(pool) // 2
    halves = (pool[:half], pool[half:]) if k % 2 == 0 else (pool[half:], pool[:half])
    order = [face for part in halves if part for face in _rotate(part, k // 2)]
    return {tag: order[slot % len(order)] for slot, tag in enumerate(tags)}


def _rotate(items: tuple[str, ...], n: int) -> tuple[str, ...]:
    n %= len(items)
    return items[n:] + items[:n]


def _load_reference(character: CharacterSpec) -> Image.Image:
    """Open a character's reference image (a file, or a ``stock:face/<name>`` URI) as RGB."""
    ref = character.reference_image
    assert ref is not None
    if is_stock_uri(str(ref)):
        return resolve_stock_uri(str(ref))
    try:
        with Image.open(ref) as image:
            image.load()
            return image.convert("RGB")
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read reference image for {character.tag!r}: {ref} ({exc})") from exc


def _ellipse_mask(width: int, height: int) -> Image.Image:
    """Soft elliptical alpha mask inscribed in a width x height rectangle."""
    ys = (np.arange(height, dtype=np.float32) + 0.5) / height * 2 - 1
    xs = (np.arange(width, dtype=np.float32) + 0.5) / width * 2 - 1
    radius = np.sqrt(xs[None, :] ** 2 + ys[:, None] ** 2)
    alpha = np.clip((1.0 - radius) / _MASK_FEATHER, 0.0, 1.0)
    alpha = alpha * alpha * (3 - 2 * alpha)  # smoothstep: no visible ring at the fade's inner edge
    return Image.fromarray((alpha * 255 + 0.5).astype(np.uint8), "L")


def _make_sprite(face: Image.Image, size: int) -> Image.Image:
    """Scale a head crop so its longest side is ``size`` (aspect kept) and apply the soft mask."""
    scale = size / max(face.width, face.height)
    width, height = max(2, round(face.width * scale)), max(2, round(face.height * scale))
    sprite = face.convert("RGB").resize((width, height), Image.Resampling.LANCZOS).convert("RGBA")
    sprite.putalpha(_ellipse_mask(width, height))
    return sprite


def _layout(faces: list[tuple[str, Image.Image]], width: int, height: int, caption_h: int) -> list[_Sprite]:
    """Give each face its own column, sized so HOG finds it and neighbours never overlap."""
    sprites = []
    n = len(faces)
    column = width / max(1, n)
    usable_h = height - caption_h
    size = max(8, int(min(FACE_HEIGHT_FRACTION * height, MAX_COLUMN_FILL * column, 0.8 * usable_h)))
    max_size = size * (1 + _FACE_SCALE_AMPLITUDE)
    for i, (tag, face) in enumerate(faces):
        h = _stable_hash(f"motion:{tag}")
        amp_x = max(0.0, min(0.04 * width, (column - max_size) / 2 - 2))
        amp_y = max(0.0, min(0.03 * height, (usable_h - max_size) / 2 - 2))
        phase_x, phase_y, phase_scale = (2 * math.pi * ((h >> shift) & 0xFF) / 256 for shift in (0, 8, 16))
        sprites.append(
            _Sprite(
                image=_make_sprite(face, math.ceil(max_size)),
                base_size=size,
                center=((i + 0.5) * column, usable_h / 2),
                amplitude=(amp_x, amp_y),
                phase=(phase_x, phase_y, phase_scale),
            )
        )
    return sprites


def _caption_bar(text: str, width: int, height: int) -> Image.Image:
    """Semi-transparent caption strip with the scene description, truncated to fit on one line."""
    bar = Image.new("RGBA", (width, height), (0, 0, 0, 150))
    font = ImageFont.load_default(size=max(8, round(height * 0.6)))
    draw = ImageDraw.Draw(bar)
    limit = width - 2 * max(4, height // 3)
    text = fit_caption(" ".join(text.split()), lambda t: draw.textlength(t, font=font), limit)
    draw.text((max(4, height // 3), height / 2), text, font=font, fill=(235, 235, 235, 255), anchor="lm")
    return bar


def fit_caption(text: str, measure: Callable[[str], float], limit: float) -> str:
    """The longest prefix of `text` (plus "…" when cut) that `measure` says fits in `limit` pixels.

    Linear in the text's length: no glyph is narrower than a pixel, so at most `limit` characters can
    fit, and a binary search over that prefix measures O(log limit) strings of at most `limit` characters.
    """
    if measure(text[: int(limit) + 1]) <= limit and len(text) <= limit:
        return text
    text = text[: int(limit) + 1]
    lo, hi = 0, len(text)  # the longest fitting prefix length lies in [lo, hi)
    while lo < hi - 1:
        mid = (lo + hi) // 2
        if measure(text[:mid] + "…") <= limit:
            lo = mid
        else:
            hi = mid
    return text[:lo].rstrip() + "…"


class _Frames:
    """Draws frame ``i`` of a clip from precomputed background, sprites and caption."""

    def __init__(self, request: ClipRequest, faces: list[tuple[str, Image.Image]], frame_count: int) -> None:
        self.width, self.height = request.width, request.height
        self.fps = request.fps
        self.frame_count = frame_count
        self.caption = _caption_bar(request.description, self.width, max(14, round(self.height * 0.07)))
        self.sprites = _layout(faces, self.width, self.height, self.caption.height)
        big_w, big_h = math.ceil(self.width * _BACKGROUND_MARGIN), math.ceil(self.height * _BACKGROUND_MARGIN)
        self.background = Image.fromarray(background_for(request.location, big_w, big_h), "RGB")
        # The pan direction depends on the location and scene, so consecutive clips do not move alike.
        h = _stable_hash(f"pan:{request.location}:{request.scene_index}:{request.seed}")
        self.pan_from = ((h & 0xFF) / 255, ((h >> 8) & 0xFF) / 255)
        self.pan_to = (1 - self.pan_from[0], 1 - self.pan_from[1])

    def _background_frame(self, progress: float) -> Image.Image:
        zoom = 1 + (_KEN_BURNS_ZOOM - 1) * progress
        big_w, big_h = self.background.size
        win_w, win_h = self.width * _BACKGROUND_MARGIN / zoom, self.height * _BACKGROUND_MARGIN / zoom
        win_w, win_h = min(win_w, big_w), min(win_h, big_h)
        px = self.pan_from[0] + (self.pan_to[0] - self.pan_from[0]) * progress
        py = self.pan_from[1] + (self.pan_to[1] - self.pan_from[1]) * progress
        x0, y0 = (big_w - win_w) * px, (big_h - win_h) * py
        return self.background.resize(
            (self.width, self.height), Image.Resampling.BILINEAR, box=(x0, y0, x0 + win_w, y0 + win_h)
        )

    def render(self, index: int) -> Image.Image:
        t = index / self.fps
        progress = index / max(1, self.frame_count - 1)
        frame = self._background_frame(progress)
        for sprite in self.sprites:
            # Slow, incommensurate periods so the motion looks organic rather than mechanical.
            scale = 1 + _FACE_SCALE_AMPLITUDE * math.sin(2 * math.pi * t / 5.3 + sprite.phase[2])
            size = sprite.base_size * scale
            image = sprite.image
            ratio = size / max(image.width, image.height)
            if abs(ratio - 1) > 1e-3:
                image = image.resize(
                    (max(2, round(image.width * ratio)), max(2, round(image.height * ratio))),
                    Image.Resampling.BILINEAR,
                )
            cx = sprite.center[0] + sprite.amplitude[0] * math.sin(2 * math.pi * t / 4.1 + sprite.phase[0])
            cy = sprite.center[1] + sprite.amplitude[1] * math.sin(2 * math.pi * t / 3.7 + sprite.phase[1])
            frame.paste(image, (round(cx - image.width / 2), round(cy - image.height / 2)), image)
        frame.paste(self.caption, (0, self.height - self.caption.height), self.caption)
        return frame


class ProceduralGenerator:
    """Renders clips locally from the storyboard: no network, no GPU, deterministic per request.

    Characters are laid out left to right in request order, one column each, with a head sprite about
    45% of the frame height (dlib's face box about a quarter of it). At 640x360 up to three characters
    are reliably detected and recognised by dlib's HOG detector; use 1280x720 for more. Appearances are
    reported as ``"reference"`` or ``"invented:<stock face name>"``.

    Args:
        keyframe_interval_s: seconds between keyframes (GOP length = round(fps * this)); scene-cut
            keyframes are disabled so the interval is exact, which keeps seeking predictable.
        crf: x264 constant rate factor (lower = better quality, bigger files).
        preset: x264 speed preset.
        invented_pool: stock faces for characters without a reference image (see ``assign_invented_faces``).
        imperfection: how often a clip shows identity drift, a missing character or an extra person
            (docs/generators.md "Imperfection"); drawn from (project, scene, request seed), off by default.

    """

    name = "procedural"

    def __init__(
        self,
        *,
        keyframe_interval_s: float = 2.0,
        crf: int = 23,
        preset: str = "veryfast",
        invented_pool: tuple[str, ...] = INVENTED_FACE_POOL,
        imperfection: Imperfection | None = None,
    ) -> None:
        if keyframe_interval_s <= 0:
            raise ValueError("keyframe_interval_s must be positive")
        for face in invented_pool:
            stock_face_box(face)  # fail fast on unknown names
        if not invented_pool:
            raise ValueError("invented_pool must name at least one stock face")
        self.invented_pool = tuple(invented_pool)
        self.keyframe_interval_s = keyframe_interval_s
        self.crf = crf
        self.preset = preset
        self.imperfection = imperfection or Imperfection()

    def keyframe_interval(self, fps: int) -> int:
        """GOP length in frames for a clip at ``fps``."""
        return max(1, round(fps * self.keyframe_interval_s))

    def generate(self, request: ClipRequest) -> ClipInfo:
        """Render ``request`` to ``request.output_path`` (atomically) and describe the result."""
        _validate(request)
        frame_count = max(1, round(request.duration_s * request.fps))
        invented = assign_invented_faces(request, self.invented_pool)
        flaws = draw_flaws(
            self.imperfection,
            request.project_id,
            request.scene_index,
            request.seed,
            [c.tag for c in request.characters],
        )
        faces: list[tuple[str, Image.Image]] = []
        appearances: dict[str, str] = {}
        for character in request.characters:
            if character.reference_image is not None:
                face, appearances[character.tag] = _load_reference(character), "reference"
            else:
                face = stock_face(invented[character.tag])
                appearances[character.tag] = f"invented:{invented[character.tag]}"
            faces.append((character.tag, face))
        if flaws.any:
            faces = _apply_flaws(flaws, faces, appearances, _stock_in_use(request, invented))
        frames = _Frames(request, faces, frame_count)
        output = Path(request.output_path)
        output.parent.mkdir(parents=True, exist_ok=True)
        self._encode_atomically(frames, output)
        return ClipInfo(
            path=output,
            frame_count=frame_count,
            fps=request.fps,
            width=request.width,
            height=request.height,
            appearances=appearances,
        )

    def _encode_atomically(self, frames: _Frames, output: Path) -> None:
        # Temp file in the same folder so os.replace is an atomic rename on the same filesystem.
        fd, tmp_name = tempfile.mkstemp(dir=output.parent, prefix=media.temp_prefix(output), suffix=".part")
        os.close(fd)
        try:
            self._encode(frames, tmp_name)
            os.replace(tmp_name, output)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise

    def _encode(self, frames: _Frames, path: str) -> None:
        gop = self.keyframe_interval(frames.fps)
        with av.open(path, mode="w", format="mp4", options={"movflags": "+faststart"}) as container:
            stream = container.add_stream(
                "libx264",
                rate=frames.fps,
                options={
                    "crf": str(self.crf),
                    "preset": self.preset,
                    "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0",
                },
            )
            stream.width, stream.height = frames.width, frames.height
            stream.pix_fmt = "yuv420p"
            stream.codec_context.gop_size = gop
            stream.codec_context.time_base = Fraction(1, frames.fps)
            # Pillow and x264 both release the GIL, so drawing frames in a helper thread overlaps encoding.
            for index, image in enumerate(_prefetch(frames.render, frames.frame_count)):
                frame = av.VideoFrame.from_image(image)
                frame.pts = index
                frame.time_base = Fraction(1, frames.fps)
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))


def _stock_in_use(request: ClipRequest, invented: dict[str, str]) -> set[str]:
    """Stock faces the clip already shows (a look-alike or an extra person borrows from the others)."""
    used = set(invented.values())
    for c in request.characters:
        if c.reference_image is not None and is_stock_uri(str(c.reference_image)):
            used.add(str(c.reference_image).rsplit("/", 1)[-1])
    return used


def _apply_flaws(
    flaws: SceneFlaws, faces: list[tuple[str, Image.Image]], appearances: dict[str, str], in_use: set[str]
) -> list[tuple[str, Image.Image]]:
    """The faces to draw once the clip's flaws are applied; `appearances` records each flaw."""
    donors = [name for name in STOCK_FACES if name not in in_use] or list(STOCK_FACES)
    out = []
    for tag, face in faces:
        if tag in flaws.missing:
            appearances[tag] = "missing"
            continue
        drift = flaws.drift.get(tag)
        if drift is not None:
            face, note = _drifted(face, drift, donors)
            appearances[tag] = f"{appearances[tag]}+{note}"
        out.append((tag, face))
    for n, pick in enumerate(flaws.extras, start=1):
        name = donors[pick % len(donors)]
        out.append((f"extra-{n}", stock_face(name)))
        appearances[f"extra-{n}"] = f"extra:{name}"
    return out


def _drifted(face: Image.Image, drift: Drift, donors: list[str]) -> tuple[Image.Image, str]:
    """A look-alike (the face blended with another person's) or a perturbed face, and its description."""
    face = face.convert("RGB")
    if drift.kind == "lookalike":
        name = donors[drift.other % len(donors)]
        other = stock_face(name).convert("RGB").resize(face.size, Image.Resampling.LANCZOS)
        return Image.blend(face, other, drift.strength), f"lookalike:{name}"
    # Perturbed: narrower, colour-shifted and slightly soft, as a model that half-remembers a face draws it.
    width = max(8, round(face.width * drift.squeeze))
    squeezed = face.resize((width, face.height), Image.Resampling.LANCZOS)
    pixels = np.asarray(squeezed, dtype=np.int16) + np.asarray(drift.shift, dtype=np.int16)
    shifted = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    return shifted.filter(ImageFilter.GaussianBlur(radius=1.0 + 2.0 * drift.strength)), "perturbed"


def _prefetch(render: Callable[[int], Image.Image], count: int, depth: int = 4) -> Iterator[Image.Image]:
    """Yield ``render(0..count-1)`` in order, drawing up to ``depth`` frames ahead in a helper thread."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="vidpipe-render") as pool:
        pending: deque[Future[Image.Image]] = deque()
        for index in range(count):
            pending.append(pool.submit(render, index))
            if len(pending) > depth:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _validate(request: ClipRequest) -> None:
    """Reject requests the encoder cannot honour, with a message naming the field."""
    if request.width <= 0 or request.height <= 0 or request.width % 2 or request.height % 2:
        raise ValueError(
            f"width and height must be positive and even for yuv420p, got {request.width}x{request.height}"
        )
    if request.fps <= 0:
        raise ValueError(f"fps must be positive, got {request.fps}")
    if request.duration_s <= 0:
        raise ValueError(f"duration_s must be positive, got {request.duration_s}")
    tags = [c.tag for c in request.characters]
    if len(tags) != len(set(tags)):
        raise ValueError(f"duplicate character tags in request: {tags}")
