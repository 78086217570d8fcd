"""Flower settings for vidpipe: Flower executes this file and reads its module-level names as options.

The one Flower config file. `vidpipe flower` reads it (--conf PATH, else FLOWER_CONF, else this file in the
checkout) and so does Celery's own `celery -A vidpipe_tasks.celery_app flower --conf=...`; the images copy it to
/etc/vidpipe/flowerconfig.py and the deployments set FLOWER_CONF. Order, as in Flower: FLOWER_* variables, then
this file, then command-line flags. Every option below takes effect either way; `vidpipe_viewer_auth` and the
task columns need `vidpipe flower` (plain `celery flower` ignores the first, so viewers cannot log in there, and
drops the columns it does not know).

Logins come from the VIDPIPE_* settings: VIDPIPE_FLOWER_BASIC_AUTH (admins, "user:password", comma-separated)
and VIDPIPE_FLOWER_VIEWER_AUTH (viewers: every page, /api reads and /metrics; no control action). Without an
admin login this file raises, so Flower never serves its dashboard or API unauthenticated. Under `vidpipe flower`
/metrics needs a login too (Prometheus scrapes with a viewer's); /healthcheck answers anyone who can reach the
address (VIDPIPE_FLOWER_ADDRESS, loopback unless a deployment opens it).
"""

import os

from vidpipe_tasks.flower_app import TASKS_COLUMNS
from vidpipe_tasks.flower_app import format_task as format_task

_TRUE = {"1", "true", "yes", "on"}

_credentials = os.environ.get("VIDPIPE_FLOWER_BASIC_AUTH", "")
_logins = [c.strip() for c in _credentials.split(",") if c.strip()]
if not _logins or not all(user and password for user, _, password in (c.partition(":") for c in _logins)):
    raise RuntimeError("VIDPIPE_FLOWER_BASIC_AUTH must be 'user:password'; Flower does not start without auth")

#: Admin logins (Flower's option is a list); `vidpipe flower` adds the viewers' below.
basic_auth = _logins
#: Read-only logins, for `vidpipe flower` only (not a Flower option).
vidpipe_viewer_auth = [c.strip() for c in os.environ.get("VIDPIPE_FLOWER_VIEWER_AUTH", "").split(",") if c.strip()]
#: Loopback by default; containers set VIDPIPE_FLOWER_ADDRESS=0.0.0.0 and their network decides who reaches it.
address = os.environ.get("VIDPIPE_FLOWER_ADDRESS", "127.0.0.1")
port = int(os.environ.get("VIDPIPE_FLOWER_PORT", "5555"))
#: Tasks kept in memory. Flower 2's default of 100000 grows its memory without bound on a busy pipeline;
#: a few thousand covers hours of scenes (three or four tasks per scene).
max_tasks = 5000
#: Autoscaled CV pods come and go with new node names: drop workers offline for 10 minutes from the
#: dashboard and from /metrics.
purge_offline_workers = 600
#: Optional persistence of Flower's task history across restarts (FLOWER_PERSISTENT=true), saved to FLOWER_DB
#: every minute and at shutdown; without it a restart starts with an empty history.
persistent = os.environ.get("FLOWER_PERSISTENT", "false").strip().lower() in _TRUE
db = os.environ.get("FLOWER_DB", "/var/lib/vidpipe/flower.db")
state_save_interval = 60_000
#: The tasks table: project, scene, stage and progress beside Flower's own columns (vidpipe_tasks.flower_app).
tasks_columns = TASKS_COLUMNS
