"""The open_clip image embedder: frames and face crops to L2-normalised vectors, offline, on CUDA or CPU."""

from __future__ import annotations

import os
import pickle
import re
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from gpu_worker.faces.base import EngineUnavailable

STAGING_HINT = "stage it with: vidpipe models stage --open-clip PATH_OR_URL --model ViT-B-32 --sha256 HEX"

_CUDA_DEVICE = re.compile(r"cuda(:\d+)?")


class EmbedderUnavailable(EngineUnavailable):
    """The image embedder cannot run on this host; the message says what is missing and how to stage it."""


def weights_problems(weights_path: Path | None) -> list[str]:
    """Why `weights_path` cannot be loaded as open_clip weights (empty: it can); looks at the file only."""
    if weights_path is None:
        return ["no open_clip weights file is configured"]
    path = Path(weights_path)
    if not path.exists():
        return [f"missing open_clip weights {path}"]
    if not path.is_file():
        return [f"open_clip weights {path} is not a file (a state dict is one file)"]
    if path.stat().st_size == 0:
        return [f"open_clip weights {path} is empty"]
    return []


def resolve_device(device: str) -> str:
    """The torch device to run on: "auto" picks CUDA when this process sees a GPU, else the CPU.

    Call it only where the model will run (inside `load()` in the worker process): asking torch about
    CUDA initialises it, and a CUDA context made before a fork is unusable in the child.

    Raises:
        EmbedderUnavailable: CUDA was asked for and this process has none.
        ValueError: `device` is not "auto", "cpu", "cuda" or "cuda:N".
    """
    import torch

    if device == "cpu":
        return "cpu"
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not _CUDA_DEVICE.fullmatch(device):
        raise ValueError(f"unknown device {device!r}: use 'auto', 'cpu' or 'cuda'")
    if not torch.cuda.is_available():
        raise EmbedderUnavailable(
            f"open_clip: device {device!r} requested but CUDA is not available to this process "
            f"(torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}); "
            "use device 'cpu' or 'auto', or run the worker on a GPU host"
        )
    index = int(device.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise EmbedderUnavailable(
            f"open_clip: device {device!r} requested but this process sees {torch.cuda.device_count()} GPU(s)"
        )
    return device


def mean_embedding(vectors: np.ndarray) -> np.ndarray | None:
    """The re-normalised mean of unit vectors (a scene's visual embedding from its frames); None for none.

    Returns:
        float32 vector of unit length (the zero vector when the inputs cancel out exactly), or None.

    Raises:
        ValueError: `vectors` is not two-dimensional.
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.size == 0:
        return None
    if vectors.ndim != 2:
        raise ValueError(f"expected a (n, dim) array of vectors, got shape {vectors.shape}")
    mean = vectors.mean(axis=0)
    norm = float(np.linalg.norm(mean))
    return (mean / norm).astype(np.float32) if norm > 0 else mean


class ClipEmbedder:
    """Image embeddings from an open_clip model's image tower; constructor cheap, `load()` does the work once.

    Weights are always a local state-dict file (staged with `vidpipe models stage --open-clip`); nothing
    is ever downloaded. `random_weights=True` skips the weights and initialises the architecture randomly:
    for benchmarks and tests only, since a random ViT-B-32 costs exactly the compute of a trained one but
    its embeddings mean nothing.
    """

    def __init__(
        self,
        model_name: str,
        weights_path: Path | None,
        *,
        device: str = "auto",
        batch_size: int = 32,
        config_dir: Path | None = None,
        random_weights: bool = False,
    ):
        """Store parameters only; `load()` does the work.

        Args:
            model_name: open_clip architecture, e.g. "ViT-B-32", or the name of `<config_dir>/<name>.json`.
            weights_path: the staged state-dict file (ignored with `random_weights`).
            device: "auto", "cpu", "cuda" or "cuda:N"; resolved by `load()` in the process that runs the model.
            batch_size: most images per `encode_image` call.
            config_dir: folder that may hold `<model_name>.json`, a model config open_clip does not ship.
            random_weights: build the architecture with random weights instead of loading `weights_path`.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        self.model_name = model_name
        self.weights_path = Path(weights_path) if weights_path is not None else None
        self.requested_device = device
        self.batch_size = batch_size
        self.config_dir = Path(config_dir) if config_dir is not None else None
        self.random_weights = random_weights
        self.timings_ms: dict[str, float] = {"image_embed": 0.0}
        self.dim: int | None = None
        self.device: str | None = None
        self.dtype: str | None = None
        self._model = None
        self._preprocess = None
        self._torch_dtype = None

    @property
    def name(self) -> str:
        """Stable name recorded with every stored embedding (embeddings of different models never mix)."""
        return f"open_clip:{self.model_name}"

    @property
    def model(self):  # noqa: ANN201 - a torch module; torch is not imported at module level
        """The loaded open_clip model (None before `load()`)."""
        return self._model

    def load(self) -> None:
        """Build the model on its device once, offline.

        Raises:
            EmbedderUnavailable: weights missing or unloadable, or CUDA requested without a GPU.
        """
        if self._model is not None:
            return
        if not self.random_weights:
            problems = weights_problems(self.weights_path)
            if problems:
                raise EmbedderUnavailable(f"{self.name}: {'; '.join(problems)}; {STAGING_HINT}")
        # huggingface_hub reads this once, when open_clip first imports it: set it before that import.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            import open_clip
            import torch
        except ImportError as exc:
            raise EmbedderUnavailable(f"{self.name}: {exc}; install torch and open_clip_torch") from exc

        device = resolve_device(self.requested_device)
        self._register_config(open_clip)
        pretrained = None if self.random_weights else str(self.weights_path)
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                self.model_name,
                pretrained=pretrained,
                device=device,
                precision="fp16" if device.startswith("cuda") else "fp32",
            )
        except torch.OutOfMemoryError:
            raise
        except (RuntimeError, OSError, ValueError, KeyError, pickle.UnpicklingError) as exc:
            # A corrupt file, a checkpoint of another architecture or an unknown model name: restaging fixes it.
            raise EmbedderUnavailable(
                f"{self.name}: cannot build from {pretrained or 'random weights'}: {exc}; {STAGING_HINT}"
            ) from exc
        model.eval()
        self._torch_dtype = next(model.parameters()).dtype
        self.dtype = "float16" if self._torch_dtype == torch.float16 else "float32"
        self.dim = self._output_dim(open_clip, model)
        self.device = device
        self._preprocess = preprocess
        self._model = model

    def _register_config(self, open_clip) -> None:  # noqa: ANN001 - the open_clip module
        """Make `<config_dir>/<model_name>.json` known to open_clip (a custom or test architecture)."""
        if self.config_dir is None:
            return
        config = self.config_dir / f"{self.model_name}.json"
        # Register the one file, not the folder: other JSON files beside the weights are not model configs.
        if config.is_file():
            open_clip.add_model_config(config)

    def _output_dim(self, open_clip, model) -> int:  # noqa: ANN001 - the open_clip module and a torch module
        config = open_clip.get_model_config(self.model_name)
        if config and "embed_dim" in config:
            return int(config["embed_dim"])
        return int(model.visual.output_dim)

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Embed RGB uint8 images (H, W, 3) of any size, e.g. frames or face crops.

        Preprocessing runs on tensors on the model's device (see `pixels`), then `encode_image` runs
        in batches of at most `batch_size`. Adds the time taken to `timings_ms["image_embed"]`.

        Returns:
            float32 array (len(images), dim), every row of unit L2 norm.
        """
        self.load()
        import torch

        started = time.perf_counter()
        rows = []
        for start in range(0, len(images), self.batch_size):
            pixels = self.pixels(images[start : start + self.batch_size])
            with torch.inference_mode():
                features = self._model.encode_image(pixels)
            # Normalise in float32: fp16 features can lose the last bits of the norm.
            rows.append(torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy())
        elapsed_ms = (time.perf_counter() - started) * 1000
        # .get: callers reset the dict per clip (analysis assigns a fresh one), possibly without the key.
        self.timings_ms["image_embed"] = self.timings_ms.get("image_embed", 0.0) + elapsed_ms
        if not rows:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.concatenate(rows).astype(np.float32, copy=False)

    def pixels(self, images: Sequence[np.ndarray]):  # noqa: ANN201 - a torch tensor
        """The model's input batch (N, 3, S, S) in its dtype on its device, preprocessed as tensors.

        The model's own preprocessing, done on the device: the uint8 pixels are copied there once,
        images of one size are resized together (short side to S, bicubic with antialiasing, as
        open_clip's PIL transform), centre-cropped and normalised with the model's mean and std. A
        model whose preprocessing is not "shortest side + centre crop" goes through its PIL transform.
        """
        import torch

        cfg = _preprocess_cfg(self._model)
        if cfg is None:
            from PIL import Image

            batch = torch.stack([self._preprocess(Image.fromarray(_checked(image))) for image in images])
            return batch.to(self.device, dtype=self._torch_dtype)
        size = int(cfg["size"][0])
        mean = torch.tensor(cfg["mean"], device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(cfg["std"], device=self.device).view(1, 3, 1, 1)
        out: list = [None] * len(images)
        for positions in _by_shape(images).values():
            stacked = np.stack([_checked(images[i]) for i in positions])
            # Float on every device, so a CPU and a CUDA worker give the same pixels (torch's uint8
            # resize on the CPU is 10x cheaper, but up to 0.14 away from the float one on noisy images).
            batch = torch.from_numpy(stacked).to(self.device).permute(0, 3, 1, 2).float()
            batch = _center_crop(_resize_short_side(batch, size), size)
            batch = (batch / 255.0).clamp_(0, 1).sub_(mean).div_(std)
            for i, tensor in zip(positions, batch, strict=True):
                out[i] = tensor
        return torch.stack(out).to(dtype=self._torch_dtype)


def _preprocess_cfg(model) -> dict | None:  # noqa: ANN001 - an open_clip model
    """The model's preprocessing config when tensor preprocessing reproduces it, else None."""
    cfg = getattr(getattr(model, "visual", None), "preprocess_cfg", None)
    if not cfg or cfg.get("resize_mode", "shortest") != "shortest" or cfg.get("interpolation") != "bicubic":
        return None
    size = cfg.get("size")
    size = (size, size) if isinstance(size, int) else tuple(size or ())
    if len(size) != 2 or size[0] != size[1]:
        return None
    return {**cfg, "size": size}


def _by_shape(images: Sequence[np.ndarray]) -> dict[tuple, list[int]]:
    groups: dict[tuple, list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault(np.shape(image), []).append(i)
    return groups


def _resize_short_side(batch, size: int):  # noqa: ANN001, ANN202 - torch tensors
    """Torchvision's Resize(size) on (N, 3, H, W): the short side to `size`, the long one in proportion."""
    import torch

    h, w = batch.shape[-2:]
    short, long = (h, w) if h <= w else (w, h)
    new_long = int(size * long / short)
    new_h, new_w = (size, new_long) if h <= w else (new_long, size)
    return torch.nn.functional.interpolate(
        batch, size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False
    )


def _center_crop(batch, size: int):  # noqa: ANN001, ANN202 - torch tensors
    """Torchvision's CenterCrop(size) (the offset rounds as torchvision rounds it)."""
    h, w = batch.shape[-2:]
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return batch[..., top : top + size, left : left + size]


def _checked(image: np.ndarray) -> np.ndarray:
    """An RGB uint8 (H, W, 3) array ready for PIL, or ValueError (a wrong layout would embed silently wrong)."""
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 image (H, W, 3), got {array.dtype} {array.shape}")
    return np.ascontiguousarray(array)
