"""Which generator renders a project's scenes, with what budget, and how a scene's clip is obtained."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vidpipe_tasks.generators.base import ClipInfo, ClipRequest
from vidpipe_tasks.settings import Settings

#: Generators that take a start image (first-frame chaining applies to them only).
START_IMAGE_GENERATORS = ("comfyui", "veo")


@dataclass(frozen=True)
class GenerationPlan:
    """A project's generation choices, read from its storyboard with the settings as defaults."""

    generator: str
    budget_usd: float | None = None
    chain_first_frame: bool = False
    negative_prompt: str = ""

    @property
    def is_remote(self) -> bool:
        from vidpipe_tasks.generators import REMOTE_GENERATORS

        return self.generator in REMOTE_GENERATORS

    @property
    def chains_frames(self) -> bool:
        return self.chain_first_frame and self.generator in START_IMAGE_GENERATORS


def plan_for(settings: Settings, storyboard: dict) -> GenerationPlan:
    """The plan of a project from its stored storyboard JSON."""
    return GenerationPlan(
        generator=storyboard.get("generator") or settings.generator,
        budget_usd=storyboard.get("budget_usd"),
        chain_first_frame=bool(storyboard.get("chain_first_frame")),
        negative_prompt=storyboard.get("negative_prompt") or "",
    )


def render(settings: Settings, plan: GenerationPlan, request: ClipRequest) -> ClipInfo:
    """Produce the scene's clip at request.output_path.

    A local generator renders it now. A remote one goes through its durable provider job and may raise
    JobPending (poll again later), TransientError or PermanentStageError instead of returning.
    """
    from vidpipe_tasks.generators import get_generator, remote_adapter

    if not plan.is_remote:
        return get_generator(plan.generator, settings).generate(request)
    from vidpipe_tasks.generators.remote import RemoteGenerator

    adapter = remote_adapter(settings, plan.generator)
    # A project may name a generator this worker was not started for: refuse it for good, not retry it.
    adapter.validate()
    return RemoteGenerator(settings, adapter, plan.budget_usd).generate(request)


def save_last_frame(clip: Path, dest: Path) -> Path:
    """Write a clip's last frame as PNG (atomically) for the next scene's first frame; returns dest."""
    import av

    if dest.is_file():
        return dest
    last = None
    with av.open(str(clip)) as container:
        for frame in container.decode(video=0):
            last = frame
    if last is None:
        raise ValueError(f"{clip} has no frames")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part")
    last.to_image().save(tmp, format="PNG")
    tmp.replace(dest)
    return dest


def configured_generators(settings: Settings) -> list[str]:
    """The default generator plus every remote one that has configuration (a worker must be able to run them)."""
    names = [settings.generator]
    if settings.comfyui_servers and "comfyui" not in names:
        names.append("comfyui")
    if settings.veo_api_key and "veo" not in names:
        names.append("veo")
    return names


def generation_problems(settings: Settings, boards: list[tuple[str, dict]]) -> list[tuple[str, str, str]]:
    """(source, field, reason) for every project whose generator cannot run with these settings.

    Args:
        settings: the installation.
        boards: (source, storyboard JSON) of each project about to be submitted.

    """
    from vidpipe_tasks.generators import validate_generator

    problems, seen = [], {}
    for source, board in boards:
        name = board.get("generator") or settings.generator
        field = "generator" if board.get("generator") else "generator (VIDPIPE_GENERATOR)"
        if name not in seen:
            try:
                validate_generator(settings, name)
                seen[name] = None
            except ValueError as exc:
                seen[name] = str(exc)
        if seen[name]:
            problems.append((source, field, seen[name]))
    return problems
