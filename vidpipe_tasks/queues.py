"""The broker as the pipeline sees it: queue depths (priority sub-lists included), a project's messages, serve-next."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from celery import Celery

from vidpipe_tasks.settings import ALL_QUEUES, Settings

if TYPE_CHECKING:
    import redis

#: The highest message priority kombu's virtual transports accept (they clamp to 0-9).
MAX_PRIORITY = 9


@dataclass(frozen=True)
class RedisLayout:
    """How kombu's Redis transport names its keys (read from a live channel, so transport options count)."""

    sep: str
    steps: tuple[int, ...]
    prefix: str
    unacked_key: str
    unacked_index_key: str

    def key(self, queue: str, step: int) -> str:
        """The list holding `queue`'s messages of priority step `step` (kombu's `_q_for_pri` naming)."""
        return self.prefix + (f"{queue}{self.sep}{step}" if step else queue)

    def step_range(self, index: int) -> str:
        """The message priorities that land in the `index`-th sub-list, e.g. "3-5"."""
        low = self.steps[index]
        high = self.steps[index + 1] - 1 if index + 1 < len(self.steps) else MAX_PRIORITY
        return str(low) if high <= low else f"{low}-{high}"


def redis_layout(app: Celery) -> RedisLayout:
    """The key naming of `app`'s Redis broker, as its kombu channel has it."""
    with app.connection_for_read() as conn:
        channel = conn.default_channel
        return RedisLayout(
            sep=channel.sep,
            steps=tuple(channel.priority_steps),
            prefix=channel.global_keyprefix or "",
            unacked_key=channel.unacked_key,
            unacked_index_key=channel.unacked_index_key,
        )


def _redis_client(settings: Settings) -> redis.Redis:
    # A plain client: kombu's prefixing client prefixes only some commands (not LRANGE or HGETALL), so every
    # key here is built with RedisLayout's prefix instead.
    import redis

    return redis.Redis.from_url(settings.broker_url)


@dataclass
class BrokerMessage:
    """One task message found in the broker."""

    task_id: str
    task: str
    queue: str
    #: "queued" (waiting in a list or folder) or "unacked" (delivered to a worker, not yet acknowledged; Redis).
    state: str
    priority: int | None
    project_id: int | None
    scene_index: int | None
    #: Ids of the tasks the chain will send after this one (they exist only inside this message until then).
    chain_ids: list[str] = field(default_factory=list)
    #: Redis unacked-hash field, so a stale delivery can be dropped (resume).
    delivery_tag: str | None = None
    #: Redis: when the delivery was handed to a worker (epoch seconds, from the unacked index).
    delivered_at: float | None = None
    #: The chain epoch the message was queued under (None for messages of an older vidpipe).
    epoch: int | None = None


def decode_message(payload: dict, queue: str, state: str, delivery_tag: str | None = None) -> BrokerMessage | None:
    """Read a kombu task message (protocol 2, JSON body); None for anything else (e.g. a control message)."""
    headers = payload.get("headers") or {}
    if "task" not in headers or "id" not in headers:
        return None
    props = payload.get("properties") or {}
    try:
        body = payload["body"]
        if props.get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args, _kwargs, embed = json.loads(body)
    except (KeyError, ValueError, TypeError):
        args, embed = [], {}
    ref = args[0] if args and isinstance(args[0], dict) else {}
    chain = (embed or {}).get("chain") or []
    return BrokerMessage(
        task_id=headers["id"],
        task=headers["task"],
        queue=queue,
        state=state,
        priority=props.get("priority"),
        project_id=ref.get("project_id"),
        scene_index=ref.get("scene_index"),
        # Celery keeps the rest of the chain reversed (it pops from the end); list it in run order.
        chain_ids=[s["options"]["task_id"] for s in reversed(chain) if s.get("options", {}).get("task_id")],
        delivery_tag=delivery_tag,
        epoch=ref.get("epoch") if isinstance(ref.get("epoch"), int) else None,
    )


def _queue_folder(settings: Settings) -> Path:
    return settings.broker_dir / "queue"


def _fs_files(settings: Settings, queue: str) -> list[Path]:
    folder = _queue_folder(settings)
    if not folder.is_dir():
        return []
    # kombu names them "<ms>_<uuid>.<queue>.msg" and consumes them in name order.
    return sorted(p for p in folder.iterdir() if p.name.partition(".")[2] == f"{queue}.msg")


def _redis_messages(app: Celery, settings: Settings) -> list[BrokerMessage]:
    layout = redis_layout(app)
    client = _redis_client(settings)
    found = []
    for queue in ALL_QUEUES:
        for step in layout.steps:
            # LPUSH adds on the left and workers RPOP from the right: reversed is oldest first.
            for raw in reversed(client.lrange(layout.key(queue, step), 0, -1)):
                found.append(decode_message(json.loads(raw), queue, "queued"))
    index = client.zrange(layout.prefix + layout.unacked_index_key, 0, -1, withscores=True)
    delivered = {tag.decode(): score for tag, score in index}
    for tag, raw in client.hgetall(layout.prefix + layout.unacked_key).items():
        payload, _exchange, routing_key = json.loads(raw)
        if routing_key in ALL_QUEUES:
            message = decode_message(payload, routing_key, "unacked", tag.decode())
            if message is not None:
                message.delivered_at = delivered.get(message.delivery_tag)
            found.append(message)
    return [m for m in found if m]


def _filesystem_messages(settings: Settings) -> list[BrokerMessage]:
    found = []
    for queue in ALL_QUEUES:
        for path in _fs_files(settings, queue):
            try:
                payload = json.loads(path.read_bytes())
            except (OSError, ValueError):
                continue  # taken by a worker while we listed, or still being written
            found.append(decode_message(payload, queue, "queued"))
    return [m for m in found if m]


def broker_messages(app: Celery, settings: Settings) -> list[BrokerMessage]:
    """Every task message of vidpipe's queues in the broker, in the order a worker would take them per queue.

    Redis: the queue lists (lowest priority step first, oldest first) and the unacked hash (delivered to a
    worker, not acknowledged; with late acks that is what workers hold). Filesystem: the .msg files (a
    delivered message has already left the folder). Other brokers: nothing.
    """
    if settings.is_redis_broker:
        return _redis_messages(app, settings)
    if settings.is_filesystem_broker:
        return _filesystem_messages(settings)
    return []


def project_messages(app: Celery, settings: Settings, project_id: int) -> list[BrokerMessage]:
    """The broker's messages for one project (with the flat chain, at most one at a time)."""
    return [m for m in broker_messages(app, settings) if m.project_id == project_id]


def drop_unacked(app: Celery, settings: Settings, messages: list[BrokerMessage]) -> int:
    """Forget Redis deliveries whose worker died, so Redis does not hand them out again.

    Redis restores an unacknowledged delivery after the visibility timeout; for a resumed project that would
    run those scenes a second time (idempotently, but for nothing).

    Returns:
        How many deliveries were removed.

    """
    tags = [m.delivery_tag for m in messages if m.state == "unacked" and m.delivery_tag]
    if not tags or not settings.is_redis_broker:
        return 0
    layout = redis_layout(app)
    pipe = _redis_client(settings).pipeline()
    for tag in tags:
        pipe.hdel(layout.prefix + layout.unacked_key, tag)
        pipe.zrem(layout.prefix + layout.unacked_index_key, tag)
    return sum(pipe.execute()[0::2])


#: Atomically take one exact message out of a list and put it back at the end workers pop from (BRPOP: right).
_SERVE_NEXT_LUA = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
  redis.call('RPUSH', KEYS[1], ARGV[1])
  return 1
end
return 0
"""


def serve_next(app: Celery, settings: Settings, task_id: str) -> bool:
    """Redis: move a queued message to the end of its list that workers take next.

    Used for a chain the recovery sweep resumes: its scene already waited its turn once, so it does not
    queue again behind the whole backlog (kombu does the same when it restores a rejected message). The
    message stays in its priority list. Returns whether it was found still queued.
    """
    if not settings.is_redis_broker:
        return False
    layout = redis_layout(app)
    client = _redis_client(settings)
    for queue in ALL_QUEUES:
        for step in layout.steps:
            key = layout.key(queue, step)
            for raw in client.lrange(key, 0, -1):
                headers = json.loads(raw).get("headers") or {}
                if headers.get("id") == task_id:
                    return bool(client.eval(_SERVE_NEXT_LUA, 1, key, raw))
    return False


def queue_depths(app: Celery, settings: Settings) -> list[dict[str, Any]]:
    """Messages waiting per queue: the figure to scale workers on.

    Redis: LLEN of the queue's list and of each priority sub-list, shown separately and summed, plus how
    many messages workers hold unacknowledged (reserved or running). Filesystem: the .msg files per queue.
    """
    if settings.is_redis_broker:
        layout = redis_layout(app)
        client = _redis_client(settings)
        unacked: dict[str, int] = dict.fromkeys(ALL_QUEUES, 0)
        for raw in client.hvals(layout.prefix + layout.unacked_key):
            routing_key = json.loads(raw)[2]
            if routing_key in unacked:
                unacked[routing_key] += 1
        rows = []
        for queue in ALL_QUEUES:
            lists = [
                {
                    "key": layout.key(queue, step),
                    "priorities": layout.step_range(i),
                    "depth": client.llen(layout.key(queue, step)),
                }
                for i, step in enumerate(layout.steps)
            ]
            rows.append(
                {"queue": queue, "depth": sum(x["depth"] for x in lists), "lists": lists, "unacked": unacked[queue]}
            )
        return rows
    if settings.is_filesystem_broker:
        return [{"queue": q, "depth": len(_fs_files(settings, q)), "lists": [], "unacked": None} for q in ALL_QUEUES]
    raise ValueError(f"cannot read queue depths from {settings.broker_url.split('://')[0]}:// brokers")
