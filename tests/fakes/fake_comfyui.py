"""A FAKE ComfyUI server for tests: ComfyUI's HTTP and websocket protocol, a procedural renderer for Wan.

Follows Comfy-Org/ComfyUI `server.py` (routes /prompt, /queue, /history, /history/{id}, /upload/image,
/view, /interrupt, /ws) and `execution.py` (validation errors with `node_errors`, the execution_* messages,
the history entry's `status` and `outputs`). Like the real server, the queue and history live in memory
and a restart forgets them; uploaded and output files stay on disk.

It "runs" a workflow by reading what the Wan 2.2 template wires together (WanImageToVideo's size, length and
start image; the positive CLIPTextEncode; CreateVideo's fps) and rendering a real MP4 whose characters wear
the reference images they were sent (the reference board's boxes, see vidpipe_tasks.generators.prompting).

Run: python -m tests.fakes.fake_comfyui --port P --root DIR [--job-seconds S] [--reject-429 N]
Test-only extras: GET /fake/stats; every accepted prompt is appended to DIR/submissions.jsonl so counts
survive the restarts the tests cause.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import socket
import struct
import threading
import time
import traceback
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from PIL import Image

from tests.fakes.render import read_prompt, render_clip
from vidpipe_tasks.generators.prompting import BOARD_KEY

_WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: Node types the fake knows (those of the shipped Wan 2.2 template); others "do not exist", as on a server
#: without that custom node.
KNOWN_NODES = {
    "UNETLoader",
    "ModelSamplingSD3",
    "CLIPLoader",
    "VAELoader",
    "CLIPTextEncode",
    "LoadImage",
    "WanImageToVideo",
    "KSamplerAdvanced",
    "VAEDecode",
    "CreateVideo",
    "SaveVideo",
}
_OUTPUT_NODES = {"SaveVideo"}


class WebSocket:
    """The server side of one RFC 6455 connection (text frames out; reads only to notice the close)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.lock = threading.Lock()
        self.open = True

    def send_json(self, message: dict) -> None:
        payload = json.dumps(message).encode()
        header = bytes([0x81])
        n = len(payload)
        if n < 126:
            header += bytes([n])
        elif n < 65536:
            header += bytes([126]) + struct.pack(">H", n)
        else:
            header += bytes([127]) + struct.pack(">Q", n)
        with self.lock:
            try:
                self.sock.sendall(header + payload)
            except OSError:
                self.open = False

    def read_until_closed(self) -> None:
        try:
            while self.open:
                head = self._recv(2)
                opcode, length = head[0] & 0x0F, head[1] & 0x7F
                if length == 126:
                    length = struct.unpack(">H", self._recv(2))[0]
                elif length == 127:
                    length = struct.unpack(">Q", self._recv(8))[0]
                mask = self._recv(4) if head[1] & 0x80 else b"\0\0\0\0"
                data = bytes(b ^ mask[i % 4] for i, b in enumerate(self._recv(length)))
                if opcode == 0x8:
                    with self.lock:
                        self.sock.sendall(bytes([0x88, 0]))
                    break
                if opcode == 0x9:  # ping -> pong
                    with self.lock:
                        self.sock.sendall(bytes([0x8A, len(data)]) + data)
        except OSError:
            pass
        self.open = False

    def close(self) -> None:
        self.open = False
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _recv(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise OSError("closed")
            buf += chunk
        return buf


class FakeComfy:
    """In-memory queue and history, as ComfyUI's PromptQueue; one executor thread, like the real one."""

    def __init__(self, root: Path, job_seconds: float, reject_429: int, retry_after: float, drop_ws: bool) -> None:
        self.root = root
        self.input_dir, self.output_dir = root / "input", root / "output"
        self.input_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / "video").mkdir(parents=True, exist_ok=True)
        self.job_seconds, self.reject_429, self.retry_after, self.drop_ws = (
            job_seconds,
            reject_429,
            retry_after,
            drop_ws,
        )
        self.lock = threading.Condition()
        self.number = 0
        self.queue: list[list] = []
        self.running: list[list] = []
        self.history: dict[str, dict] = {}
        self.sockets: dict[str, WebSocket] = {}
        self.client_id: str | None = None
        self.last_node_id: str | None = None
        self.stats: dict = {"accepted": 0, "rejected_429": 0, "rejected_400": 0, "uploads": 0, "finished": {}}
        threading.Thread(target=self._executor, daemon=True).start()

    # -- the protocol -----------------------------------------------------------------------------------------

    def queue_info(self) -> dict:
        return {"exec_info": {"queue_remaining": len(self.queue) + len(self.running)}}

    def post_prompt(self, body: dict) -> tuple[int, dict, dict]:
        if self.reject_429 > 0:
            self.reject_429 -= 1
            self.stats["rejected_429"] += 1
            with (self.root / "rejections.jsonl").open("a") as log:
                log.write(json.dumps({"prompt_id": body.get("prompt_id"), "time": time.time()}) + "\n")
            return 429, {"error": "rate limited (fake)"}, {"Retry-After": f"{self.retry_after:g}"}
        if "prompt" not in body:
            error = {
                "type": "no_prompt",
                "message": "No prompt provided",
                "details": "No prompt provided",
                "extra_info": {},
            }
            return 400, {"error": error, "node_errors": {}}, {}
        prompt = body["prompt"]
        prompt_id = str(body.get("prompt_id") or uuid.uuid4())
        invalid = self.validate(prompt)
        if invalid is not None:
            self.stats["rejected_400"] += 1
            return 400, invalid, {}
        extra = dict(body.get("extra_data") or {})
        if "client_id" in body:
            extra["client_id"] = body["client_id"]
        with self.lock:
            number = self.number
            self.number += 1
            self.queue.append([number, prompt_id, prompt, extra, sorted(self._outputs(prompt))])
            self.stats["accepted"] += 1
            with (self.root / "submissions.jsonl").open("a") as log:
                log.write(json.dumps({"prompt_id": prompt_id, "time": time.time()}) + "\n")
            self.lock.notify_all()
        self.broadcast("status", {"status": self.queue_info()})
        return 200, {"prompt_id": prompt_id, "number": number, "node_errors": {}}, {}

    def validate(self, prompt: dict) -> dict | None:
        """The checks of execution.validate_prompt the fake can make, with its error shapes."""
        for node_id, node in prompt.items():
            if "class_type" not in node:
                return _invalid(
                    "invalid_prompt",
                    "Cannot execute because a node is missing the class_type property.",
                    f"Node ID '#{node_id}'",
                )
            if node["class_type"] not in KNOWN_NODES:
                return _invalid(
                    "invalid_prompt",
                    f"Cannot execute because node {node['class_type']} does not exist.",
                    f"Node ID '#{node_id}'",
                )
        outputs = self._outputs(prompt)
        if not outputs:
            return _invalid("prompt_no_outputs", "Prompt has no outputs", "")
        node_errors = {}
        for node_id, node in prompt.items():
            reasons = self._node_reasons(prompt, node)
            if reasons:
                node_errors[node_id] = {
                    "errors": reasons,
                    "dependent_outputs": sorted(outputs),
                    "class_type": node["class_type"],
                }
        if not node_errors:
            return None
        details = "\n".join(f"{r['message']}: {r['details']}" for e in node_errors.values() for r in e["errors"])
        error = {
            "type": "prompt_outputs_failed_validation",
            "message": "Prompt outputs failed validation",
            "details": details,
            "extra_info": {},
        }
        return {"error": error, "node_errors": node_errors}

    def _node_reasons(self, prompt: dict, node: dict) -> list[dict]:
        reasons = []
        for key, value in node.get("inputs", {}).items():
            if isinstance(value, list) and (len(value) != 2 or str(value[0]) not in prompt):
                message = "Bad linked input, must be a length-2 list of [node_id, slot_index]"
                reasons.append(_reason("bad_linked_input", message, key, key))
        if node["class_type"] == "LoadImage":
            name = node["inputs"].get("image", "")
            if not (self.input_dir / str(name)).is_file():
                reasons.append(
                    _reason(
                        "custom_validation_failed",
                        "Custom validation failed for node",
                        f"image - Invalid image file: {name}",
                        "image",
                    )
                )
        if node["class_type"] == "WanImageToVideo":
            for key in ("width", "height", "length"):
                value = node["inputs"].get(key)
                if not isinstance(value, int):
                    message = "Failed to convert an input value to a INT value"
                    reasons.append(_reason("invalid_input_type", message, f"{key}, {value}", key))
                elif value < 16 and key != "length":
                    reasons.append(_reason("value_smaller_than_min", f"Value {value} smaller than min of 16", key, key))
        return reasons

    def _outputs(self, prompt: dict) -> set[str]:
        return {i for i, n in prompt.items() if n.get("class_type") in _OUTPUT_NODES}

    def send(self, event: str, data: dict, sid: str | None) -> None:
        ws = self.sockets.get(sid or "")
        if ws is not None and ws.open:
            ws.send_json({"type": event, "data": data})

    def broadcast(self, event: str, data: dict) -> None:
        for ws in list(self.sockets.values()):
            if ws.open:
                ws.send_json({"type": event, "data": data})

    # -- execution --------------------------------------------------------------------------------------------

    def _executor(self) -> None:
        while True:
            with self.lock:
                while not self.queue:
                    self.lock.wait()
                self.queue.sort(key=lambda item: item[0])
                item = self.queue.pop(0)
                self.running.append(item)
            self.broadcast("status", {"status": self.queue_info()})
            self._execute(item)

    def _execute(self, item: list) -> None:
        number, prompt_id, prompt, extra, outputs = item
        sid = extra.get("client_id")
        messages = []

        def message(event: str, data: dict) -> None:
            data = {**data, "timestamp": int(time.time() * 1000)}
            messages.append([event, data])
            self.send(event, data, sid)

        message("execution_start", {"prompt_id": prompt_id})
        started = time.monotonic()
        history: dict = {"prompt": item, "outputs": {}, "meta": {}}
        try:
            wan = _first(prompt, "WanImageToVideo")
            text = _linked(prompt, wan["inputs"].get("positive"))["inputs"]["text"]
            sampler_id = next((i for i, n in prompt.items() if n["class_type"] == "KSamplerAdvanced"), "0")
            for node_id in prompt:
                self.send("executing", {"node": node_id, "display_node": node_id, "prompt_id": prompt_id}, sid)
            # As server.py keeps client_id/last_node_id: a client reconnecting mid-run is told the node.
            self.client_id, self.last_node_id = sid, sampler_id
            steps = 4
            for step in range(1, steps + 1):
                time.sleep(self.job_seconds / (steps + 1))
                self.send("progress", {"value": step, "max": steps, "prompt_id": prompt_id, "node": sampler_id}, sid)
            if "FAKE_EXECUTION_ERROR" in text:
                raise RuntimeError("CUDA error: out of memory (fake)")
            save_id = next(iter(outputs))
            filename = self._render(prompt, wan, text, number)
            history["outputs"][save_id] = {
                "images": [{"filename": filename, "subfolder": "video", "type": "output"}],
                "animated": [True],
            }
            message(
                "executed",
                {
                    "node": save_id,
                    "display_node": save_id,
                    "output": history["outputs"][save_id],
                    "prompt_id": prompt_id,
                },
            )
            time.sleep(max(0.0, self.job_seconds - (time.monotonic() - started)))
            message("execution_success", {"prompt_id": prompt_id})
            self.stats["finished"][prompt_id] = time.time()
            status = {"status_str": "success", "completed": True, "messages": messages}
        except Exception as exc:  # noqa: BLE001 - reported as ComfyUI reports node failures
            node_id = next((i for i, n in prompt.items() if n["class_type"] == "KSamplerAdvanced"), "0")
            message(
                "execution_error",
                {
                    "prompt_id": prompt_id,
                    "node_id": node_id,
                    "node_type": prompt.get(node_id, {}).get("class_type"),
                    "executed": [],
                    "exception_message": str(exc),
                    "exception_type": type(exc).__name__,
                    "traceback": traceback.format_exc().splitlines(),
                    "current_inputs": {},
                    "current_outputs": [],
                },
            )
            status = {"status_str": "error", "completed": False, "messages": messages}
        history["status"] = status
        with self.lock:
            self.running.remove(item)
            self.history[prompt_id] = history
        self.client_id = self.last_node_id = None
        self.send("executing", {"node": None, "prompt_id": prompt_id}, sid)
        self.broadcast("status", {"status": self.queue_info()})

    def _render(self, prompt: dict, wan: dict, text: str, number: int) -> str:
        inputs = wan["inputs"]
        fps = int(_first(prompt, "CreateVideo")["inputs"].get("fps", 16))
        references = []
        start = _linked(prompt, inputs.get("start_image"))
        if start is not None:
            with Image.open(self.input_dir / start["inputs"]["image"]) as img:
                img.load()
                board = json.loads(img.info.get(BOARD_KEY, "null") or "null")
                if board:
                    references = [img.crop(tuple(box)).convert("RGB") for box in board["boxes"]]
        seed = int(_first(prompt, "KSamplerAdvanced")["inputs"].get("noise_seed", 0))
        filename = f"vidpipe_{number:05d}_.mp4"
        render_clip(
            self.output_dir / "video" / filename,
            read_prompt(text),
            references,
            width=inputs["width"],
            height=inputs["height"],
            fps=fps,
            frames=inputs["length"],
            seed=seed,
            scene_key=number,
        )
        return filename


def _first(prompt: dict, class_type: str) -> dict:
    return next(n for n in prompt.values() if n["class_type"] == class_type)


def _linked(prompt: dict, link: object) -> dict | None:
    return prompt.get(str(link[0])) if isinstance(link, list) and link else None


def _reason(kind: str, message: str, details: str, name: str) -> dict:
    return {"type": kind, "message": message, "details": details, "extra_info": {"input_name": name}}


def _invalid(kind: str, message: str, details: str) -> dict:
    return {"error": {"type": kind, "message": message, "details": details, "extra_info": {}}, "node_errors": {}}


class ComfyHandler(BaseHTTPRequestHandler):
    """ComfyUI's routes over http.server; `comfy` is set on a subclass per server."""

    comfy: FakeComfy
    protocol_version = "HTTP/1.1"
    #: Headers and body go out as two writes; without this, delayed ACKs add 40 ms to every request.
    disable_nagle_algorithm = True

    def log_message(self, fmt: str, *args: object) -> None:
        pass

    def _json(self, code: int, body: object, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        url = urlparse(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path == "/ws":
            return self._websocket(query.get("clientId") or uuid.uuid4().hex)
        if url.path in ("/prompt",):
            return self._json(200, self.comfy.queue_info())
        if url.path == "/queue":
            with self.comfy.lock:
                body = {
                    "queue_running": [list(i) for i in self.comfy.running],
                    "queue_pending": [list(i) for i in self.comfy.queue],
                }
            return self._json(200, body)
        if url.path == "/history":
            return self._json(200, self.comfy.history)
        if url.path.startswith("/history/"):
            prompt_id = url.path.removeprefix("/history/")
            entry = self.comfy.history.get(prompt_id)
            return self._json(200, {prompt_id: entry} if entry else {})
        if url.path == "/view":
            return self._view(query)
        if url.path == "/fake/stats":
            return self._json(200, self.comfy.stats)
        return self._json(404, {"error": "not found"})

    def do_POST(self) -> None:  # noqa: N802
        url = urlparse(self.path)
        if url.path == "/prompt":
            code, body, headers = self.comfy.post_prompt(json.loads(self._body() or b"{}"))
            return self._json(code, body, headers)
        if url.path == "/upload/image":
            return self._upload()
        if url.path == "/queue":
            body = json.loads(self._body() or b"{}")
            with self.comfy.lock:
                self.comfy.queue = [i for i in self.comfy.queue if i[1] not in set(body.get("delete", []))]
            return self._json(200, {})
        if url.path == "/interrupt":
            self._body()
            return self._json(200, {})
        return self._json(404, {"error": "not found"})

    def _upload(self) -> None:
        import email.parser
        import email.policy

        raw = self._body()
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + raw
        )
        fields, image = {}, None
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if part.get_filename():
                image = (part.get_filename(), part.get_payload(decode=True))
            else:
                fields[name] = part.get_content().strip()
        if image is None or not image[0]:
            return self._json(400, {"error": "no image"})
        subfolder = fields.get("subfolder", "")
        target = self.comfy.input_dir / subfolder / image[0]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(image[1])
        self.comfy.stats["uploads"] += 1
        return self._json(200, {"name": image[0], "subfolder": subfolder, "type": fields.get("type", "input")})

    def _view(self, query: dict) -> None:
        filename = query.get("filename", "")
        if not filename or filename.startswith("/") or ".." in filename:
            return self._json(400, {"error": "bad filename"})
        base = {"output": self.comfy.output_dir, "input": self.comfy.input_dir}.get(query.get("type", "output"))
        path = base / query.get("subfolder", "") / filename if base else None
        if path is None or not path.is_file():
            return self._json(404, {"error": "not found"})
        data = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "video/mp4")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _websocket(self, sid: str) -> None:
        key = self.headers.get("Sec-WebSocket-Key", "")
        accept = base64.b64encode(hashlib.sha1((key + _WS_GUID).encode()).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        ws = WebSocket(self.connection)
        self.comfy.sockets[sid] = ws
        ws.send_json({"type": "status", "data": {"status": self.comfy.queue_info(), "sid": sid}})
        if self.comfy.client_id == sid and self.comfy.last_node_id is not None:
            ws.send_json({"type": "executing", "data": {"node": self.comfy.last_node_id}})
        if self.comfy.drop_ws:
            ws.close()  # a websocket that drops, as on long jobs behind proxies
        else:
            ws.read_until_closed()
        if self.comfy.sockets.get(sid) is ws:
            del self.comfy.sockets[sid]
        self.close_connection = True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--job-seconds", type=float, default=1.0, help="least time one prompt takes to run")
    parser.add_argument("--reject-429", type=int, default=0, help="answer the first N POST /prompt with 429")
    parser.add_argument("--retry-after", type=float, default=1.0)
    parser.add_argument("--drop-ws", action="store_true", help="close every websocket right after its status")
    args = parser.parse_args()
    comfy = FakeComfy(args.root, args.job_seconds, args.reject_429, args.retry_after, args.drop_ws)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), type("Handler", (ComfyHandler,), {"comfy": comfy}))
    server.daemon_threads = True
    print(f"fake ComfyUI listening on 127.0.0.1:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
