"""Real faces that ship inside installed packages, and a loaded offline engine."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from gpu_worker.faces.dlib_engine import DlibFaceEngine
from vidpipe_tasks.generators.stock import STOCK_FACES, stock_face


@pytest.fixture(scope="session")
def engine() -> DlibFaceEngine:
    engine = DlibFaceEngine()
    engine.load()
    return engine


@pytest.fixture(scope="session")
def faces() -> dict[str, Image.Image]:
    """The eight stock people: six from insightface's t1.jpg, Tom Hanks, scikit-image's astronaut."""
    return {name: stock_face(name) for name in STOCK_FACES}


def composite(face: Image.Image, *, height: int, left: int, top: int, size=(640, 360)) -> np.ndarray:
    """Paste a face onto a real background at another size and position."""
    from skimage import data

    canvas = Image.fromarray(data.coffee()).resize(size)
    scaled = face.resize((int(face.width * height / face.height), height))
    canvas.paste(scaled, (left, top))
    return np.asarray(canvas)
