"""Take the screenshots of docs/CONSOLE.md from a demo run, in Debian's headless Chromium.

    python docs/console/screenshots.py

Runs ``trustbus demo --keep``, has the researcher ask billing for one more
refund after reading the customer's email (held for an operator), starts
``trustbus console --as ops`` on it, saves one PNG per page next to this file,
then stops everything it started.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import quote

from playwright.sync_api import Page, sync_playwright

from trustbus._supervisor import Supervisor

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
TRUSTBUS = (sys.executable, "-m", "trustbus")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]  # fmt: skip
HELD = {"verb": "issue_refund", "order": "A-1002", "amount": 25}
SQL = "SELECT correlation_id, sender, kind, verdict, reasons, effective_taint FROM decisions WHERE verdict <> 'accept'"


def trustbus(*args: str, env: dict[str, str]) -> str:
    """Run a `trustbus` command to its end; its stdout (exit with its stderr if it fails)."""
    done = subprocess.run([*TRUSTBUS, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise SystemExit(f"trustbus {' '.join(args)} failed:\n{done.stderr}")
    return done.stdout


def shoot(page: Page, url: str, name: str) -> None:
    """Open ``url`` and save the whole page as ``<name>.png`` here."""
    page.goto(url)
    page.screenshot(path=HERE / f"{name}.png", full_page=True)
    print(f"docs/console/{name}.png")


def main() -> None:
    """Run the demo, start the console on it, take every page, stop everything."""
    work = Path(tempfile.mkdtemp(prefix="trustbus-console-shots-"))
    run = work / "run"
    demo = subprocess.run([*TRUSTBUS, "demo", "--keep", "--dir", str(run), "--json"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    if demo.returncode != 0:
        raise SystemExit(f"the demo failed:\n{demo.stderr}")
    summary = json.loads(demo.stdout.splitlines()[-1])
    found = re.search(r"NATS_URL=(nats://\S+)", demo.stderr)
    assert found is not None, "the kept demo prints its server's URL"
    keys = run / "keys"
    env = {**os.environ, "NATS_URL": found.group(1), "TRUSTBUS_KEYS": str(keys),
           "TRUSTBUS_NKEY": str(keys / "support" / "admin.seed")}  # fmt: skip
    supervisor = Supervisor(env=env, cwd=ROOT, logs=work)
    try:
        injection = summary["correlations"]["injection"]
        trustbus("send", "-t", "support", "--as", "researcher", "--to", "billing", "--kind", "instruction",
                 "--payload", json.dumps(HELD), "--taint", "email", "--correlation-id", injection, env=env)  # fmt: skip
        console = supervisor.start("console", [*TRUSTBUS, "console", "-t", "support", "--as", "ops", "--port", "0",
                                               "--data", summary["projection"]])  # fmt: skip
        login = str(console.wait_ready(30)["url"])
        base = login.split("/?token=")[0]
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1400, "height": 860})
            page.goto(login)
            shoot(page, base + "/", "live")
            shoot(page, base + "/holds", "holds")
            page.goto(f"{base}/incident?correlation={injection}")
            page.wait_for_function("window.incidentGraph !== undefined")
            page.fill("#redecide textarea", (ROOT / "trustbus/demo/files/stricter.yaml").read_text())
            page.click("#redecide button")
            page.wait_for_selector("#redecided-table")
            page.screenshot(path=HERE / "incident.png", full_page=True)
            print("docs/console/incident.png")
            shoot(page, f"{base}/sql?q={quote(SQL)}", "sql")
            browser.close()
    finally:
        supervisor.stop_all()
        for pid in summary["pids"].values():
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


if __name__ == "__main__":
    main()
