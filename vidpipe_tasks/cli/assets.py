"""`vidpipe assets`: list, show, bind, rename, merge, reject and remove registry assets (rules in docs/registry.md)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from vidpipe_tasks.cli.common import EXIT_FAILED, existing_installation, home_option
from vidpipe_tasks.curation import (
    CurationRefused,
    bind_asset,
    find_asset,
    list_assets,
    merge_assets,
    reject_asset,
    remove_asset,
    rename_asset,
    show_asset,
)
from vidpipe_tasks.settings import Settings


def _binding_text(row: dict) -> str:
    if row["state"] == "unbound":
        candidates = row.get("candidates") or []
        return "unbound: " + ("could be " + " or ".join(candidates) if candidates else "no declared character fits")
    if row["state"] == "bound":
        rule = (row.get("binding") or {}).get("rule", "?")
        return f"bound to {row['character']} ({rule})"
    return row["state"] if row["type"] == "CHARACTER" else "-"


def render_assets(rows: list[dict]) -> str:
    """The `vidpipe assets list` table."""
    if not rows:
        return "no assets"
    header = f"{'id':>5}  {'manifest':<20} {'tag':<20} {'type':<10} {'source':<13} {'seen':>4}  {'binding':<34} problem"
    lines = [header]
    for r in rows:
        lines.append(
            f"{r['asset_id']:>5}  {r['manifest'][:20]:<20} {r['tag'][:20]:<20} {r['type']:<10} {r['source']:<13} "
            f"{r['appearances']:>4}  {_binding_text(r)[:34]:<34} {r['problem'] or '-'}"
        )
    return "\n".join(lines)


def render_asset(info: dict) -> str:
    """The `vidpipe assets show` text."""
    lines = [
        f"asset {info['asset_id']} {info['tag']} ({info['name']}) in manifest {info['manifest']}",
        f"  {info['type'].lower()}, {info['source'].lower()}; {_binding_text(info)}",
        f"  reference: {info['reference_image'] or '-'}" + (f"  problem: {info['problem']}" if info["problem"] else ""),
    ]
    origin = info["origin"]
    if origin["project_id"] is not None:
        lines.append(f"  extracted from project {origin['project_id']} scene {origin['scene_index']}")
    for a in info["appearances"]:
        sim = "-" if a["similarity"] is None else f"{a['similarity']:.2f}"
        lines.append(f"  seen: project {a['project_id']} scene {a['scene_index']} ({a['kind']}, similarity {sim})")
    for u in info["used_as_reference"]:
        lines.append(f"  reference of {u['character']} in project {u['project_id']} scene {u['scene_index']}")
    return "\n".join(lines)


def _events(events: list[dict]) -> str:
    return "\n".join(
        f"asset {e['asset_id']} ({e['asset_tag']}) bound to {e['character']} ({e['rule']})" for e in events
    )


def _run(args: argparse.Namespace, settings: Settings) -> str:
    find: Callable[[str], int] = lambda ref: find_asset(settings, ref, args.manifest)  # noqa: E731
    if args.action == "show":
        info = show_asset(settings, args.asset, args.manifest)
        return json.dumps(info, indent=2) if args.json else render_asset(info)
    if args.action == "bind":
        return _events(bind_asset(settings, find(args.asset), args.character))
    if args.action == "rename":
        return rename_asset(settings, find(args.asset), args.tag, args.name)
    if args.action == "merge":
        return merge_assets(settings, find(args.asset), find(args.into))
    if args.action == "reject":
        return reject_asset(settings, find(args.asset), args.reason)
    raise AssertionError(args.action)


def cmd_assets(args: argparse.Namespace) -> int:
    settings = existing_installation(args)
    if args.action == "list":
        rows = list_assets(settings, args.manifest)
        if args.problems:
            rows = [r for r in rows if r["problem"]]
        if args.unbound:
            rows = [r for r in rows if r["state"] == "unbound"]
        print(json.dumps(rows, indent=2) if args.json else render_assets(rows))
        return 0
    if args.action == "remove":
        code = 0
        for ref in args.assets:
            try:
                print(remove_asset(settings, find_asset(settings, ref, args.manifest), force=args.force))
            except (LookupError, CurationRefused) as exc:
                print(f"vidpipe assets: {exc}", file=sys.stderr)
                code = EXIT_FAILED
        return code
    try:
        print(_run(args, settings))
    except (LookupError, CurationRefused) as exc:
        print(f"vidpipe assets: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    assets = sub.add_parser(
        "assets", help="list, show and curate registry assets (bind, rename, merge, reject, remove)"
    )
    actions = assets.add_subparsers(dest="action", required=True, metavar="ACTION")
    manifest = argparse.ArgumentParser(add_help=False)
    manifest.add_argument("--manifest", help="the manifest (to name assets by tag, or to list one manifest's)")
    home_option(manifest)
    listing = actions.add_parser("list", parents=[manifest], help="assets with appearances, binding and problems")
    listing.add_argument("--problems", action="store_true", help="only assets with a problem")
    listing.add_argument("--unbound", action="store_true", help="only extracted faces not bound to a character")
    listing.add_argument("--json", action="store_true", help="machine-readable")
    show = actions.add_parser("show", parents=[manifest], help="one asset: appearances, references, binding")
    show.add_argument("asset", metavar="ASSET", help="asset id or tag")
    show.add_argument("--json", action="store_true", help="machine-readable")
    bind = actions.add_parser("bind", parents=[manifest], help="bind an extracted face to a character")
    bind.add_argument("asset", metavar="ASSET", help="asset id or tag")
    bind.add_argument("character", metavar="CHARACTER", help="a manifest character or the project's own")
    rename = actions.add_parser("rename", parents=[manifest], help="give an asset a new tag (and name)")
    rename.add_argument("asset", metavar="ASSET", help="asset id or tag")
    rename.add_argument("tag", metavar="NEW_TAG")
    rename.add_argument("--name", help="new display name")
    merge = actions.add_parser("merge", parents=[manifest], help="fold ASSET into INTO, keeping its appearances")
    merge.add_argument("asset", metavar="ASSET", help="asset id or tag (goes away)")
    merge.add_argument("into", metavar="INTO", help="asset id or tag (kept)")
    reject = actions.add_parser("reject", parents=[manifest], help="remove a face and never extract it again")
    reject.add_argument("asset", metavar="ASSET", help="asset id or tag")
    reject.add_argument("--reason", default="", help="recorded with the rejected face")
    remove = actions.add_parser("remove", parents=[manifest], help="delete assets (refused if in use)")
    remove.add_argument("assets", nargs="+", metavar="ASSET", help="asset ids or tags")
    remove.add_argument("--force", action="store_true", help="also an asset with appearances (they go with it)")
    assets.set_defaults(func=cmd_assets)
