"""Screenshots of Flower's task list and worker page while a project runs, taken with headless Chromium.

    .venv/bin/python scripts/flower_screenshots.py OUT_DIR

Starts its own Redis and PostgreSQL (as the tests do), `vidpipe flower`, a generation+registry worker and the
CV launcher (analyses held 6 s in a native call so one is caught running), submits a two-scene project and a
three-scene one, and saves tasks.png (a viewer's task list: project, scene, stage, progress, a STARTED
analysis) and worker.png (the busy CV worker's page, viewer: no control buttons) plus worker-admin.png.
Needs Debian's chromium and chromium-driver and selenium. Not a test: nothing here asserts anything.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from selenium import webdriver  # noqa: E402

from gpu_worker.service import NATIVE_STALL_ENV  # noqa: E402
from tests.conftest import DATA, production_settings  # noqa: E402
from tests.helpers import wait_until  # noqa: E402
from tests.integration.test_flower import (  # noqa: E402
    ADMIN,
    VIEWER,
    flower_workers_alive,
    get_json,
    start_flower,
    stop_flower,
    wait_flower_up,
)
from tests.servers import free_port, start_postgres, start_redis  # noqa: E402
from vidpipe_tasks.celery_app import create_app  # noqa: E402
from vidpipe_tasks.cli.workers import start_cv_launcher, start_worker, stop_workers, wait_ready  # noqa: E402
from vidpipe_tasks.settings import GENERATION_QUEUE, REGISTRY_QUEUE  # noqa: E402
from vidpipe_tasks.storyboard import load_storyboard  # noqa: E402
from vidpipe_tasks.workflow import create_project, enqueue_project  # noqa: E402


def browser() -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1500,900"):
        options.add_argument(flag)
    return webdriver.Chrome(service=webdriver.ChromeService("/usr/bin/chromedriver"), options=options)


def shoot(
    driver: webdriver.Chrome, url: str, login: tuple[str, str], out: Path, tab: str | None = None, settle_s: float = 2.5
) -> None:
    """Open `url` with the login in it (Chromium keeps it for the page's own requests) and save a PNG."""
    from selenium.webdriver.common.by import By

    host = url.split("://", 1)[1]
    driver.get(f"http://{login[0]}:{login[1]}@{host}")
    time.sleep(settle_s)  # the tasks table fills itself by a request after the page loads
    if tab:
        driver.find_element(By.ID, tab).click()
        time.sleep(0.5)
    driver.save_screenshot(str(out))
    print(f"saved {out}")


def main(out_dir: Path) -> int:
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="vidpipe-shots-"))
    redis, postgres = start_redis(work / "redis"), start_postgres(work / "postgres")
    settings = production_settings(work / "home", redis, postgres, "shots", dbs=(1, 2))
    logs = settings.home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    flower = start_flower(settings, port, logs / "flower.log", settings.home / "flower-state")
    workers = []
    driver = None
    try:
        wait_flower_up(flower, base, logs / "flower.log")
        workers.append(start_worker(settings, "gen", [GENERATION_QUEUE, REGISTRY_QUEUE], logs))
        os.environ[NATIVE_STALL_ENV] = "6"
        workers.append(start_cv_launcher(settings, logs))
        wait_ready(workers)
        wait_until(lambda: {"gen", "cv-cpu0"} <= set(flower_workers_alive(base)), "Flower to see both workers")
        app = create_app(settings)
        for board in ("flower_duo.yaml", "ops_short.yaml"):
            path = DATA / board
            enqueue_project(app, settings, create_project(settings, path, load_storyboard(path)))
        # Wait until some analysis is running and earlier tasks have finished, so the list shows both.
        wait_until(
            lambda: (
                any(t["name"] == "vidpipe.analyze_clip" for t in get_json(f"{base}/api/tasks?state=STARTED").values())
                and len(get_json(f"{base}/api/tasks?state=SUCCESS")) >= 3
            ),
            "a running analysis after a few finished tasks",
            240,
            0.3,
        )
        driver = browser()
        shoot(driver, f"{base}/tasks", VIEWER, out_dir / "flower-tasks.png")
        cv = flower_workers_alive(base)["cv-cpu0"]
        shoot(driver, f"{base}/worker/{cv}", VIEWER, out_dir / "flower-worker.png", tab="worker-tab-tasks")
        driver.quit()
        driver = browser()  # a fresh browser: Chromium caches the first login for the site
        shoot(driver, f"{base}/worker/{cv}", ADMIN, out_dir / "flower-worker-admin.png")
    finally:
        if driver is not None:
            driver.quit()
        stop_workers(workers)
        stop_flower(flower)
        redis.stop()
        postgres.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else ".")))
