"""ComfyUI adapter: API-format workflow templates, /upload/image, /prompt, /ws and /history, /view.

Wire protocol as ComfyUI's own `server.py` and `execution.py` define it (Comfy-Org/ComfyUI); see
docs/generators.md for the routes and message shapes this relies on.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import re
import time
from pathlib import Path

import httpx

from vidpipe_tasks.errors import PermanentStageError, TransientError
from vidpipe_tasks.generators import prompting
from vidpipe_tasks.generators.base import ClipRequest
from vidpipe_tasks.generators.remote import GeneratorConfigError, NotAccepted, Poll
from vidpipe_tasks.settings import Settings

log = logging.getLogger(__name__)

#: The shipped Wan 2.2 image-to-video template (used when VIDPIPE_COMFYUI_TEMPLATE is empty).
DEFAULT_TEMPLATE = Path(__file__).with_name("templates") / "wan22_i2v.json"
#: Value placeholders: the whole input value is replaced by a number.
NUMBER_PLACEHOLDERS = ("seed", "width", "height", "frames", "fps")
#: Text placeholders: replaced inside any string input.
TEXT_PLACEHOLDERS = ("prompt", "negative_prompt")
_PLACEHOLDER = re.compile(r"\{\{([a-z_]+)(?::(\d+))?\}\}")
#: Image placeholders: the input becomes the name of an uploaded image; a node whose image is missing is
#: removed, and so is every link to it (optional inputs such as WanImageToVideo.start_image then stay unset).
IMAGE_PLACEHOLDERS = ("start_image", "first_frame", "reference_image")
#: Seconds each poll listens on the websocket after ComfyUI's greeting (its `status`, then `executing` with
#: the current node when we are the client that queued the prompt) for progress or completion. It is
#: worker-slot time per poll (bench/bench_remote_jobs.py), so it stays short: /history decides.
WS_WATCH_S = 0.05
#: Seconds to wait for the greeting itself.
WS_GREETING_S = 1.0
_TIMEOUT = httpx.Timeout(10.0, connect=3.0)


def load_template(path: Path) -> dict:
    """Read and check an API-format workflow: a mapping of node id -> {class_type, inputs}."""
    try:
        graph = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GeneratorConfigError(f"ComfyUI template not found: {path}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise GeneratorConfigError(f"ComfyUI template {path} is not valid JSON: {exc}") from None
    if not isinstance(graph, dict) or not graph:
        raise GeneratorConfigError(f"ComfyUI template {path}: expected the API format (node id -> node)")
    for node_id, node in graph.items():
        if not isinstance(node, dict) or "class_type" not in node or not isinstance(node.get("inputs"), dict):
            raise GeneratorConfigError(
                f"ComfyUI template {path}: node {node_id} lacks class_type/inputs (export with 'Save (API)')"
            )
    unknown = {m.group(1) for m in _PLACEHOLDER.finditer(json.dumps(graph))} - set(
        NUMBER_PLACEHOLDERS + TEXT_PLACEHOLDERS + IMAGE_PLACEHOLDERS
    )
    if unknown:
        raise GeneratorConfigError(f"ComfyUI template {path}: unknown placeholder(s) {sorted(unknown)}")
    return graph


def wan_frames(duration_s: float, fps: int) -> int:
    """Frame count for Wan: 4k+1 frames, covering at least the scene's duration."""
    return 4 * math.ceil(max(1.0, duration_s * fps - 1) / 4) + 1


def fill_template(graph: dict, values: dict, images: dict[str, str]) -> dict:
    """Substitute placeholders; drop nodes whose image placeholder has no image, and links to them.

    Args:
        graph: the template.
        values: number and text placeholder values.
        images: "start_image", "first_frame", "reference_image:K" -> uploaded image name.

    """
    graph = copy.deepcopy(graph)
    dropped = set()
    for node_id, node in graph.items():
        for key, value in node["inputs"].items():
            if not isinstance(value, str):
                continue
            whole = _PLACEHOLDER.fullmatch(value)
            if whole and whole.group(1) in IMAGE_PLACEHOLDERS:
                name = whole.group(1) + (f":{whole.group(2)}" if whole.group(2) else "")
                if name not in images:
                    dropped.add(node_id)
                else:
                    node["inputs"][key] = images[name]
            elif whole and whole.group(1) in NUMBER_PLACEHOLDERS:
                node["inputs"][key] = values[whole.group(1)]
            else:
                node["inputs"][key] = _PLACEHOLDER.sub(
                    lambda m: str(values[m.group(1)]) if m.group(1) in TEXT_PLACEHOLDERS else m.group(0), value
                )
    for node_id in dropped:
        del graph[node_id]
    for node in graph.values():
        for key in [k for k, v in node["inputs"].items() if isinstance(v, list) and v and str(v[0]) in dropped]:
            del node["inputs"][key]
    return graph


def video_output(history_entry: dict) -> dict | None:
    """The first video a finished prompt saved: SaveVideo reports {"images": [...], "animated": [true]}."""
    for node_output in (history_entry.get("outputs") or {}).values():
        for key in ("images", "gifs", "videos"):
            for item in node_output.get(key) or []:
                name = str(item.get("filename", ""))
                if name.lower().endswith((".mp4", ".webm", ".mov", ".mkv")) or node_output.get("animated"):
                    return {k: item.get(k, "") for k in ("filename", "subfolder", "type")}
    return None


def execution_error(history_entry: dict) -> tuple[str, dict]:
    """The node and message of a failed prompt, from the status messages kept in /history."""
    for event, data in (history_entry.get("status") or {}).get("messages") or []:
        if event == "execution_error":
            node = f"node {data.get('node_id')} ({data.get('node_type')})"
            detail = {k: data.get(k) for k in ("node_id", "node_type", "exception_type", "exception_message")}
            return f"{node} failed: {data.get('exception_message', '').strip()}", detail
        if event == "execution_interrupted":
            return f"interrupted at node {data.get('node_id')} ({data.get('node_type')})", dict(data)
    return "the prompt ended with an error", {}


def describe_node_errors(body: dict) -> str:
    """A one-line summary of a /prompt 400: the error, then each failing node by id and class."""
    error = body.get("error") or {}
    message = error.get("message", "invalid prompt") if isinstance(error, dict) else str(error)
    parts = []
    for node_id, info in (body.get("node_errors") or {}).items():
        reasons = "; ".join(f"{e.get('message')}: {e.get('details')}" for e in info.get("errors", []))
        parts.append(f"node {node_id} ({info.get('class_type')}): {reasons}")
    details = error.get("details") if isinstance(error, dict) else ""
    return message + (": " + " | ".join(parts) if parts else (f": {details}" if details else ""))


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers["Retry-After"])
    except (KeyError, ValueError):
        return None


class ComfyUIAdapter:
    """Drives one or more ComfyUI servers; jobs are identified by a prompt_id vidpipe chooses.

    Server choice: "least-queued" asks every server's GET /queue and takes the one with the fewest running
    plus pending prompts (ties: the first listed); "first-up" takes the first that answers.
    """

    provider = "comfyui"
    model = None
    chooses_job_id = True

    def __init__(self, settings: Settings, client: httpx.Client | None = None) -> None:
        self.settings = settings
        self.servers = [s.strip().rstrip("/") for s in settings.comfyui_servers.split(",") if s.strip()]
        self.template_path = Path(settings.comfyui_template) if settings.comfyui_template else DEFAULT_TEMPLATE
        self.http = client or httpx.Client(timeout=_TIMEOUT)

    def validate(self) -> None:
        if not self.servers:
            raise GeneratorConfigError("the comfyui generator needs VIDPIPE_COMFYUI_SERVERS (base URLs)")
        for server in self.servers:
            if not server.startswith(("http://", "https://")):
                raise GeneratorConfigError(f"VIDPIPE_COMFYUI_SERVERS: {server!r} is not an http(s) URL")
        load_template(self.template_path)

    def generated_seconds(self, request: ClipRequest) -> float:
        return round(wan_frames(request.duration_s, request.fps) / request.fps, 3)

    # -- servers --------------------------------------------------------------------------------------------

    def queue_depth(self, server: str) -> int:
        """Running plus pending prompts on `server` (raises TransientError when it does not answer)."""
        body = self._get_json(server, "/queue")
        return len(body.get("queue_running", [])) + len(body.get("queue_pending", []))

    def depths(self) -> dict[str, int | None]:
        """Every server's queue depth (None: unreachable); `vidpipe generators` shows it."""
        out: dict[str, int | None] = {}
        for server in self.servers:
            try:
                out[server] = self.queue_depth(server)
            except TransientError:
                out[server] = None
        return out

    def choose_server(self) -> str:
        if self.settings.comfyui_choice == "first-up":
            for server in self.servers:
                try:
                    self.queue_depth(server)
                    return server
                except TransientError:
                    continue
        else:
            depths = {s: d for s, d in self.depths().items() if d is not None}
            if depths:
                return min(self.servers, key=lambda s: depths.get(s, math.inf))
        raise TransientError(f"no ComfyUI server answers: {', '.join(self.servers)}")

    # -- the job ----------------------------------------------------------------------------------------------

    def submit(self, server: str, job_id: str | None, request: ClipRequest) -> str:
        images = self._upload_images(server, request)
        values = {
            "prompt": prompting.scene_prompt(request),
            "negative_prompt": prompting.negative_prompt(request),
            "seed": int(request.seed),
            "width": 16 * max(1, round(request.width / 16)),
            "height": 16 * max(1, round(request.height / 16)),
            "frames": wan_frames(request.duration_s, request.fps),
            "fps": request.fps,
        }
        graph = fill_template(load_template(self.template_path), values, images)
        body = {"prompt": graph, "client_id": _client_id(job_id), "prompt_id": job_id}
        response = self._request("POST", server, "/prompt", json=body, not_accepted=True)
        if response.status_code == 400:
            try:
                detail = response.json()
            except ValueError:
                detail = {"error": {"message": response.text}}
            raise PermanentStageError(
                "invalid_workflow",
                f"ComfyUI refused the workflow: {describe_node_errors(detail)}",
                {"node_errors": detail.get("node_errors", {}), "error": detail.get("error")},
            )
        self._raise_for_status(response, not_accepted=True)
        return str(response.json().get("prompt_id", job_id))

    def poll(self, server: str, job_id: str) -> Poll:
        progress = self._watch(server, job_id)
        finished = self._finished(server, job_id)
        if finished is not None:
            return finished
        # /history stays empty until the prompt has run: ask the queue whether it is waiting or running.
        queue = self._get_json(server, "/queue")
        if any(len(item) > 1 and item[1] == job_id for item in queue.get("queue_running", [])):
            return Poll("running", progress=progress)
        if any(len(item) > 1 and item[1] == job_id for item in queue.get("queue_pending", [])):
            return Poll("queued", progress=progress)
        # Not queued: it may have finished between the two reads, so look at /history once more.
        return self._finished(server, job_id) or Poll("lost")

    def _finished(self, server: str, job_id: str) -> Poll | None:
        """The outcome recorded in /history/{prompt_id}, or None while it has none."""
        entry = self._get_json(server, f"/history/{job_id}").get(job_id)
        if entry is None:
            return None
        status = entry.get("status") or {}
        if status.get("status_str") == "error" or status.get("completed") is False:
            message, detail = execution_error(entry)
            return Poll("failed", message=message, detail=detail)
        output = video_output(entry)
        if output is None:
            return Poll("failed", message="the prompt finished without saving a video (no SaveVideo output)")
        return Poll("succeeded", outputs=output)

    def download(self, server: str, job_id: str, outputs: dict, dest: Path) -> None:
        params = {k: outputs.get(k, "") for k in ("filename", "subfolder", "type")}
        try:
            with self.http.stream("GET", f"{server}/view", params=params) as response:
                self._raise_for_status(response)
                with dest.open("wb") as out:
                    for chunk in response.iter_bytes():
                        out.write(chunk)
        except httpx.TransportError as exc:
            raise TransientError(f"ComfyUI {server}: download failed: {exc}") from exc

    def cancel(self, server: str, job_id: str) -> None:
        self._request("POST", server, "/queue", json={"delete": [job_id]})
        self._request("POST", server, "/interrupt", json={"prompt_id": job_id})

    # -- helpers ----------------------------------------------------------------------------------------------

    def _upload_images(self, server: str, request: ClipRequest) -> dict[str, str]:
        """Upload the start image and each reference; returns placeholder -> the name ComfyUI stored."""
        prefix = f"vidpipe-p{request.project_id}-s{request.scene_index}"
        uploads: dict[str, bytes] = {}
        start = prompting.start_image(request)
        if start is not None:
            uploads["start_image"] = start
        frame = prompting.first_frame(request)
        if frame is not None and frame.is_file():
            uploads["first_frame"] = prompting.png_bytes(frame)
        for k, (_, path) in enumerate(prompting.referenced(request), start=1):
            uploads[f"reference_image:{k}"] = prompting.png_bytes(path)
        names = {}
        for key, data in uploads.items():
            filename = f"{prefix}-{key.replace(':', '')}.png"
            files = {"image": (filename, data, "image/png")}
            response = self._request(
                "POST",
                server,
                "/upload/image",
                files=files,
                data={"overwrite": "true", "type": "input"},
                not_accepted=True,
            )
            self._raise_for_status(response, not_accepted=True)
            body = response.json()
            names[key] = f"{body['subfolder']}/{body['name']}" if body.get("subfolder") else body["name"]
        return names

    def _watch(self, server: str, job_id: str) -> dict:
        """Listen briefly on /ws for this prompt's progress; a dropped socket just means /history decides."""
        from websockets.exceptions import WebSocketException
        from websockets.sync.client import connect

        url = server.replace("http", "ws", 1) + f"/ws?clientId={_client_id(job_id)}"
        progress: dict = {}
        until = time.monotonic() + WS_GREETING_S
        try:
            with connect(url, open_timeout=2, close_timeout=1) as ws:
                while (left := until - time.monotonic()) > 0:
                    try:
                        raw = ws.recv(timeout=left)
                    except TimeoutError:
                        return progress
                    if not isinstance(raw, str):
                        continue  # binary preview frames
                    message = json.loads(raw)
                    data = message.get("data") or {}
                    kind = message.get("type")
                    if kind == "status" and "sid" in data:  # the greeting: listen a moment longer, no more
                        until = time.monotonic() + WS_WATCH_S
                    if data.get("prompt_id") not in (None, job_id):
                        continue
                    if kind == "progress":
                        progress = {"done": data.get("value"), "total": data.get("max"), "node": data.get("node")}
                    elif kind == "executing" and data.get("node") is not None:
                        progress.setdefault("node", data.get("node"))
                    elif kind in ("execution_success", "execution_error", "execution_interrupted"):
                        return {**progress, "state": "done"}
        except (OSError, WebSocketException, TimeoutError, ValueError) as exc:
            log.debug("ComfyUI %s websocket: %s (falling back to /history)", server, exc)
        return progress

    def _get_json(self, server: str, path: str) -> dict:
        response = self._request("GET", server, path)
        self._raise_for_status(response)
        try:
            return response.json()
        except ValueError as exc:
            raise TransientError(f"ComfyUI {server}{path}: not JSON ({exc})") from exc

    def _request(self, method: str, server: str, path: str, not_accepted: bool = False, **kwargs) -> httpx.Response:
        try:
            return self.http.request(method, f"{server}{path}", **kwargs)
        except httpx.ConnectError as exc:
            # Nothing reached the server: certainly not accepted.
            raise NotAccepted(f"ComfyUI {server} unreachable: {exc}") from exc
        except httpx.TransportError as exc:
            raise TransientError(f"ComfyUI {server}{path}: {type(exc).__name__}: {exc}") from exc

    @staticmethod
    def _raise_for_status(response: httpx.Response, not_accepted: bool = False) -> None:
        code = response.status_code
        if code < 400:
            return
        where = f"ComfyUI {response.request.method} {response.request.url.path}"
        if code == 429 or code >= 500:
            cls = NotAccepted if not_accepted else TransientError
            raise cls(f"{where}: HTTP {code}", retry_after=_retry_after(response))
        if code == 404:
            raise TransientError(f"{where}: HTTP 404 (output not there yet, or the server restarted)")
        raise PermanentStageError("bad_request", f"{where}: HTTP {code}: {response.text[:300]}")


def _client_id(job_id: str | None) -> str:
    # One websocket client id per job: ComfyUI sends progress only to the client that queued the prompt.
    return f"vidpipe-{job_id}"
