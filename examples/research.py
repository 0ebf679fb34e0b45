"""A research agent: fetches a page and asks a model about it, both as recorded effects.

trustbus agent run examples.research:Researcher --id researcher --tenant demo --tools examples/tools.yaml

The page carries the taint ``web`` and the model's answer ``llm`` (their
``result_taint`` in examples/tools.yaml): the reply is sent with both, so the
coordinator treats anything it asks of other agents as untrusted.
"""

from __future__ import annotations

import asyncio
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

from trustbus.agents import Agent, Context, ToolImplementation


def web_url(url: object) -> str:
    """``url`` if it is an http(s) URL with a host; ValueError otherwise.

    The URL comes from a message: ``urlopen`` would also read ``file:///etc/passwd``
    or any other local file, so only the web is allowed.
    """
    parts = urllib.parse.urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    return str(url)


async def fetch_page(args: dict[str, Any], *, idempotency_key: str) -> dict[str, Any]:
    """GET an http(s) URL (a read: the key is not needed, a repeat changes nothing)."""
    url = web_url(args.get("url"))

    def get() -> str:
        with urllib.request.urlopen(url, timeout=10) as response:
            return str(response.read(65536).decode(errors="replace"))

    return {"url": url, "text": await asyncio.to_thread(get)}


async def llm_complete(args: dict[str, Any], *, idempotency_key: str) -> dict[str, Any]:
    """Call your model here; this stand-in answers with the first line of the prompt."""
    return {"answer": args["prompt"].strip().splitlines()[0][:200] if args["prompt"].strip() else ""}


class Researcher(Agent):
    """Answers ``{"verb": "research", "url": ..., "question": ...}`` from the page at the URL."""

    tools: Mapping[str, ToolImplementation] = {"fetch_page": fetch_page, "llm_complete": llm_complete}

    async def handle(self, ctx: Context) -> None:
        """Fetch, ask, reply (tainted ``web`` and ``llm``); a ``research`` instruction only, nothing else."""
        if ctx.envelope.kind != "instruction":
            return
        request = ctx.json()
        if not isinstance(request, dict) or request.get("verb") != "research":
            return
        page = await ctx.effect("fetch_page", {"url": request["url"]})
        prompt = f"{request['question']}\n\n{page['text']}"
        answer = await ctx.effect("llm_complete", {"prompt": prompt})
        await ctx.reply({"answer": answer["answer"]}, cites=ctx.effect_keys)
