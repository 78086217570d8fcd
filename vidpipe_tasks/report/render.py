"""The report as one self-contained HTML page: inline CSS, inline SVG, images as data: URIs, no script, no network."""

from __future__ import annotations

from collections.abc import Callable
from html import escape
from statistics import mean

from vidpipe_tasks.report.data import Box, GrowthPoint, Picture, ProjectData, SceneData

#: Frame index -> data: URI of a scene's sampled frame (None when the clip cannot be read, with why).
FrameSource = Callable[[SceneData], tuple[dict[int, str], str | None]]
#: Media-relative path -> data: URI (None when the file is missing or refused).
FileSource = Callable[[str], str | None]

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0 auto;max-width:1200px;padding:16px;color:#1d2330;background:#f6f7f9}
h1{margin:0 0 8px}h2{margin:0 0 4px;font-size:18px}h3{font-size:13px;margin:12px 0 4px;color:#556}
section{background:#fff;border:1px solid #dde;border-radius:8px;padding:12px 16px;margin:12px 0}
.meta{color:#556;margin:0 0 8px}.degraded{background:#fff1e6;border-left:4px solid #e8590c;padding:6px 10px}
.failed{background:#ffe3e3;border-left:4px solid #c92a2a;padding:6px 10px}
.frames,.thumbs{display:flex;flex-wrap:wrap;gap:8px}
figure{margin:0;font-size:12px;color:#556}figure img{display:block;border-radius:4px}
.frame-wrap{position:relative;line-height:0}
.box{position:absolute;border:2px solid;box-sizing:border-box;line-height:1.2}
.box-label{position:absolute;left:-2px;top:-17px;white-space:nowrap;font-size:11px;color:#fff;padding:0 3px}
.box.match,.box.rematch{border-color:#2f9e44}.match .box-label,.rematch .box-label{background:#2f9e44}
.box.new,.box.candidate{border-color:#1c7ed6}.new .box-label,.candidate .box-label{background:#1c7ed6}
.box.unmatched{border-color:#e03131}.unmatched .box-label{background:#e03131}
table{border-collapse:collapse;font-size:13px}td,th{padding:2px 10px 2px 0;text-align:left}
.bar{display:flex;align-items:center;gap:8px;margin:2px 0}.bar .name{width:90px}
.track{display:inline-block;width:240px;height:10px;background:#e9ecef;border-radius:5px;overflow:hidden}
.fill{display:block;height:100%;background:#5c7cfa}.bar.missing .value{color:#868e96;font-style:italic}
.legend span{margin-right:12px}.swatch{display:inline-block;width:10px;height:10px;margin-right:4px}
.cols{display:flex;flex-wrap:wrap;gap:32px}
"""


def _fmt(value: float | None, digits: int = 2) -> str:
    return "missing" if value is None else f"{value:.{digits}f}"


def _sim(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _box(box: Box, size: tuple[int, int]) -> str:
    w, h = size
    x1, y1, x2, y2 = box.bbox
    style = (
        f"left:{100 * x1 / w:.2f}%;top:{100 * y1 / h:.2f}%;"
        f"width:{100 * (x2 - x1) / w:.2f}%;height:{100 * (y2 - y1) / h:.2f}%"
    )
    attrs = f' data-asset="{escape(box.asset_tag)}"' if box.asset_tag else ""
    if box.similarity is not None:
        attrs += f' data-similarity="{box.similarity:.3f}"'
    return (
        f'<div class="box {box.kind}" data-kind="{box.kind}"{attrs} style="{style}">'
        f'<span class="box-label">{escape(box.label)}</span></div>'
    )


def _frames(scene: SceneData, frames: dict[int, str], problem: str | None) -> str:
    if problem:
        return f'<p class="degraded">frames unavailable: {escape(problem)}</p>'
    if not scene.frame_indices or scene.frame_size is None:
        return '<p class="meta">no sampled frames recorded</p>'
    figures = []
    for index in scene.frame_indices:
        if index not in frames:
            continue
        boxes = "".join(_box(b, scene.frame_size) for b in scene.boxes if b.frame == index)
        figures.append(
            f'<figure class="frame" data-frame="{index}"><div class="frame-wrap">'
            f'<img src="{frames[index]}" alt="scene {scene.index} frame {index}">{boxes}</div>'
            f"<figcaption>frame {index}</figcaption></figure>"
        )
    return f'<div class="frames">{"".join(figures)}</div>'


def _thumbs(pictures: list[Picture], files: FileSource, css: str, empty: str) -> str:
    items = []
    for pic in pictures:
        uri = files(pic.path)
        img = f'<img src="{uri}" alt="{escape(pic.tag)}">' if uri else '<span class="meta">(image missing)</span>'
        items.append(
            f'<figure class="{css}" data-asset="{escape(pic.tag)}">{img}'
            f"<figcaption>{escape(pic.caption)}</figcaption></figure>"
        )
    return f'<div class="thumbs">{"".join(items)}</div>' if items else f'<p class="meta">{empty}</p>'


def _recognitions(scene: SceneData) -> str:
    if not scene.recognitions:
        return '<p class="meta">no registered asset seen</p>'
    rows = "".join(
        f'<tr class="recognition" data-asset="{escape(r.asset_tag)}" data-kind="{r.kind}">'
        f'<td class="asset">{escape(r.asset_tag)}</td><td>{r.kind}</td>'
        f'<td class="similarity">{_sim(r.similarity)}</td><td>{r.face_count}</td></tr>'
        for r in scene.recognitions
    )
    head = "<tr><th>asset</th><th>kind</th><th>similarity</th><th>faces</th></tr>"
    return f'<table class="recognitions">{head}{rows}</table>'


def _bars(scene: SceneData) -> str:
    bars = [
        f'<div class="bar{" missing" if v is None else ""}" data-component="{escape(name)}">'
        f'<span class="name">{escape(name)}</span><span class="track">'
        f'<span class="fill" style="width:{0 if v is None else max(0.0, min(1.0, v)) * 100:.1f}%"></span></span>'
        f'<span class="value">{_fmt(v)}</span></div>'
        for name, v in scene.components.items()
    ]
    score = f'<p class="score">continuity score: <b>{_fmt(scene.continuity_score)}</b></p>'
    return score + "".join(bars)


def _timings(scene: SceneData) -> str:
    rows = [f"<tr><td>{escape(k)} task</td><td>{v:.2f} s</td></tr>" for k, v in scene.task_seconds.items()]
    rows += [f"<tr><td>analysis: {escape(k)}</td><td>{v:.1f} ms</td></tr>" for k, v in scene.analysis_ms.items()]
    return f'<table class="timings">{"".join(rows)}</table>' if rows else '<p class="meta">no timings recorded</p>'


def _attempts(scene: SceneData) -> str:
    """The quality attempts of a scene (docs/quality.md); nothing when the project's gate is off."""
    if not scene.attempts:
        return ""
    head = "<tr><th>attempt</th><th>round</th><th>seed</th><th>state</th><th>identity</th><th>adherence</th>"
    head += "<th>score</th><th>gate</th><th>cost</th><th></th></tr>"
    gate = {True: "passed", False: "below", None: "-"}
    rows = "".join(
        f'<tr class="attempt{" kept" if a.kept else ""}" data-attempt="{a.attempt}" data-kept="{int(a.kept)}">'
        f"<td>{a.attempt}</td><td>{a.round}</td><td>{a.seed}</td><td>{escape(a.state)}</td>"
        f'<td>{_fmt(a.identity)}</td><td>{_fmt(a.adherence)}</td><td class="score">{_fmt(a.score)}</td>'
        f"<td>{gate[a.passed_gate]}</td><td>${a.cost_usd:.2f}</td>"
        f"<td>{'kept' if a.kept else escape(a.error or '')}</td></tr>"
        for a in scene.attempts
    )
    return f'<h3>Attempts</h3><table class="attempts">{head}{rows}</table>'


def _scene(scene: SceneData, frames: FrameSource, files: FileSource) -> str:
    uris, problem = frames(scene)
    stages = ", ".join(f"{k} {v}" for k, v in scene.stages.items())
    notes = ""
    if scene.degraded_reason:
        notes += f'<p class="degraded">degraded: {escape(scene.degraded_reason)}</p>'
    if scene.failure_reason:
        notes += f'<p class="failed">failed: {escape(scene.failure_reason)}</p>'
    notes += "".join(f'<p class="meta">warning: {escape(w)}</p>' for w in scene.warnings)
    return (
        f'<section class="scene" id="scene-{scene.index}" data-scene="{scene.index}">'
        f'<h2 class="scene-title">Scene {scene.index}: {escape(scene.description)}</h2>'
        f'<p class="meta">location: {escape(scene.location or "-")} · characters: '
        f"{escape(', '.join(scene.characters) or '-')} · {stages}"
        f"{' · engine ' + escape(scene.engine) if scene.engine else ''}</p>{notes}"
        f"<h3>{'Sampled frames' if scene.analysed else 'Frames (not analysed)'}</h3>{_frames(scene, uris, problem)}"
        f'<div class="cols"><div><h3>References used</h3>'
        f"{_thumbs(scene.references, files, 'reference', 'no reference used')}</div>"
        f"<div><h3>New assets</h3>{_thumbs(scene.new_assets, files, 'new-asset', 'none')}</div>"
        f"<div><h3>Recognised</h3>{_recognitions(scene)}</div></div>"
        f'<div class="cols"><div class="continuity"><h3>Continuity</h3>{_bars(scene)}</div>'
        f"<div><h3>Timings</h3>{_timings(scene)}</div></div>{_attempts(scene)}</section>"
    )


def _growth(points: list[GrowthPoint]) -> str:
    if not points:
        return '<p class="meta">no scene registered yet</p>'
    top, bar_w, gap, height = max(p.total for p in points) or 1, 56, 16, 140
    bars = []
    for i, p in enumerate(points):
        x, h = i * (bar_w + gap), round((height - 30) * p.total / top)
        bars.append(
            f'<g class="growth-point" data-label="{escape(p.label)}" data-total="{p.total}">'
            f'<rect x="{x}" y="{height - 16 - h}" width="{bar_w}" height="{h}" fill="#74c0fc"></rect>'
            f'<text x="{x + bar_w / 2}" y="{height - 20 - h}" text-anchor="middle" font-size="12">{p.total}</text>'
            f'<text x="{x + bar_w / 2}" y="{height - 2}" text-anchor="middle" font-size="11">'
            f"{escape(p.label)}</text></g>"
        )
    width = len(points) * (bar_w + gap)
    added = (
        "".join(f"<li>{escape(p.label)}: {escape(', '.join(p.added))}</li>" for p in points if p.added)
        or "<li>no new assets</li>"
    )
    return (
        f'<svg class="growth" width="{width}" height="{height}" role="img" aria-label="registry size per scene">'
        f"{''.join(bars)}</svg><ul>{added}</ul>"
    )


def _consistency(project: ProjectData) -> str:
    """The cross-scene face consistency and its characters, e.g. "0.88 (wren 0.89 in scenes 2, 3, 4)"."""
    if project.face_consistency is None:
        return "missing"
    per = "; ".join(
        f"{tag} {_fmt(c.get('score'))} in scenes {', '.join(map(str, c.get('scenes', [])))}"
        for tag, c in project.face_consistency_characters.items()
    )
    return f"{_fmt(project.face_consistency)}" + (f" ({per})" if per else "")


def _summary(project: ProjectData) -> str:
    scenes = project.scenes
    scores = [s.continuity_score for s in scenes if s.continuity_score is not None]
    recognised = sorted({r.asset_tag for s in scenes for r in s.recognitions})
    new = [t.tag for s in scenes for t in s.new_assets]
    seconds = sum(sum(s.task_seconds.values()) for s in scenes)
    rows = {
        "project": f"{project.project_id}",
        "status": project.status,
        "manifest": project.manifest or "none (analysis skipped)",
        "scenes": str(len(scenes)),
        "degraded scenes": ", ".join(str(s.index) for s in scenes if s.degraded_reason) or "none",
        "mean continuity": _fmt(mean(scores)) if scores else "missing",
        "face consistency": _consistency(project),
        "new assets": ", ".join(new) or "none",
        "assets recognised": ", ".join(recognised) or "none",
        "task time": f"{seconds:.1f} s",
    }
    body = "".join(f'<tr data-key="{escape(k)}"><th>{escape(k)}</th><td>{escape(v)}</td></tr>' for k, v in rows.items())
    return f'<table class="summary">{body}</table>'


_LEGEND = (
    '<p class="legend"><span><i class="swatch" style="background:#2f9e44"></i>matched asset + similarity</span>'
    '<span><i class="swatch" style="background:#1c7ed6"></i>new asset / candidate</span>'
    '<span><i class="swatch" style="background:#e03131"></i>unmatched</span></p>'
)


def render_html(project: ProjectData, frames: FrameSource, files: FileSource) -> str:
    """The whole page; `frames` and `files` supply the inlined images."""
    title = escape(project.title)
    scenes = "".join(_scene(s, frames, files) for s in project.scenes)
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>vidpipe report: {title}</title>'
        f'<meta name="viewport" content="width=device-width"><link rel="icon" href="data:,">'
        f"<style>{_CSS}</style></head><body>"
        f'<h1 id="title">{title}</h1><section id="summary"><h2>Project summary</h2>{_summary(project)}</section>'
        f'<section id="growth"><h2>Registry growth</h2>{_growth(project.growth)}</section>'
        f"{_LEGEND}{scenes}</body></html>\n"
    )
