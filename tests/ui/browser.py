"""What the browser tests do on a page: sign up, wait for text, check accessibility."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from playwright.sync_api import Page, expect

from tests.ui.stack import AXE

SERIOUS = ("serious", "critical")


def unique_name(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(3)}"


def sign_up(page: Page, name: str, password: str = "correct horse battery") -> None:
    """On the welcome screen: create an account and wait for the app."""
    page.get_by_label("Username").fill(name)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Create account").click()
    expect(page.get_by_test_id("me")).to_have_text(name)


def start_thread(page: Page) -> str:
    """Create a thread from the empty state or the sidebar; returns its id."""
    page.get_by_role("button", name="+ New thread").click()
    expect(page.get_by_test_id("thread-title")).to_be_visible()
    page.wait_for_url("**/threads/*")
    return page.url.rsplit("/", 1)[1]


def send(page: Page, text: str) -> None:
    page.get_by_label("Message").fill(text)
    page.get_by_label("Message").press("Enter")


def message(page: Page, text: str) -> Any:
    return page.get_by_test_id("message").filter(has_text=text)


def serious_violations(page: Page) -> list[dict[str, Any]]:
    """axe-core's serious and critical findings on the page as it is now."""
    page.add_script_tag(path=str(AXE))
    result: dict[str, Any] = page.evaluate(
        "() => axe.run(document, {runOnly: ['wcag2a', 'wcag2aa', 'best-practice']})"
    )
    return [
        {"id": v["id"], "impact": v["impact"], "nodes": [n["target"] for n in v["nodes"]][:5]}
        for v in result["violations"]
        if v["impact"] in SERIOUS
    ]


def shoot(page: Page, folder: Path, name: str) -> Path:
    path = folder / f"{name}.png"
    page.screenshot(path=str(path))
    return path
