"""`vidpipe models`: which CV engines this host can run, and staging their weights with a verified checksum."""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import shutil
import sys
import tempfile
import urllib.parse
import urllib.request
import zipfile
from datetime import UTC, datetime
from pathlib import Path

from vidpipe_tasks.cli.common import settings_from
from vidpipe_tasks.settings import Settings

#: Provenance written beside every staged model.
PROVENANCE = "STAGED.json"
_CHUNK = 1 << 20


class StagingError(RuntimeError):
    """Staging refused; nothing in the model directory changed."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_folder(folder: Path) -> str:
    """A folder's checksum: sha256 over "relative-path sha256" lines of its files, sorted."""
    lines = [f"{p.relative_to(folder).as_posix()} {sha256_file(p)}\n" for p in sorted(folder.rglob("*")) if p.is_file()]
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def _fetch(source: str, workdir: Path) -> Path:
    """A local path as is; a URL (http, https, file) downloaded into `workdir` (an explicit ops action)."""
    parsed = urllib.parse.urlparse(source)
    if parsed.scheme in ("", "file"):
        path = Path(urllib.parse.unquote(parsed.path) if parsed.scheme == "file" else source).expanduser()
        if not path.exists():
            raise StagingError(f"{source}: no such file or folder")
        return path.resolve()
    if parsed.scheme not in ("http", "https"):
        raise StagingError(f"{source}: unsupported URL scheme {parsed.scheme!r} (use a path, file://, http(s)://)")
    target = workdir / (Path(parsed.path).name or "download")
    try:
        with urllib.request.urlopen(source, timeout=60) as response, target.open("wb") as out:  # noqa: S310
            shutil.copyfileobj(response, out, _CHUNK)
    except OSError as exc:
        raise StagingError(f"{source}: download failed: {exc}") from exc
    return target


def _verify(path: Path, expected: str) -> str:
    actual = sha256_folder(path) if path.is_dir() else sha256_file(path)
    if actual != expected.strip().lower():
        raise StagingError(f"checksum mismatch for {path.name}: expected {expected}, got {actual}; nothing staged")
    return actual


def _safe_extract(archive: Path, target: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        for member in zf.namelist():
            if not (target / member).resolve().is_relative_to(target.resolve()):
                raise StagingError(f"{archive.name}: member {member!r} would escape the target folder")
        zf.extractall(target)


def _onnx_folder(root: Path) -> Path:
    """The folder inside an unpacked pack that holds the .onnx files (zips often add a top folder)."""
    folders = sorted({p.parent for p in root.rglob("*.onnx")})
    if len(folders) != 1:
        raise StagingError(f"expected one folder of .onnx files in the pack, found {len(folders)}")
    return folders[0]


def _write_provenance(folder: Path, name: str, source: str, digest: str) -> None:
    record = {"model": name, "source": source, "sha256": digest, "staged_at": datetime.now(UTC).isoformat()}
    (folder / PROVENANCE).write_text(json.dumps(record, indent=2) + "\n")


def _replace_folder(new: Path, dest: Path) -> None:
    """Swap `new` into `dest` so a reader sees the old pack or the new one, never half of one."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    old = dest.with_name(f".{dest.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if dest.exists():
        os.replace(dest, old)
    os.replace(new, dest)
    if old.exists():
        shutil.rmtree(old)


def stage_insightface(settings: Settings, source: str, sha256: str) -> Path:
    """Install an insightface model pack (zip or folder, path or URL) as settings.insightface_dir.

    Returns:
        The installed pack folder.

    Raises:
        StagingError: missing source, bad checksum, or not a usable pack (nothing changed).
    """
    from gpu_worker.faces.insightface_engine import pack_problems  # pathlib-only check, no onnxruntime

    root = settings.models_dir / "insightface"
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".staging-") as tmp:
        work = Path(tmp)
        fetched = _fetch(source, work)
        digest = _verify(fetched, sha256)
        unpacked = work / "unpacked"
        if fetched.is_dir():
            shutil.copytree(fetched, unpacked)
        elif zipfile.is_zipfile(fetched):
            _safe_extract(fetched, unpacked)
        else:
            raise StagingError(f"{source}: neither a zip archive nor a folder")
        pack = _onnx_folder(unpacked)
        problems = pack_problems(pack)
        if problems:
            raise StagingError(f"{source}: not a usable insightface pack: {'; '.join(problems)}")
        _write_provenance(pack, settings.insightface_pack, source, digest)
        _replace_folder(pack, settings.insightface_dir)
    return settings.insightface_dir


def stage_open_clip(settings: Settings, source: str, sha256: str, config: Path | None = None) -> Path:
    """Install open_clip weights (a state-dict file) as settings.clip_weights_path.

    Args:
        settings: where to install (models_dir, clip_model, clip_weights).
        source: path or URL of the weights file.
        sha256: expected checksum of that file.
        config: optional open_clip model config JSON for an architecture open_clip does not ship.

    Returns:
        The installed weights path.
    """
    dest = settings.clip_weights_path
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".staging-") as tmp:
        fetched = _fetch(source, Path(tmp))
        if fetched.is_dir():
            raise StagingError(f"{source}: open_clip weights must be one file (a state dict), not a folder")
        digest = _verify(fetched, sha256)
        staged = Path(tmp) / dest.name
        shutil.copyfile(fetched, staged)
        if config is not None:
            json.loads(config.read_text())  # refuse a broken config before anything moves
            shutil.copyfile(config, dest.with_name(f"{settings.clip_model}.json"))
        os.replace(staged, dest)
    record = {"model": settings.clip_model, "source": source, "sha256": digest}
    record["staged_at"] = datetime.now(UTC).isoformat()
    clip_provenance(settings).write_text(json.dumps(record, indent=2) + "\n")
    return dest


def clip_provenance(settings: Settings) -> Path:
    weights = settings.clip_weights_path
    return weights.with_name(f"{weights.name}.{PROVENANCE}")


def _installed(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _provenance(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def models_status(settings: Settings) -> dict:
    """What each CV component needs and whether this host has it; cheap (no model or CUDA is loaded)."""
    from gpu_worker.choice import configuration_problems, embedder_problems, insightface_problems
    from gpu_worker.faces.dlib_engine import dlib_problems as find_dlib_problems

    dlib_problems = find_dlib_problems()
    insight = insightface_problems(settings)
    clip = embedder_problems(settings)
    face_auto = "insightface" if not insight else "dlib-offline"
    return {
        "models_dir": str(settings.models_dir),
        "configured": {"face_engine": settings.face_engine, "embedder": settings.embedder},
        "auto_would_choose": {"face_engine": face_auto, "embedder": None if clip else "open_clip"},
        "engines": {
            "dlib-offline": {"usable": not dlib_problems, "problems": dlib_problems},
            "insightface": {
                "usable": not insight,
                "problems": insight,
                "pack": str(settings.insightface_dir),
                "staged": _provenance(settings.insightface_dir / PROVENANCE),
                "onnxruntime_gpu": _installed("onnxruntime-gpu"),
            },
            "open_clip": {
                "usable": not clip,
                "problems": clip,
                "model": settings.clip_model,
                "weights": str(settings.clip_weights_path),
                "staged": _provenance(clip_provenance(settings)),
            },
        },
        "worker_would_start": not configuration_problems(settings),
        "start_problems": configuration_problems(settings),
    }


def render_status(status: dict) -> str:
    lines = [f"model directory: {status['models_dir']}"]
    for name, info in status["engines"].items():
        lines.append(f"  {name:13} {'usable' if info['usable'] else 'unavailable'}")
        lines += [f"      - {p}" for p in info["problems"]]
        if info.get("staged"):
            lines.append(f"      staged from {info['staged']['source']} (sha256 {info['staged']['sha256'][:12]}…)")
    conf, auto = status["configured"], status["auto_would_choose"]
    lines.append(f"configured: face engine {conf['face_engine']}, embedder {conf['embedder']}")
    lines.append(f"auto would choose: face engine {auto['face_engine']}, embedder {auto['embedder'] or 'none'}")
    if status["start_problems"]:
        lines.append("a CV worker would NOT start:")
        lines += [f"  - {p}" for p in status["start_problems"]]
    return "\n".join(lines)


def cmd_models(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    from dataclasses import replace

    if args.model:
        settings = replace(settings, clip_model=args.model)
    if args.action == "status":
        status = models_status(settings)
        print(json.dumps(status, indent=2) if args.json else render_status(status))
        return 0
    sources = [(kind, src) for kind, src in (("insightface", args.insightface), ("open_clip", args.open_clip)) if src]
    if not sources:
        print("vidpipe models stage: give --insightface SRC and/or --open-clip SRC", file=sys.stderr)
        return 2
    if len(args.sha256 or []) != len(sources):
        print("vidpipe models stage: give one --sha256 per source (insightface first)", file=sys.stderr)
        return 2
    try:
        for (kind, src), digest in zip(sources, args.sha256, strict=True):
            if kind == "insightface":
                where = stage_insightface(settings, src, digest)
            else:
                where = stage_open_clip(settings, src, digest, Path(args.config) if args.config else None)
            print(f"{kind} staged at {where}")
    except StagingError as exc:
        print(f"vidpipe models stage: {exc}", file=sys.stderr)
        return 1
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    models = sub.add_parser("models", help="CV engines usable on this host; stage weights for offline GPU nodes")
    models.add_argument("action", choices=["status", "stage"])
    models.add_argument("--json", action="store_true", help="status: machine-readable")
    models.add_argument("--insightface", metavar="SRC", help="stage: model pack zip or folder, path or URL")
    models.add_argument("--open-clip", metavar="SRC", help="stage: open_clip state-dict file, path or URL")
    models.add_argument(
        "--model", help="stage: open_clip architecture the weights are for (default VIDPIPE_CLIP_MODEL)"
    )
    models.add_argument("--config", help="stage: open_clip model config JSON for a custom architecture")
    models.add_argument("--sha256", action="append", help="expected checksum of each source (required)")
    models.set_defaults(func=cmd_models)
