"""A FAKE Gemini API endpoint for Veo, for tests: the REST calls google-genai 2.34.0 makes, nothing more.

Routes, as the SDK builds them (googleapis/python-genai `google/genai/models.py` `_generate_videos`,
`operations.py` `_get_videos_operation`, `files.py` `download`), under the `v1beta` API version:

- POST /v1beta/models/{model}:predictLongRunning  body {"instances": [{prompt, image?, referenceImages?}],
  "parameters": {sampleCount, durationSeconds, aspectRatio, negativePrompt, ...}} -> {"name": operation}
- GET /v1beta/{operation name} -> {"name", "done"?, "metadata"?, "response": {"generateVideoResponse":
  {"generatedSamples": [{"video": {"uri"}}]} or {"raiMediaFilteredCount", "raiMediaFilteredReasons"}}}
- GET /v1beta/files/{id}:download?alt=media -> 302 to the bytes, as the real API redirects to storage.

Errors are Google's JSON shape {"error": {"code", "message", "status"}}; 429 carries Retry-After. The key
must arrive in the x-goog-api-key header. Operations live in memory (a restart forgets them).

Run: python -m tests.fakes.fake_gemini --port P --root DIR --api-key K [--job-seconds S] [--reject-429 N]
A prompt containing FAKE_BLOCKED is "filtered" (RAI); every accepted request is appended to
DIR/submissions.jsonl so counts survive restarts.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import re
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

from PIL import Image

from tests.fakes.render import read_prompt, render_clip

MODELS = {"veo-2.0-generate-001", "veo-3.0-generate-001", "veo-3.0-fast-generate-001", "veo-3.1-generate-preview"}
_PREDICT = re.compile(r"^/v1beta/models/([^/:]+):predictLongRunning$")
_OPERATION = re.compile(r"^/v1beta/(models/[^/]+/operations/[a-z0-9]+)$")
_DOWNLOAD = re.compile(r"^/v1beta/files/([a-z0-9]+):download$")
#: The fake's render size for 16:9 and 9:16 (real Veo renders 720p; the fake stays small to be quick).
SIZES = {"16:9": (640, 360), "9:16": (360, 640)}
FAKE_FPS = 8


def _error(code: int, status: str, message: str) -> dict:
    return {"error": {"code": code, "message": message, "status": status}}


class FakeGemini:
    def __init__(self, root: Path, api_key: str, job_seconds: float, reject_429: int, retry_after: float) -> None:
        self.root, self.api_key = root, api_key
        self.files_dir = root / "files"
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self.job_seconds, self.reject_429, self.retry_after = job_seconds, reject_429, retry_after
        self.lock = threading.Lock()
        self.operations: dict[str, dict] = {}
        self.stats: dict = {"accepted": 0, "rejected_429": 0, "polls": 0, "downloads": 0, "finished": {}}

    def predict(self, model: str, body: dict) -> tuple[int, dict, dict]:
        if model not in MODELS:
            return 404, _error(404, "NOT_FOUND", f"models/{model} is not found for API version v1beta"), {}
        instances = body.get("instances") or []
        prompt = instances[0].get("prompt", "") if instances else ""
        if self.reject_429 > 0:
            self.reject_429 -= 1
            self.stats["rejected_429"] += 1
            with (self.root / "rejections.jsonl").open("a") as log:
                log.write(json.dumps({"prompt": prompt, "time": time.time()}) + "\n")
            return (
                429,
                _error(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota)."),
                {"Retry-After": f"{self.retry_after:g}"},
            )
        if len(instances) != 1 or not instances[0].get("prompt"):
            return 400, _error(400, "INVALID_ARGUMENT", "instances[0].prompt is required"), {}
        params = body.get("parameters") or {}
        refs = instances[0].get("referenceImages") or []
        duration = int(params.get("durationSeconds") or 8)
        if len(refs) > 3:
            return 400, _error(400, "INVALID_ARGUMENT", "at most 3 reference images"), {}
        if refs and duration != 8:
            return 400, _error(400, "INVALID_ARGUMENT", "reference images require durationSeconds 8"), {}
        name = f"models/{model}/operations/{uuid.uuid4().hex[:12]}"
        op = {"name": name, "done": False, "started": time.monotonic(), "response": None}
        with self.lock:
            self.operations[name] = op
            self.stats["accepted"] += 1
            with (self.root / "submissions.jsonl").open("a") as log:
                log.write(json.dumps({"operation": name, "prompt": prompt, "time": time.time()}) + "\n")
        threading.Thread(target=self._run, args=(op, instances[0], params), daemon=True).start()
        return 200, {"name": name}, {}

    def _run(self, op: dict, instance: dict, params: dict) -> None:
        prompt = instance["prompt"]
        if "FAKE_BLOCKED" in prompt:
            response = {
                "raiMediaFilteredCount": 1,
                "raiMediaFilteredReasons": [
                    "Your current safety settings for person generation blocked this prompt (fake)."
                ],
            }
        else:
            refs = [_image(r["image"]) for r in instance.get("referenceImages") or []]
            width, height = SIZES.get(params.get("aspectRatio", "16:9"), SIZES["16:9"])
            file_id = uuid.uuid4().hex[:16]
            duration = int(params.get("durationSeconds") or 8)
            render_clip(
                self.files_dir / f"{file_id}.mp4",
                read_prompt(prompt),
                refs,
                width=width,
                height=height,
                fps=FAKE_FPS,
                frames=duration * FAKE_FPS,
                seed=len(prompt),
                scene_key=len(self.operations),
            )
            uri = f"https://generativelanguage.googleapis.com/v1beta/files/{file_id}:download?alt=media"
            response = {"generatedSamples": [{"video": {"uri": uri}}]}
        time.sleep(max(0.0, self.job_seconds - (time.monotonic() - op["started"])))
        op["response"], op["done"] = response, True
        self.stats["finished"][op["name"]] = time.time()

    def operation(self, name: str) -> tuple[int, dict]:
        self.stats["polls"] += 1
        op = self.operations.get(name)
        if op is None:
            return 404, _error(404, "NOT_FOUND", f"Operation {name} not found")
        if not op["done"]:
            return 200, {"name": name}
        body = {
            "name": name,
            "done": True,
            "response": {
                "@type": "type.googleapis.com/google.ai.generativelanguage.v1beta.PredictLongRunningResponse",
                "generateVideoResponse": op["response"],
            },
        }
        return 200, body


def _image(image: dict) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(image["bytesBase64Encoded"]))).convert("RGB")


class GeminiHandler(BaseHTTPRequestHandler):
    """The three routes over http.server; `fake` is set on a subclass per server."""

    fake: FakeGemini
    protocol_version = "HTTP/1.1"
    #: Headers and body go out as two writes; without this, delayed ACKs add 40 ms to every request.
    disable_nagle_algorithm = True

    def log_message(self, fmt: str, *args: object) -> None:
        pass

    def _send(self, code: int, body: bytes, content_type: str, headers: dict | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, code: int, body: dict, headers: dict | None = None) -> None:
        self._send(code, json.dumps(body).encode(), "application/json; charset=UTF-8", headers)

    def _authorised(self) -> bool:
        if self.headers.get("x-goog-api-key") == self.fake.api_key:
            return True
        self._json(400, _error(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key."))
        return False

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if not self._authorised():
            return
        match = _PREDICT.match(urlparse(self.path).path)
        if match is None:
            return self._json(404, _error(404, "NOT_FOUND", "no such method"))
        code, answer, headers = self.fake.predict(match.group(1), json.loads(body or b"{}"))
        self._json(code, answer, headers)

    def do_GET(self) -> None:  # noqa: N802
        path = urlparse(self.path).path
        if path == "/fake/stats":
            return self._json(200, self.fake.stats)
        if path.startswith("/fake-storage/"):
            target = self.fake.files_dir / Path(path).name
            if not target.is_file():
                return self._json(404, _error(404, "NOT_FOUND", "no such file"))
            self.fake.stats["downloads"] += 1
            return self._send(200, target.read_bytes(), "video/mp4")
        if not self._authorised():
            return
        if match := _OPERATION.match(path):
            code, answer = self.fake.operation(match.group(1))
            return self._json(code, answer)
        if match := _DOWNLOAD.match(path):
            if not (self.fake.files_dir / f"{match.group(1)}.mp4").is_file():
                return self._json(404, _error(404, "NOT_FOUND", "File not found"))
            return self._send(302, b"", "text/plain", {"Location": f"/fake-storage/{match.group(1)}.mp4"})
        return self._json(404, _error(404, "NOT_FOUND", "no such method"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--job-seconds", type=float, default=1.0)
    parser.add_argument("--reject-429", type=int, default=0)
    parser.add_argument("--retry-after", type=float, default=1.0)
    args = parser.parse_args()
    fake = FakeGemini(args.root, args.api_key, args.job_seconds, args.reject_429, args.retry_after)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), type("Handler", (GeminiHandler,), {"fake": fake}))
    server.daemon_threads = True
    print(f"fake Gemini API listening on 127.0.0.1:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
