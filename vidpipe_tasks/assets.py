"""`vidpipe assets`: list a registry's assets with any problem found, and remove a bad one."""

from __future__ import annotations

from sqlalchemy import func, select

from vidpipe_tasks import media
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
