"""The real local systems the demo agents act on: a mailbox, a web page, a billing database, an email outbox.

Everything lives under ``$TRUSTBUS_DEMO_DIR`` (the run's working directory)
except the read-only fixtures shipped in ``files/``. Each writing tool honours
its idempotency key, the way a payments API does, so a call repeated after a
crash acts once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import sqlite3
from pathlib import Path
from typing import Any

FILES = Path(__file__).with_name("files")
DIR_ENV = "TRUSTBUS_DEMO_DIR"
STALL_FILE = "gateway-stalls-on-order"
CUSTOMERS = {"alice": 0, "bob": 0, "mallory": 0}
# A page or message name: a plain word. No separators, no dots, so no `../`, no absolute path.
FIXTURE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def fixture(folder: str, name: object, suffix: str) -> Path:
    """The shipped file ``files/<folder>/<name><suffix>``.

    A ticket chooses ``name``: anything but a plain word, a path that resolves
    outside the folder (a symlink), or a file that is not there raises
    ValueError, recorded as the tool call's failure.
    """
    if not isinstance(name, str) or not FIXTURE_NAME.fullmatch(name):
        raise ValueError(f"not a {folder} name: {name!r}")
    root = (FILES / folder).resolve()
    path = (root / f"{name}{suffix}").resolve()
    if path.parent != root or not path.is_file():
        raise ValueError(f"no {folder} entry named {name!r}")
    return path


def workdir() -> Path:
    """The run's working directory."""
    return Path(os.environ[DIR_ENV])


def billing_db(directory: Path | None = None) -> sqlite3.Connection:
    """The billing system: balances and one row per money movement, once per idempotency key (autocommit)."""
    db = sqlite3.connect((directory or workdir()) / "billing.sqlite", timeout=10, isolation_level=None)
    db.execute("CREATE TABLE IF NOT EXISTS accounts (customer TEXT PRIMARY KEY, balance INTEGER NOT NULL)")
    db.execute(
        "CREATE TABLE IF NOT EXISTS movements (idempotency_key TEXT NOT NULL UNIQUE, kind TEXT NOT NULL,"
        " customer TEXT NOT NULL, order_no INTEGER NOT NULL, amount INTEGER NOT NULL, compensates TEXT)"
    )
    db.executemany("INSERT OR IGNORE INTO accounts VALUES (?, ?)", CUSTOMERS.items())
    return db


def _move(kind: str, customer: str, order: int, amount: int, key: str, compensates: str | None) -> tuple[int, bool]:
    """Record a movement and apply it to the balance in one transaction; (row, whether this call made it)."""
    with contextlib.closing(billing_db()) as db:
        db.execute("BEGIN IMMEDIATE")
        made = db.execute(
            "INSERT OR IGNORE INTO movements VALUES (?, ?, ?, ?, ?, ?)",
            (key, kind, customer, order, amount, compensates),
        ).rowcount
        if made:
            sign = 1 if kind == "refund" else -1
            db.execute("UPDATE accounts SET balance = balance + ? WHERE customer = ?", (sign * amount, customer))
        db.execute("COMMIT")
        [row] = db.execute("SELECT rowid FROM movements WHERE idempotency_key = ?", (key,)).fetchone()
    return row, bool(made)


async def read_email(args: dict[str, Any], *, idempotency_key: str) -> dict[str, Any]:
    """Read a message from the support mailbox: whoever wrote it chose every word."""
    raw = fixture("mailbox", args.get("message"), ".eml").read_text()
    headers, _, body = raw.partition("\n\n")
    subject = next((h.split(":", 1)[1].strip() for h in headers.splitlines() if h.startswith("Subject:")), "")
    return {"subject": subject, "text": body}


async def fetch_page(args: dict[str, Any], *, idempotency_key: str) -> dict[str, Any]:
    """Fetch a page (served from the shipped fixtures: nothing leaves this machine)."""
    return {"page": args["page"], "text": fixture("web", args.get("page"), ".html").read_text()}


async def issue_refund(args: dict[str, Any], *, idempotency_key: str) -> dict[str, Any]:
    """Pay an order back: credits the customer's balance, once per key.

    The payment gateway stalls, on the first attempt only, for the order named in
    the run's stall file: the refund is stored and the call never returns, which
    is where the demo kills the billing process.
    """
    row, made = _move("refund", args["customer"], int(args["order"]), int(args["amount"]), idempotency_key, None)
    stall = workdir() / STALL_FILE
    if made and stall.exists() and stall.read_text().strip() == str(args["order"]):
        await asyncio.Event().wait()
    return {"movement": row, "order": int(args["order"]), "amount": int(args["amount"])}


async def charge_back(args: dict[str, Any], *, idempotency_key: str) -> dict[str, Any]:
    """Take a refund back (issue_refund's compensation): debits what it credited, once per key."""
    original = args["original"]
    row, _ = _move(
        "charge_back", original["customer"], int(original["order"]), int(original["amount"]),
        idempotency_key, args["compensates"],
    )  # fmt: skip
    return {"movement": row, "order": int(original["order"])}


async def send_email(args: dict[str, Any], *, idempotency_key: str) -> dict[str, Any]:
    """Send an email: written to the outbox directory, once per key. Once sent it cannot be unsent."""
    outbox = workdir() / "outbox"
    outbox.mkdir(exist_ok=True)
    name = hashlib.sha256(idempotency_key.encode()).hexdigest()[:16]
    path = outbox / f"{name}.json"
    if not path.exists():
        staged = path.with_suffix(".tmp")
        staged.write_text(json.dumps({"to": args["to"], "subject": args["subject"], "body": args["body"]}))
        os.replace(staged, path)
    return {"message": path.name}
