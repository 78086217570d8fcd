"""`vidpipe assets`: list a registry's assets with any problem found, and remove a bad one."""

from __future__ import annotations

import argparse
import json
import sys

from sqlalchemy import func, select

from vidpipe_tasks import media
from vidpipe_tasks.cli.common import existing_installation
from vidpipe_tasks.db.models import Asset, AssetAppearance, Manifest
from vidpipe_tasks.db.session import session_scope
from vidpipe_tasks.payloads import FACE_EMBEDDING_DIMS
from vidpipe_tasks.settings import Settings


class AssetInUse(RuntimeError):
    """The asset has appearances; `remove --force` removes them with it."""


def asset_problem(settings: Settings, asset: Asset) -> str | None:
    """Why an asset cannot be trusted (it is then skipped by generation and analysis), or None."""
    if asset.reference_image is not None and not media.usable_file(settings.media_root, asset.reference_image):
        return f"reference {asset.reference_image!r} is not a file inside the media root"
    if asset.face_embedding is not None:
        dim = FACE_EMBEDDING_DIMS.get(asset.face_engine or "")
        if dim is None:
            return f"face embedding of unknown engine {asset.face_engine!r}"
        if len(asset.face_embedding) != dim:
            return f"face embedding has {len(asset.face_embedding)} values, {asset.face_engine} has {dim}"
    return None


def list_assets(settings: Settings, manifest: str | None = None) -> list[dict]:
    """Every asset (of one manifest, if named), oldest first, with its appearance count and any problem."""
    with session_scope(settings.database_url) as s:
        stmt = select(Asset, Manifest.name).join(Manifest, Asset.manifest_id == Manifest.id).order_by(Asset.id)
        if manifest is not None:
            stmt = stmt.where(Manifest.name == manifest)
        counts = dict(
            s.execute(select(AssetAppearance.asset_id, func.count()).group_by(AssetAppearance.asset_id)).all()
        )
        return [
            {
                "asset_id": a.id,
                "manifest": name,
                "tag": a.tag,
                "type": a.asset_type.value,
                "source": a.source.value,
                "character": a.character,
                "reference_image": a.reference_image,
                "appearances": counts.get(a.id, 0),
                "problem": asset_problem(settings, a),
            }
            for a, name in s.execute(stmt).all()
        ]


def remove_asset(settings: Settings, asset_id: int, force: bool = False) -> str:
    """Delete an asset from its registry (its files stay); with `force`, also one that has appearances.

    Raises:
        LookupError: no such asset.
        AssetInUse: it has appearances and `force` is not set.

    """
    with session_scope(settings.database_url) as s:
        asset = s.get(Asset, asset_id)
        if asset is None:
            raise LookupError(f"no asset {asset_id}")
        used = s.scalar(select(func.count()).select_from(AssetAppearance).where(AssetAppearance.asset_id == asset_id))
        if used and not force:
            raise AssetInUse(f"asset {asset_id} ({asset.tag}) appears in {used} scene(s); use --force to remove it")
        s.execute(AssetAppearance.__table__.delete().where(AssetAppearance.asset_id == asset_id))
        s.delete(asset)
        return f"asset {asset_id} ({asset.tag}) removed" + (f" with {used} appearance(s)" if used else "")


def render_assets(rows: list[dict]) -> str:
    """The `vidpipe assets list` table."""
    if not rows:
        return "no assets"
    lines = [f"{'id':>5}  {'manifest':<20} {'tag':<20} {'type':<10} {'source':<13} {'seen':>4}  problem"]
    for r in rows:
        lines.append(
            f"{r['asset_id']:>5}  {r['manifest'][:20]:<20} {r['tag'][:20]:<20} {r['type']:<10} {r['source']:<13} "
            f"{r['appearances']:>4}  {r['problem'] or '-'}"
        )
    return "\n".join(lines)


def cmd_assets(args: argparse.Namespace) -> int:
    settings = existing_installation(args)

    if args.action == "list":
        rows = list_assets(settings, args.manifest)
        if args.problems:
            rows = [r for r in rows if r["problem"]]
        print(json.dumps(rows, indent=2) if args.json else render_assets(rows))
        return 0
    if not args.assets:
        print("vidpipe assets remove: name the asset id(s) to remove", file=sys.stderr)
        return 2
    code = 0
    for asset_id in args.assets:
        try:
            print(remove_asset(settings, asset_id, force=args.force))
        except (LookupError, AssetInUse) as exc:
            print(str(exc), file=sys.stderr)
            code = 1
    return code


def add_parser(sub: argparse._SubParsersAction) -> None:
    assets = sub.add_parser("assets", help="list registry assets (with problems found) or remove a bad one")
    assets.add_argument("action", choices=["list", "remove"])
    assets.add_argument("assets", type=int, nargs="*", metavar="ASSET", help="remove: asset ids")
    assets.add_argument("--manifest", help="list: only this manifest's assets")
    assets.add_argument("--problems", action="store_true", help="list: only assets with a problem")
    assets.add_argument("--json", action="store_true", help="list: machine-readable")
    assets.add_argument("--force", action="store_true", help="remove: also an asset with appearances")
    assets.set_defaults(func=cmd_assets)
