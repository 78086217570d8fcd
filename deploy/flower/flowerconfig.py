"""Flower settings for vidpipe: Flower executes this file and reads its module-level names as options.

Celery's own command, `celery -A vidpipe_tasks.celery_app flower`, finds it through FLOWER_CONF (the images copy it
to /etc/vidpipe/flowerconfig.py and the deployments set the variable) or as ./flowerconfig.py in its working
directory; options set here override FLOWER_* variables, command-line flags override both. `vidpipe flower` applies
the same basic auth, port and task limit from the VIDPIPE_* settings itself.

Basic auth comes from VIDPIPE_FLOWER_BASIC_AUTH ("user:password"). Without it this file raises, so Flower never
serves the dashboard or its API unauthenticated. Flower leaves /metrics and /healthcheck open (Prometheus scrapes
and probes need no login): keep the port on an internal network.
"""

import os

_TRUE = {"1", "true", "yes", "on"}

_credentials = os.environ.get("VIDPIPE_FLOWER_BASIC_AUTH", "")
_user, _colon, _password = _credentials.partition(":")
if not (_user and _colon and _password):
    raise RuntimeError("VIDPIPE_FLOWER_BASIC_AUTH must be 'user:password'; Flower does not start without auth")

#: Accepted credentials (Flower's option is a list).
basic_auth = [_credentials]
#: Listen on every interface of the container or host; the deployment decides what reaches it.
address = "0.0.0.0"
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
