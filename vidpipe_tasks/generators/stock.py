"""Stock faces and backgrounds that ship inside installed packages, so rendering never downloads anything."""

from __future__ import annotations

import importlib.util
import zlib
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

#: URI prefix for stock media, e.g. ``stock:face/t1-0``.
STOCK_URI_PREFIX = "stock:"
_FACE_URI_PREFIX = "stock:face/"

# Measured once with dlib (HOG frontal detector, upsample 1; 5-point landmarks) and hard-coded so that this
# module never imports dlib. ``crop`` is a generous square in source pixels (about 1.8x dlib's face box,
# shifted up to keep hair) that may extend past the source image, where border pixels are repeated.
# ``roll`` (degrees, counter-clockwise) levels the eyes of strongly tilted heads: HOG's frontal detector
# is weak on rolled faces, and these crops are re-detected after every render.
# ``source_face`` is dlib's box (left, top, right, bottom) in the source image, ``face`` the one in the final crop.
_FACE_DATA: dict[str, dict] = {
    "t1-0": {
        "source": "t1",
        "source_face": (67, 283, 175, 390),
        "crop": (15, 236, 208, 429),
        "roll": -24.9,
        "face": (44, 56, 151, 163),
    },
    "t1-1": {
        "source": "t1",
        "source_face": (275, 176, 364, 265),
        "crop": (208, 105, 402, 299),
        "roll": -33.2,
        "face": (44, 56, 151, 163),
    },
    "t1-2": {
        "source": "t1",
        "source_face": (450, 295, 557, 402),
        "crop": (418, 246, 612, 440),
        "roll": 15.2,
        "face": (44, 56, 151, 163),
    },
    "t1-3": {
        "source": "t1",
        "source_face": (724, 367, 832, 474),
        "crop": (681, 313, 875, 507),
        "roll": 0.0,
        "face": (44, 44, 151, 152),
    },
    "t1-4": {
        "source": "t1",
        "source_face": (870, 67, 999, 196),
        "crop": (836, 23, 1030, 217),
        "roll": -7.3,
        "face": (44, 56, 151, 163),
    },
    "t1-5": {
        "source": "t1",
        "source_face": (1118, 283, 1226, 390),
        "crop": (1075, 229, 1269, 423),
        "roll": 0.0,
        "face": (44, 56, 151, 163),
    },
    # The source is a tight 112x112 aligned crop, so the generous crop has to pad past its borders.
    "tom-hanks": {
        "source": "tom-hanks",
        "source_face": (6, 26, 96, 116),
        "crop": (-21, -10, 123, 134),
        "roll": 0.0,
        "face": (26, 36, 116, 126),
    },
    "astronaut": {
        "source": "astronaut",
        "source_face": (175, 76, 265, 166),
        "crop": (139, 31, 301, 193),
        "roll": 0.0,
        "face": (36, 46, 126, 136),
    },
}

#: Every stock face name.
STOCK_FACES: tuple[str, ...] = tuple(_FACE_DATA)
#: Faces used for invented appearances (characters without a reference image). ``t1-4`` is left out: once
#: rendered, dlib puts it about 0.58-0.62 from ``t1-3``, so the CV worker could confuse the two.
INVENTED_FACE_POOL: tuple[str, ...] = ("t1-3", "t1-5", "tom-hanks", "astronaut")
#: Faces meant for example manifests' reference images; never used for invented appearances.
EXAMPLE_REFERENCE_FACES: tuple[str, ...] = ("t1-0", "t1-1", "t1-2")


def _insightface_images_dir() -> Path:
    """Locate insightface's bundled sample images without importing insightface (it pulls in onnxruntime)."""
    spec = importlib.util.find_spec("insightface")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("stock faces need the 'insightface' package installed (only its sample images)")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "images"


@lru_cache(maxsize=4)
def _face_source(source: str) -> np.ndarray:
    """Load one face source image as an RGB uint8 array (cached; callers must not modify it)."""
    if source == "t1":
        image = Image.open(_insightface_images_dir() / "t1.jpg")
    elif source == "tom-hanks":
        image = Image.open(_insightface_images_dir() / "Tom_Hanks_54745.png")
    elif source == "astronaut":
        import skimage.data

        return np.ascontiguousarray(skimage.data.astronaut()[..., :3])
    else:
        raise ValueError(f"unknown face source {source!r}")
    return np.asarray(image.convert("RGB"))


def _crop_with_edge_padding(pixels: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Crop ``box`` from ``pixels``, repeating border pixels where the box leaves the image."""
    left, top, right, bottom = box
    height, width = pixels.shape[:2]
    pad = ((max(0, -top), max(0, bottom - height)), (max(0, -left), max(0, right - width)), (0, 0))
    inner = pixels[max(0, top) : min(height, bottom), max(0, left) : min(width, right)]
    return np.pad(inner, pad, mode="edge") if any(p for axis in pad for p in axis) else inner.copy()


def stock_face_box(name: str) -> tuple[int, int, int, int]:
    """Return dlib's face box (left, top, right, bottom) inside ``stock_face(name)``'s pixels."""
    return _face_data(name)["face"]


def _face_data(name: str) -> dict:
    try:
        return _FACE_DATA[name]
    except KeyError:
        raise ValueError(f"unknown stock face {name!r}; valid names: {', '.join(STOCK_FACES)}") from None


def stock_face(name: str) -> Image.Image:
    """Return a generous square crop (head, some hair and neck) of one stock face.

    Args:
        name: one of ``STOCK_FACES``.

    Returns:
        A new RGB image; the caller may modify it.

    Raises:
        ValueError: for an unknown name (the message lists the valid ones).

    """
    data = _face_data(name)
    left, top, right, bottom = data["crop"]
    if not data["roll"]:
        return Image.fromarray(_crop_with_edge_padding(_face_source(data["source"]), data["crop"]), "RGB")
    # Rotate a wider crop and keep its centre, so the rotated corners come from real pixels, not fill.
    margin = (right - left) // 2
    wide = _crop_with_edge_padding(
        _face_source(data["source"]), (left - margin, top - margin, right + margin, bottom + margin)
    )
    rotated = Image.fromarray(wide, "RGB").rotate(data["roll"], resample=Image.Resampling.BICUBIC)
    return rotated.crop((margin, margin, margin + right - left, margin + bottom - top))


def is_stock_uri(value: object) -> bool:
    """Tell whether ``value`` is a stock-media URI such as ``stock:face/t1-0``."""
    return isinstance(value, str) and value.startswith(STOCK_URI_PREFIX)


def resolve_stock_uri(uri: str) -> Image.Image:
    """Load the image a ``stock:face/<name>`` URI refers to.

    Raises:
        ValueError: when the URI is not a stock face URI or names an unknown face.

    """
    if not is_stock_uri(uri) or not uri.startswith(_FACE_URI_PREFIX):
        raise ValueError(
            f"unsupported stock URI {uri!r}; expected {_FACE_URI_PREFIX}<name> with name in: {', '.join(STOCK_FACES)}"
        )
    return stock_face(uri[len(_FACE_URI_PREFIX) :])


def _skimage_loader(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        return getattr(skimage.data, name)()

    return load


# Only images bundled with scikit-image (no pooch download) and free of human faces, so that the CV
# worker never finds a face in the background.
_BACKGROUNDS: dict[str, Callable[[], np.ndarray]] = {
    name: _skimage_loader(name)
    for name in (
        "coffee",
        "chelsea",
        "rocket",
        "hubble_deep_field",
        "immunohistochemistry",
        "brick",
        "grass",
        "gravel",
        "moon",
        "coins",
    )
}
#: Background image names, in the order ``background_name_for`` indexes them.
STOCK_BACKGROUNDS: tuple[str, ...] = tuple(_BACKGROUNDS)


def _stable_hash(text: str) -> int:
    """Hash that is stable across processes (Python's hash() is salted per process)."""
    return zlib.crc32(text.encode("utf-8"))


def _normalise_location(location: str) -> str:
    return " ".join(location.lower().split())


def background_name_for(location: str | None) -> str | None:
    """Name of the stock background used for ``location`` (None for no location or a blank one)."""
    if location is None or not location.strip():
        return None
    return STOCK_BACKGROUNDS[_stable_hash(_normalise_location(location)) % len(STOCK_BACKGROUNDS)]


@lru_cache(maxsize=16)
def _background_source(name: str) -> np.ndarray:
    """Load one background as RGB uint8 (cached; callers must not modify it)."""
    pixels = np.asarray(_BACKGROUNDS[name]())
    if pixels.dtype != np.uint8:
        pixels = (pixels > 0).astype(np.uint8) * 255 if pixels.dtype == bool else pixels.astype(np.uint8)
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=2)
    return np.ascontiguousarray(pixels[..., :3])


def _tint_for(location: str) -> np.ndarray:
    """A per-location colour tint, so grey textures still look different from place to place."""
    h = _stable_hash("tint:" + _normalise_location(location))
    return np.array([0.75 + 0.25 * ((h >> shift) & 0xFF) / 255 for shift in (0, 8, 16)], dtype=np.float32)


def _cover_resize(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scale ``image`` to cover width x height, then crop the centre."""
    scale = max(width / image.width, height / image.height)
    new_w, new_h = max(width, round(image.width * scale)), max(height, round(image.height * scale))
    image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = (new_w - width) // 2, (new_h - height) // 2
    return image.crop((left, top, left + width, top + height))


def _gradient(width: int, height: int) -> np.ndarray:
    """A plain dark-blue vertical gradient used when a scene has no location."""
    t = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    top, bottom = np.array([40, 52, 78], np.float32), np.array([12, 14, 24], np.float32)
    column = top * (1 - t) + bottom * t
    return np.ascontiguousarray(np.broadcast_to(column[:, None, :], (height, width, 3)).astype(np.uint8))


def background_for(location: str | None, width: int, height: int) -> np.ndarray:
    """Render the background for a location, deterministically per (normalised) location name.

    The image is darkened and softly blurred so composited faces stand out.

    Args:
        location: the scene's location; None or blank gives a plain gradient.
        width: output width in pixels.
        height: output height in pixels.

    Returns:
        An RGB uint8 array of shape (height, width, 3).

    """
    if width <= 0 or height <= 0:
        raise ValueError(f"background size must be positive, got {width}x{height}")
    name = background_name_for(location)
    if name is None:
        return _gradient(width, height)
    image = _cover_resize(Image.fromarray(_background_source(name)), width, height)
    image = image.filter(ImageFilter.GaussianBlur(radius=max(1.0, 1.5 * min(width, height) / 360)))
    assert location is not None  # background_name_for returned a name
    pixels = np.asarray(image, dtype=np.float32) * (0.7 * _tint_for(location))
    return np.clip(pixels, 0, 255).astype(np.uint8)
