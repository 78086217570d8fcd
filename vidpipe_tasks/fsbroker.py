"""kombu's filesystem transport with atomic message files: the embedded broker never hands out a half-written one."""

from __future__ import annotations

import os
import uuid
from time import monotonic

from kombu.transport import TRANSPORT_ALIASES, filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    """Writes each message under a temp name, then renames it into place.

    kombu's `_put` creates the `.msg` file, then writes it, while a consumer's `_get` moves and reads any `.msg`
    it lists (its flock does not stop a rename): a worker polling at that instant reads an empty file and dies
    with "Unrecoverable error: JSONDecodeError". Several publishing processes (workers, beat, the CLI) make it
    likely (the same race: treeverse/dvc-task #73). A rename within one folder is atomic, so a consumer sees a
    message file only once it is complete.
    """

    def _put(self, queue: str, payload: dict, **kwargs: object) -> None:
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        # A leading dot: `_get` takes only names whose part after the first dot is "<queue>.msg".
        temp = os.path.join(self.data_folder_out, f".{name}.part")
        try:
            with open(temp, "wb", buffering=0) as f:
                f.write(str_to_bytes(dumps(payload)))
            os.replace(temp, final)
        except OSError as exc:
            raise filesystem.ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel


def install() -> None:
    """Make `filesystem://` URLs use this transport in this process (idempotent)."""
    TRANSPORT_ALIASES["filesystem"] = f"{__name__}:Transport"
