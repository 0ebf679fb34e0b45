"""The demo's page and mailbox tools, and the example's page fetcher, read only what they are meant to."""

from __future__ import annotations

from pathlib import Path

import pytest

from examples.research import fetch_page as fetch_url
from examples.research import web_url
from trustbus.demo import systems

TRAVERSALS = [
    "../web/order-1003",  # another fixture folder
    "../../../../../../../../tmp/secret",
    "/tmp/secret",
    "order-1003/../../mailbox/mallory-1",
    "..",
    "order-1003\x00",
    "",
    7,
    None,
]


@pytest.mark.parametrize("name", TRAVERSALS)
async def test_a_ticket_naming_a_page_or_message_outside_the_fixtures_reads_nothing(name: object) -> None:
    with pytest.raises(ValueError):
        await systems.fetch_page({"page": name}, idempotency_key="k")
    with pytest.raises(ValueError):
        await systems.read_email({"message": name}, idempotency_key="k")


async def test_a_ticket_pointing_the_researcher_at_a_local_html_or_eml_file_reads_nothing(tmp_path: Path) -> None:
    (tmp_path / "secret.html").write_text("<p>the admin password</p>")
    (tmp_path / "secret.eml").write_text("Subject: secret\n\nthe admin password")
    for folder, tool, field, suffix in (("web", systems.fetch_page, "page", ".html"),
                                        ("mailbox", systems.read_email, "message", ".eml")):  # fmt: skip
        relative = Path("..", *([".."] * len(systems.FILES.joinpath(folder).resolve().parts)), *tmp_path.parts[1:])
        assert (systems.FILES / folder / f"{relative / 'secret'}{suffix}").resolve().exists()  # the old lookup's reach
        with pytest.raises(ValueError):
            await tool({field: str(relative / "secret")}, idempotency_key="k")


async def test_the_shipped_page_and_message_are_still_read() -> None:
    page = await systems.fetch_page({"page": "order-1003"}, idempotency_key="k")
    assert page["page"] == "order-1003" and page["text"]
    mail = await systems.read_email({"message": "mallory-1"}, idempotency_key="k")
    assert mail["subject"] and mail["text"]


@pytest.mark.parametrize("url", ["file:///etc/passwd", "/etc/passwd", "ftp://example.com/x", "http:///etc/passwd", 3])
async def test_the_example_fetcher_refuses_local_files_and_other_schemes(url: object) -> None:
    with pytest.raises(ValueError):
        await fetch_url({"url": url}, idempotency_key="k")


def test_the_example_fetcher_takes_web_urls() -> None:
    assert web_url("https://example.com/orders/1003?x=1") == "https://example.com/orders/1003?x=1"
    assert web_url("http://127.0.0.1:8080/") == "http://127.0.0.1:8080/"
