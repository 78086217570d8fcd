"""Veo adapter on the google-genai SDK (Gemini API): predictLongRunning, operations.get, files.download.

google-genai is imported lazily, inside the methods, so neither the client nor a worker that does not
generate with Veo loads it. Pinned to 2.34.0, the last release whose API-key (Gemini API) client still
generates Veo videos; 3.x allows it only in Vertex mode (see docs/generators.md).
"""

from __future__ import annotations

import logging
from pathlib import Path

from vidpipe_tasks.errors import PermanentStageError, TransientError
from vidpipe_tasks.generators import prompting
from vidpipe_tasks.generators.base import ClipRequest
from vidpipe_tasks.generators.remote import GeneratorConfigError, NotAccepted, Poll
from vidpipe_tasks.settings import Settings

log = logging.getLogger(__name__)

#: Models this adapter knows, with the clip lengths each accepts (seconds).
MODELS: dict[str, tuple[int, ...]] = {
    "veo-2.0-generate-001": (5, 6, 7, 8),
    "veo-3.0-generate-001": (4, 6, 8),
    "veo-3.0-fast-generate-001": (4, 6, 8),
    "veo-3.1-generate-preview": (4, 6, 8),
    "veo-3.1-fast-generate-preview": (4, 6, 8),
}
#: Veo takes at most this many asset reference images, and then generates 8 s.
MAX_REFERENCES = 3
_REFERENCE_DURATION_S = 8
#: The Gemini API's own base URL (the SDK's default) names the server in the job table.
DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com/"


def clip_seconds(model: str, duration_s: float, with_references: bool) -> int:
    """The clip length Veo will generate: the shortest allowed length covering the scene (8 s with references)."""
    if with_references:
        return _REFERENCE_DURATION_S
    allowed = MODELS.get(model, (4, 6, 8))
    return next((d for d in allowed if d >= duration_s), allowed[-1])


def aspect_ratio(width: int, height: int) -> str:
    return "9:16" if height > width else "16:9"


class VeoAdapter:
    """Generates scene clips with Veo; a job is the long-running operation's name."""

    provider = "veo"
    chooses_job_id = False

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.model = settings.veo_model
        self.base_url = settings.veo_base_url or DEFAULT_BASE_URL
        self._client = None

    def validate(self) -> None:
        if not self.settings.veo_api_key:
            raise GeneratorConfigError("the veo generator needs VIDPIPE_VEO_API_KEY (a Gemini API key)")
        if self.model not in MODELS:
            raise GeneratorConfigError(f"VIDPIPE_VEO_MODEL={self.model!r} is unknown; valid: {', '.join(MODELS)}")
        try:
            import google.genai  # noqa: F401 - only checks that the SDK is installed
        except ImportError:
            message = "the veo generator needs the google-genai package (pip install google-genai)"
            raise GeneratorConfigError(message) from None

    @property
    def client(self):  # noqa: ANN201 - google.genai.Client, imported lazily
        if self._client is None:
            from google import genai
            from google.genai import types

            options = types.HttpOptions(base_url=self.base_url, timeout=30_000)
            self._client = genai.Client(api_key=self.settings.veo_api_key, http_options=options)
        return self._client

    def generated_seconds(self, request: ClipRequest) -> float:
        return float(clip_seconds(self.model, request.duration_s, bool(prompting.referenced(request))))

    def choose_server(self) -> str:
        return self.base_url.rstrip("/")

    def submit(self, server: str, job_id: str | None, request: ClipRequest) -> str:
        from google.genai import types

        refs = prompting.referenced(request)[:MAX_REFERENCES]
        config = types.GenerateVideosConfig(
            number_of_videos=1,
            duration_seconds=int(self.generated_seconds(request)),
            aspect_ratio=aspect_ratio(request.width, request.height),
            negative_prompt=prompting.negative_prompt(request) or None,
            reference_images=[
                types.VideoGenerationReferenceImage(
                    image=types.Image(image_bytes=prompting.png_bytes(path), mime_type="image/png"),
                    reference_type=types.VideoGenerationReferenceType.ASSET,
                )
                for _, path in refs
            ]
            or None,
            # The Gemini API (API-key client) rejects `seed` in SDK 2.x ("only supported in ... mode"): the
            # scene seed is not sent, and clips are not reproducible there.
        )
        frame = prompting.first_frame(request)
        image = (
            types.Image(image_bytes=prompting.png_bytes(frame), mime_type="image/png")
            if frame is not None and frame.is_file()
            else None
        )
        operation = self._call(
            lambda: self.client.models.generate_videos(
                model=self.model,
                source=types.GenerateVideosSource(prompt=prompting.scene_prompt(request), image=image),
                config=config,
            ),
            submitting=True,
        )
        if not operation.name:
            raise TransientError("Veo accepted the request but returned no operation name")
        return operation.name

    def poll(self, server: str, job_id: str) -> Poll:
        from google.genai import types

        operation = self._call(lambda: self.client.operations.get(types.GenerateVideosOperation(name=job_id)))
        if not operation.done:
            return Poll("running", progress=dict(operation.metadata or {}))
        if operation.error:
            error = dict(operation.error)
            return Poll("failed", message=f"operation failed: {error.get('message', error)}", detail=error)
        result = operation.response or operation.result
        videos = (result.generated_videos if result else None) or []
        if not videos:
            reasons = list((result.rai_media_filtered_reasons if result else None) or [])
            count = (result.rai_media_filtered_count if result else None) or 0
            if count or reasons:
                return Poll(
                    "content_policy",
                    message=f"Veo filtered the video ({count}): {'; '.join(reasons) or 'no reason given'}",
                    detail={"rai_media_filtered_count": count, "rai_media_filtered_reasons": reasons},
                )
            return Poll("failed", message="the operation finished without a video")
        video = videos[0].video
        return Poll("succeeded", outputs={"uri": video.uri, "mime_type": video.mime_type})

    def download(self, server: str, job_id: str, outputs: dict, dest: Path) -> None:
        from google.genai import types

        # Generated files expire (about two days on the Gemini API): download as soon as the job is done.
        data = self._call(lambda: self.client.files.download(file=types.Video(uri=outputs["uri"])))
        dest.write_bytes(data)

    def cancel(self, server: str, job_id: str) -> None:
        log.info("Veo operation %s is abandoned (the Gemini API offers no cancel for it)", job_id)

    def _call(self, fn, submitting: bool = False):  # noqa: ANN001, ANN202 - SDK call and its result
        """Run one SDK call, mapping its errors onto the stage contract (transient, not accepted, permanent)."""
        import httpx
        from google.genai import errors

        try:
            return fn()
        except errors.APIError as exc:
            code = exc.code or 0
            retry_after = _retry_after(exc)
            if code == 429 or code >= 500:
                cls = NotAccepted if submitting else TransientError
                raise cls(f"Veo: {code} {exc.status}: {exc.message}", retry_after=retry_after) from exc
            reason = "bad_request" if code in (400, 404) else "provider_refused"
            raise PermanentStageError(
                reason, f"Veo: {code} {exc.status}: {exc.message}", {"code": code, "status": exc.status}
            ) from exc
        except httpx.ConnectError as exc:
            cls = NotAccepted if submitting else TransientError
            raise cls(f"Veo unreachable: {exc}") from exc
        except httpx.TransportError as exc:
            # A timeout after the request went out: the operation may exist; the job stays "submitting".
            raise TransientError(f"Veo: {type(exc).__name__}: {exc}") from exc


def _retry_after(exc: Exception) -> float | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None) or {}
    try:
        return float(headers.get("Retry-After") or headers.get("retry-after"))
    except (TypeError, ValueError):
        return None
