"""insightface face engine: an SCRFD detector and an ArcFace recognizer from a staged model pack, on ONNX Runtime."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from gpu_worker.faces.base import DetectedFace, EngineUnavailable, FaceBox
from vidpipe_tasks.similarity import similarity_matrix

log = logging.getLogger(__name__)

STAGING_HINT = "stage it with: vidpipe models stage --insightface PATH_OR_URL_TO/buffalo_l.zip --sha256 HEX"

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
DEVICES = ("auto", "cuda", "cpu")
#: Frames detected at once. A detector exported with a dynamic batch gets them in one session run; the
#: stock SCRFD exports (buffalo_l's det_10g) take a batch of 1, so their frames run as concurrent session
#: runs instead: onnxruntime releases the GIL, and on CUDA the runs overlap each other's host-side work.
DETECT_THREADS = 4
#: Most frames in one batched detector run.
DETECT_BATCH_FRAMES = 16

#: A pack's detector is the one .onnx file whose name starts with one of these (buffalo_*: det_10g.onnx,
#: det_500m.onnx; antelopev2: scrfd_10g_bnkps.onnx).
DETECTOR_PREFIXES = ("det_", "scrfd")
#: Models the buffalo and antelope packs ship besides detector and recognizer (landmarks, gender/age):
#: never loaded. The recognizer is the one remaining .onnx file (buffalo_l: w600k_r50.onnx).
EXTRA_MODELS = ("1k3d68", "2d106det", "genderage")


def select_providers(device: str, available: Sequence[str]) -> list[str]:
    """ONNX Runtime execution providers for a CV device setting.

    Args:
        device: "cuda" (CUDA required), "cpu", or "auto" (CUDA when onnxruntime offers it, else CPU).
        available: what `onnxruntime.get_available_providers()` reports on this host.

    Returns:
        Providers in priority order; CPU is always last so ops CUDA lacks still run.

    Raises:
        EngineUnavailable: device "cuda" but this onnxruntime build has no CUDA provider.
        ValueError: an unknown device.
    """
    if device not in DEVICES:
        raise ValueError(f"unknown CV device {device!r}; expected one of {', '.join(DEVICES)}")
    if device == "cpu":
        return [CPU]
    if CUDA in available:
        return [CUDA, CPU]
    if device == "cuda":
        raise EngineUnavailable(
            f"insightface: CV device 'cuda' requested but onnxruntime offers only {list(available)}; "
            "install onnxruntime-gpu in place of onnxruntime (with CUDA and cuDNN), or set the CV device to auto or cpu"
        )
    return [CPU]


def _pack_models(pack_dir: Path) -> tuple[list[Path], list[Path]]:
    """The pack's detector and recognizer candidates, by the file-name rule above (sorted, so stable)."""
    models = sorted(p for p in pack_dir.glob("*.onnx") if p.is_file())
    detectors = [p for p in models if p.name.lower().startswith(DETECTOR_PREFIXES)]
    recognizers = [p for p in models if p not in detectors and p.stem.lower() not in EXTRA_MODELS]
    return detectors, recognizers


def pack_problems(pack_dir: Path) -> list[str]:
    """Why the model pack in `pack_dir` cannot be used (empty: it can); files only, nothing imported or loaded.

    A pack is a folder with exactly one SCRFD detector (`det_*.onnx` or `scrfd*.onnx`, buffalo_l:
    det_10g.onnx) and exactly one ArcFace recognizer (any other .onnx except the extra models
    1k3d68, 2d106det and genderage; buffalo_l: w600k_r50.onnx).
    """
    pack_dir = Path(pack_dir)
    if not pack_dir.exists():
        return [f"insightface pack folder {pack_dir} does not exist"]
    if not pack_dir.is_dir():
        return [f"insightface pack {pack_dir} is not a folder"]
    detectors, recognizers = _pack_models(pack_dir)
    problems = []
    if not detectors:
        problems.append(f"no SCRFD detector (det_*.onnx or scrfd*.onnx, buffalo_l: det_10g.onnx) in {pack_dir}")
    elif len(detectors) > 1:
        problems.append(f"several detectors in {pack_dir} ({', '.join(p.name for p in detectors)}); keep one")
    if not recognizers:
        problems.append(
            f"no ArcFace recognizer (buffalo_l: w600k_r50.onnx; any .onnx other than det_*, scrfd*, "
            f"{', '.join(EXTRA_MODELS)}) in {pack_dir}"
        )
    elif len(recognizers) > 1:
        problems.append(f"several recognizers in {pack_dir} ({', '.join(p.name for p in recognizers)}); keep one")
    # A zero-byte file is what an interrupted copy leaves; onnxruntime would fail on it later, less clearly.
    problems += [f"{p} is empty (an interrupted copy?)" for p in detectors + recognizers if p.stat().st_size == 0]
    return problems


class InsightFaceEngine:
    """SCRFD detection, 5-point ArcFace alignment and L2-normalised ArcFace embeddings compared by cosine."""

    name = "insightface"

    def __init__(
        self,
        pack_dir: Path,
        *,
        device: str = "auto",
        match_threshold: float = 0.35,
        detect_batch: int = 16,
        det_size: tuple[int, int] = (640, 640),
        det_thresh: float = 0.5,
    ):
        """Store parameters only; `load()` imports onnxruntime and insightface and opens the models.

        Args:
            pack_dir: the staged model pack (buffalo_l layout, see `pack_problems`).
            device: "auto", "cuda" or "cpu" (see `select_providers`).
            match_threshold: cosine similarity at or above which two faces are one person.
            detect_batch: most aligned crops per recognizer call (detection itself runs one frame at a
                time: the stock SCRFD export has a fixed batch of 1).
            det_size: detector input (width, height); frames are scaled to fit it, keeping their aspect.
            det_thresh: detector score below which a candidate is not a face.
        """
        if device not in DEVICES:
            raise ValueError(f"unknown CV device {device!r}; expected one of {', '.join(DEVICES)}")
        if detect_batch < 1:
            raise ValueError(f"detect_batch must be at least 1, got {detect_batch}")
        self.pack_dir = Path(pack_dir)
        self.device = device
        self.match_threshold = float(match_threshold)
        self.detect_batch = int(detect_batch)
        self.det_size = (int(det_size[0]), int(det_size[1]))
        self.det_thresh = float(det_thresh)
        #: ArcFace's usual length until `load()` reads the recognizer's own.
        self.embedding_dim = 512
        #: Providers the detector's session actually runs on (set by `load()`; may differ from those asked for).
        self.providers: list[str] = []
        #: The same per model: {"detector": [...], "recognizer": [...]}.
        self.session_providers: dict[str, list[str]] = {}
        self.timings_ms = {"detect": 0.0, "embed": 0.0}
        self._detector = self._recognizer = self._norm_crop = None
        self._threads: ThreadPoolExecutor | None = None

    def load(self) -> None:
        """Open the detector and recognizer once.

        Raises:
            EngineUnavailable: the pack is missing or incomplete, a model cannot be loaded or has the wrong
                role, the packages are not installed, or CUDA was required and is not what the sessions got.
        """
        if self._recognizer is not None:
            return
        problems = pack_problems(self.pack_dir)
        if problems:
            raise EngineUnavailable("; ".join(problems) + "; " + STAGING_HINT)
        try:
            import onnxruntime as ort
            from insightface import model_zoo
            from insightface.utils import face_align
        except ImportError as exc:
            raise EngineUnavailable(
                f"insightface: cannot import onnxruntime and insightface ({exc}); "
                "install them with `pip install insightface onnxruntime` (onnxruntime-gpu on CUDA hosts)"
            ) from exc
        providers = select_providers(self.device, ort.get_available_providers())
        (detector_path,), (recognizer_path,) = _pack_models(self.pack_dir)
        # Only these two models: FaceAnalysis would also load the pack's landmark and gender/age models.
        detector = _open_model(model_zoo, detector_path, providers, "detection")
        recognizer = _open_model(model_zoo, recognizer_path, providers, "recognition")
        if not getattr(detector, "use_kps", False):
            raise EngineUnavailable(
                f"insightface: detector {detector_path} has no keypoint outputs, which ArcFace alignment needs; "
                + STAGING_HINT
            )
        ctx_id = 0 if CUDA in providers else -1  # insightface's convention: a negative ctx_id pins CPU
        detector.prepare(ctx_id, input_size=self.det_size, det_thresh=self.det_thresh)
        recognizer.prepare(ctx_id)
        self.session_providers = {
            "detector": list(detector.session.get_providers()),
            "recognizer": list(recognizer.session.get_providers()),
        }
        self.providers = self.session_providers["detector"]
        # onnxruntime falls back to CPU when the CUDA libraries cannot be loaded; say so rather than run slowly.
        on_cpu = [role for role, used in self.session_providers.items() if CUDA in providers and CUDA not in used]
        sessions = " and ".join(on_cpu) + (" sessions" if len(on_cpu) > 1 else " session")
        if on_cpu and self.device == "cuda":
            raise EngineUnavailable(
                f"insightface: CUDA requested but the {sessions} fell back to "
                f"{self.session_providers[on_cpu[0]]} (CUDA or cuDNN libraries not loadable?)"
            )
        if on_cpu:
            log.warning("insightface: CUDA offered but the %s run on CPU", sessions)
        self.embedding_dim = _embedding_dim(recognizer)
        self._detector, self._recognizer, self._norm_crop = detector, recognizer, face_align.norm_crop
        log.info(
            "insightface: %s + %s, %d-d embeddings, providers %s",
            detector_path.name,
            recognizer_path.name,
            self.embedding_dim,
            self.session_providers,
        )

    def detect_and_embed(self, frames: Sequence[np.ndarray], frame_indices: Sequence[int]) -> list[DetectedFace]:
        """Detect every face frame by frame, then embed the aligned crops in recognizer batches.

        Args:
            frames: RGB uint8 frames (H, W, 3), as decoded from video.
            frame_indices: the clip index of each frame, copied into the faces found in it.

        Returns:
            Faces in frame order, then detector order; embeddings are float32 and unit length.
        """
        self.load()
        found: list[tuple[int, tuple[int, int, int, int], float]] = []
        embeddings: list[np.ndarray] = []
        pending: list[np.ndarray] = []
        crop_size = int(self._recognizer.input_size[0])
        for frame, index in zip(frames, frame_indices, strict=True):
            t0 = time.perf_counter()
            bgr = _rgb_to_bgr(frame)
            boxes, keypoints = self._detector.detect(bgr, input_size=self.det_size)
            for box, kps in zip(boxes, keypoints, strict=True):
                bbox = _clip_box(box[:4], bgr.shape)
                if bbox[0] >= bbox[2] or bbox[1] >= bbox[3]:
                    continue  # entirely outside the frame: nothing to crop or show
                found.append((index, bbox, float(box[4])))
                pending.append(self._norm_crop(bgr, landmark=kps, image_size=crop_size))
            self.timings_ms["detect"] += (time.perf_counter() - t0) * 1000
            # Embedding whenever a full batch is ready gives the same batches as collecting every crop
            # first, with at most one batch of crops held at a time.
            while len(pending) >= self.detect_batch:
                embeddings.append(self._embed(pending[: self.detect_batch]))
                del pending[: self.detect_batch]
        if pending:
            embeddings.append(self._embed(pending))
        vectors = np.concatenate(embeddings) if embeddings else np.zeros((0, self.embedding_dim), np.float32)
        return [
            DetectedFace(index, bbox, score, vector)
            for (index, bbox, score), vector in zip(found, vectors, strict=True)
        ]

    def detect(
        self, frames: Sequence[np.ndarray], frame_indices: Sequence[int], *, min_faces: int = 0
    ) -> list[FaceBox]:
        """SCRFD on every frame, DETECT_THREADS frames at a time (`min_faces` unused: SCRFD sees every size)."""
        self.load()
        t0 = time.perf_counter()
        bgr = [_rgb_to_bgr(f) for f in frames]

        def run(img: np.ndarray) -> tuple:
            return self._detector.detect(img, input_size=self.det_size)

        if bgr and _batchable(self._detector):
            per_frame = [
                d
                for i in range(0, len(bgr), DETECT_BATCH_FRAMES)
                for d in self._detect_batch(bgr[i : i + DETECT_BATCH_FRAMES])
            ]
        else:
            # The first frame alone: insightface creates its per-input-size session state lazily, unlocked.
            per_frame = [run(bgr[0])] + list(self._pool().map(run, bgr[1:])) if bgr else []
        boxes = []
        for img, index, (dets, kpss) in zip(bgr, frame_indices, per_frame, strict=True):
            for det, kps in zip(dets, kpss, strict=True):
                bbox = _clip_box(det[:4], img.shape)
                if bbox[0] < bbox[2] and bbox[1] < bbox[3]:  # entirely outside the frame: nothing to crop
                    boxes.append(FaceBox(index, bbox, float(det[4]), np.asarray(kps, np.float32)))
        self.timings_ms["detect"] += (time.perf_counter() - t0) * 1000
        return boxes

    def embed_faces(self, frames: dict[int, np.ndarray], boxes: Sequence[FaceBox]) -> np.ndarray:
        """ArcFace embeddings of `boxes`: aligned on their keypoints, in recognizer batches of `detect_batch`."""
        self.load()
        size = int(self._recognizer.input_size[0])
        bgr = {i: _rgb_to_bgr(f) for i, f in frames.items() if any(b.frame_index == i for b in boxes)}
        crops = [self._norm_crop(bgr[b.frame_index], landmark=b.landmarks, image_size=size) for b in boxes]
        batches = [self._embed(crops[i : i + self.detect_batch]) for i in range(0, len(crops), self.detect_batch)]
        return np.concatenate(batches) if batches else np.zeros((0, self.embedding_dim), np.float32)

    def _detect_batch(self, bgr: list[np.ndarray]) -> list[tuple]:
        """One detector run for several frames, then insightface's own per-frame post-processing on each slice.

        Each frame is letterboxed exactly as SCRFD.detect does; SCRFD.detect then runs per frame against
        a session stand-in that returns that frame's slice of the batch outputs (batched exports keep the
        batch dimension, which SCRFD's forward reads at index 0), so the boxes equal per-frame detection.
        """
        det = self._detector
        blob = np.concatenate([det._prepare_input_blob(_letterbox(img, self.det_size), self.det_size) for img in bgr])
        outputs = det._session_for_input_size(self.det_size).run(det.output_names, {det.input_name: blob})
        found = []
        try:
            for b, img in enumerate(bgr):
                replay = _Replay([out[b : b + 1] for out in outputs])
                det._session_for_input_size = lambda _size, replay=replay: replay
                found.append(det.detect(img, input_size=self.det_size))
        finally:
            vars(det).pop("_session_for_input_size", None)  # the class's method again
        return found

    def _pool(self) -> ThreadPoolExecutor:
        if self._threads is None:
            self._threads = ThreadPoolExecutor(DETECT_THREADS, thread_name_prefix="scrfd")
        return self._threads

    def _embed(self, crops: list[np.ndarray]) -> np.ndarray:
        """One recognizer call; rows L2-normalised so cosine similarity is a dot product."""
        t0 = time.perf_counter()
        feats = np.asarray(self._recognizer.get_feat(list(crops)), dtype=np.float32).reshape(len(crops), -1)
        feats /= np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
        self.timings_ms["embed"] += (time.perf_counter() - t0) * 1000
        return feats

    def similarity(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Cosine similarity, clipped to [0, 1]."""
        return similarity_matrix(a, b, "cosine")


def _open_model(model_zoo, path: Path, providers: list[str], role: str):  # noqa: ANN001, ANN202 - insightface types
    """Load one ONNX file with insightface's signature routing and check it landed in the expected role."""
    try:
        model = model_zoo.get_model(str(path), providers=providers)
    except Exception as exc:  # a corrupt or foreign file fails inside onnxruntime with many exception types
        raise EngineUnavailable(f"insightface: cannot load {path} ({exc}); {STAGING_HINT}") from exc
    got = getattr(model, "taskname", None)
    if got != role:
        raise EngineUnavailable(
            f"insightface: {path} is not a {role} model (its signature reads as {got or 'no known model'}); "
            + STAGING_HINT
        )
    return model


def _embedding_dim(recognizer) -> int:  # noqa: ANN001 - insightface ArcFaceONNX
    """Length of the recognizer's embeddings, from its output shape or, when that is symbolic, one black crop."""
    dim = recognizer.output_shape[-1]
    if isinstance(dim, int) and dim > 0:
        return dim
    size = int(recognizer.input_size[0])
    return int(np.asarray(recognizer.get_feat([np.zeros((size, size, 3), np.uint8)])).reshape(1, -1).shape[1])


def _rgb_to_bgr(frame: np.ndarray) -> np.ndarray:
    """Swap to the BGR order insightface (OpenCV) works in, in memory and contiguous as OpenCV expects."""
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"expected an RGB frame of shape (H, W, 3), got {frame.shape}")
    return np.ascontiguousarray(frame[:, :, ::-1], dtype=np.uint8)


def _clip_box(box: np.ndarray, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """Float (x1, y1, x2, y2) to whole pixels covering it, inside a frame of `shape`."""
    h, w = shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box)
    return (
        min(max(math.floor(x1), 0), w),
        min(max(math.floor(y1), 0), h),
        min(max(math.ceil(x2), 0), w),
        min(max(math.ceil(y2), 0), h),
    )


class _Replay:
    """A session stand-in that returns outputs computed already (one frame's slice of a batched run)."""

    def __init__(self, outputs: list[np.ndarray]) -> None:
        self.outputs = outputs

    def run(self, output_names: list[str], feeds: dict) -> list[np.ndarray]:
        return self.outputs


def _batchable(detector) -> bool:  # noqa: ANN001 - insightface SCRFD
    """The detector's export takes a dynamic batch, and this insightface has the hooks batching uses."""
    batch = detector.session.get_inputs()[0].shape[0]
    hooks = all(hasattr(detector, n) for n in ("_session_for_input_size", "_prepare_input_blob", "output_names"))
    return bool(getattr(detector, "batched", False)) and not isinstance(batch, int) and hooks


def _letterbox(img: np.ndarray, input_size: tuple[int, int]) -> np.ndarray:
    """The frame scaled into the detector input, top-left aligned, as SCRFD's _detect_candidates does."""
    import cv2

    im_ratio, model_ratio = img.shape[0] / img.shape[1], input_size[1] / input_size[0]
    if im_ratio > model_ratio:
        new_height = input_size[1]
        new_width = int(new_height / im_ratio)
    else:
        new_width = input_size[0]
        new_height = int(new_width * im_ratio)
    out = np.zeros((input_size[1], input_size[0], 3), dtype=np.uint8)
    out[:new_height, :new_width, :] = cv2.resize(img, (new_width, new_height))
    return out
