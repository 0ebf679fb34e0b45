"""The console's pages as HTML: a shell with the navigation, and each page's body (values escaped)."""

from __future__ import annotations

import json
from html import escape
from typing import Any
from urllib.parse import quote

DEFAULT_SQL = (
    "SELECT seq, kind, sender, recipients, taint, verified, reject_reason FROM envelopes ORDER BY seq DESC LIMIT 50"
)
NAV = (("/", "live"), ("/holds", "holds"), ("/incident", "incident"), ("/sql", "SQL"))


def page(title: str, tenant: str, operator: str, body: str, scripts: tuple[str, ...] = ()) -> str:
    """A whole page: ``body`` under the navigation, then ``scripts`` (paths under /static/)."""
    links = "".join(f'<a href="{href}">{name}</a>' for href, name in NAV)
    tags = "".join(f'<script src="/static/{name}"></script>' for name in (*scripts, "console.js"))
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{escape(title)} · trustbus console</title>"
        '<link rel=stylesheet href="/static/console.css"></head><body>'
        f"<header><strong>trustbus</strong> <span class=muted>tenant {escape(tenant)} · acting as "
        f"{escape(operator)}</span><nav>{links}</nav></header>"
        f"<main><h1>{escape(title)}</h1>{body}</main>{tags}</body></html>"
    )


def unauthorized() -> str:
    """The page shown without a valid login token."""
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>401 · trustbus console</title></head>"
        "<body><h1>401: log in with the console's token</h1>"
        "<p>Open the URL that <code>trustbus console</code> printed when it started: it carries the token "
        "(<code>?token=…</code>).</p></body></html>"
    )


def failed(message: str) -> str:
    """The page shown when the bus, the coordinator or the ledger answered with an error."""
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>error · trustbus console</title></head>"
        f"<body><h1>error</h1><p class=error>{escape(message)}</p><p><a href=/>back</a></p></body></html>"
    )


def _list(values: list[str]) -> str:
    return escape(",".join(values))


def _incident_link(correlation: str) -> str:
    return f'<a href="/incident?correlation={quote(correlation)}">{escape(correlation)}</a>'


def decision_row(d: dict[str, Any]) -> str:
    """One row of the live page's decisions table (console.js makes the same from /api/live)."""
    return (
        f'<tr class="verdict-{escape(d["verdict"])}"><td>{d["seq"]}</td><td>{escape(d["verdict"])}</td>'
        f"<td>{_list(d['reasons'])}</td><td>{escape(d['kind'])}</td><td>{escape(d['sender'])}</td>"
        f"<td>{_list(d['deliver_to'])}</td><td>{_list(d['effective_taint'])}</td>"
        f"<td>{_incident_link(d['correlation_id'])}</td></tr>"
    )


def refusal_row(r: dict[str, Any]) -> str:
    """One row of the live page's refusals table."""
    return (
        f"<tr><td>{r['record_seq']}</td><td>{escape(r['reason'])}</td><td>{escape(r['subject'])}</td>"
        f"<td>{escape(r['claimed_sender'] or '')}</td><td>{escape(r['detail'])}</td>"
        f"<td>{escape(r['recorded_by'])}</td></tr>"
    )


def live(state: dict[str, Any]) -> str:
    """Recent decisions (newest first) and refused messages; console.js polls for more."""
    decisions = "".join(decision_row(d) for d in reversed(state["decisions"]))
    refused = "".join(refusal_row(r) for r in reversed(state["refusals"]))
    return (
        f'<section id=live data-last="{state["last"]}"><h2>Decisions</h2>'
        "<table id=decisions><thead><tr><th>seq</th><th>verdict</th><th>reasons</th><th>kind</th><th>sender</th>"
        f"<th>delivered to</th><th>effective taint</th><th>correlation</th></tr></thead><tbody>{decisions}</tbody>"
        "</table><h2>Refused messages (quarantine)</h2>"
        "<table id=refusals><thead><tr><th>record</th><th>reason</th><th>subject</th><th>claimed sender</th>"
        f"<th>detail</th><th>recorded by</th></tr></thead><tbody>{refused}</tbody></table></section>"
    )


def holds(held: list[dict[str, Any]]) -> str:
    """Each hold with what it would do and why it waits, and Approve / Deny buttons."""
    if not held:
        return "<p id=no-holds>Nothing is held.</p>"
    rows = "".join(
        f'<tr data-envelope="{escape(h["envelope_id"])}"><td><code>{escape(h["envelope_id"])}</code></td>'
        f"<td>{escape(h['sender'])}</td><td>{_list(h['deliver_to'])}</td><td>{escape(h['kind'])}</td>"
        f"<td><strong>{escape(h['verb'])}</strong></td><td><code>{escape(h['arguments'])}</code></td>"
        f"<td>{_list(h['effective_taint'])}</td><td>{_list(h['reasons'])}</td>"
        f"<td>{_incident_link(h['correlation_id'])}</td>"
        '<td><input class=note placeholder="note"><button class=approve>Approve</button>'
        "<button class=deny>Deny</button><div class=outcome></div></td></tr>"
        for h in held
    )
    return (
        "<table id=holds><thead><tr><th>envelope</th><th>sender</th><th>recipient</th><th>kind</th><th>verb</th>"
        "<th>arguments</th><th>taint</th><th>why held</th><th>correlation</th><th>answer</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
    )


def incident_form() -> str:
    """The incident page without a correlation: ask for one."""
    return (
        "<form method=get action=/incident><label>correlation <input name=correlation size=40></label>"
        "<button>show</button></form><p>Or follow a correlation from the live or holds page.</p>"
    )


def incident(model: dict[str, Any]) -> str:
    """The causal graph of a correlation, and a form to decide it again under another policy beside it."""
    if not model["nodes"]:
        return f"<p>Nothing recorded for correlation {escape(model['correlation'])}.</p>"
    data = json.dumps(model).replace("</", "<\\/")
    return (
        f'<div class=side-by-side><section><div id=graph></div><p class=legend><span class="key envelope">envelope'
        '</span><span class="key decision">decision</span><span class="key hold">hold</span>'
        '<span class="key effect">effect</span><span class="key quarantine">quarantine</span>'
        " edges: the taint that flowed</p></section>"
        "<section><h2>Decided again under another policy</h2>"
        "<form id=redecide><textarea name=policy rows=10 cols=50 placeholder='policy YAML'></textarea><br>"
        "<button>re-decide</button></form><div id=redecided></div></section></div>"
        f"<script type=application/json id=graph-model>{data}</script>"
    )


def sql(text: str, result: tuple[list[str], list[list[str]], bool] | None, error: str | None) -> str:
    """The SQL form, and the result (or DuckDB's error)."""
    body = (
        f"<form method=get action=/sql><textarea name=q rows=4 cols=100>{escape(text)}</textarea><br>"
        "<button>run</button> <span class=muted>one read-only SELECT over the ledger projection "
        "(tables: docs/LEDGER_PROJECTION.md)</span></form>"
    )
    if error is not None:
        return body + f"<p class=error id=sql-error>{escape(error)}</p>"
    if result is None:
        return body
    columns, rows, cut = result
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    cells = "".join("<tr>" + "".join(f"<td>{escape(v)}</td>" for v in row) + "</tr>" for row in rows)
    note = f"<p class=muted>{len(rows)} rows{' (cut short)' if cut else ''}</p>"
    return body + f"<table id=sql-result><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table>{note}"
