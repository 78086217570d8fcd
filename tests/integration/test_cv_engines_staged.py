"""With models staged, `auto` takes insightface and open_clip in real CV workers, and visual continuity flows."""

from __future__ import annotations

from dataclasses import replace

from sqlalchemy import select

from tests.conftest import DATA, make_settings
from tests.helpers import run_projects_to_the_end
from tests.tiny_clip import write_tiny_clip
from tests.tiny_models import build_tiny_pack
from vidpipe_tasks.db.models import Asset, AssetSource, Scene, SceneManifest
from vidpipe_tasks.db.session import session_scope
from vidpipe_tasks.storyboard import load_storyboard
from vidpipe_tasks.workflow import create_project


def test_auto_uses_the_staged_tiny_models_end_to_end_and_records_visual_continuity(tmp_path) -> None:
    base = make_settings(tmp_path / "work")
    build_tiny_pack(base.insightface_dir)
    name, _, weights = write_tiny_clip(base.models_dir / "open_clip")
    settings = replace(base, clip_model=name, clip_weights=str(weights))
    board = DATA / "staged_models.yaml"
    project = create_project(settings, board, load_storyboard(board))
    logs = run_projects_to_the_end(settings, [project])
    cv_log = (logs / "cv-cpu0.log").read_text()
    assert "face engine insightface (auto: insightface pack found" in cv_log
    assert f"image embedder open_clip:{name}" in cv_log
    with session_scope(settings.database_url) as s:
        rows = s.execute(
            select(Scene.scene_index, SceneManifest)
            .join(SceneManifest, SceneManifest.scene_id == Scene.id)
            .where(Scene.project_id == project)
            .order_by(Scene.scene_index)
        ).all()
        assert [i for i, _ in rows] == [1, 2]
        for index, sm in rows:
            engine = sm.cv_analysis_json["engine"]
            assert engine["face"] == "insightface" and engine["metric"] == "cosine"
            assert engine["embedder"] == f"open_clip:{name}" and engine["embedder_choice"].startswith("open_clip")
            assert len(sm.visual_embedding) == 32 and sm.visual_embedder == f"open_clip:{name}"
            visual = sm.cv_analysis_json["continuity"]["components"]["visual"]
            assert (visual is None) if index == 1 else (0.0 <= visual <= 1.0), (index, visual)
        extracted = list(s.scalars(select(Asset).where(Asset.source == AssetSource.CLIP_EXTRACT)))
        assert all(len(a.image_embedding) == 32 and a.image_embedder == f"open_clip:{name}" for a in extracted)
        assert all(a.face_engine == "insightface" for a in extracted)
