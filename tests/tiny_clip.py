"""A tiny random-weights open_clip model made for tests: good for plumbing, not accuracy."""

from __future__ import annotations

import json
import os
from pathlib import Path

TINY_CLIP_NAME = "vidpipe-tiny-test"
#: Length of the tiny model's image embeddings.
TINY_CLIP_DIM = 32
#: open_clip's config loader only registers a JSON file with all three of embed_dim, vision_cfg and text_cfg.
TINY_CLIP_CONFIG = {
    "embed_dim": TINY_CLIP_DIM,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
}


def write_tiny_clip(folder: Path, *, seed: int = 0) -> tuple[str, Path, Path]:
    """Write the tiny model's config and a seeded random state dict into `folder`, as staging would.

    The layout matches a staged custom architecture: `<name>.json` beside `<name>.pt`, so the folder is
    both the embedder's `config_dir` and the home of its weights.

    Returns:
        (model_name, config_dir, weights_path).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before open_clip imports huggingface_hub
    import open_clip
    import torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / f"{TINY_CLIP_NAME}.json"
    config.write_text(json.dumps(TINY_CLIP_CONFIG, indent=2) + "\n")
    open_clip.add_model_config(config)
    # A private RNG stream: the same weights every run, and no change to the seed other tests see.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.create_model(TINY_CLIP_NAME, pretrained=None)
    weights = folder / f"{TINY_CLIP_NAME}.pt"
    torch.save(model.state_dict(), weights)
    return TINY_CLIP_NAME, folder, weights
