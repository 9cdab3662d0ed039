"""The Burn browser app end to end: real Chromium, the real web app, syncd and agents.

Each test drives the app as people do (two users in two browser contexts, an agent thread,
rows written straight into Postgres) and checks what is on screen, which comes only from the
app's collections over the per-user sync routes. Screenshots go to the ``screenshots`` folder
(``make test-ui`` runs these tests).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Request, Route, expect

from tests.ui.browser import (
    message,
    send,
    serious_violations,
    shoot,
    sign_up,
    start_thread,
    unique_name,
)
from tests.ui.stack import BurnStack

pytestmark = [pytest.mark.pg, pytest.mark.timeout(240)]

JERRY = "00000000-0000-4000-8000-000000000002"
LIVE = 30_000  # ms: generous for a loaded machine; the waits end on the event itself
AGENT_WAIT = 60_000  # ms: an agent's turn (debounce, model call, write, sync) on a loaded machine


def test_two_users_meet_in_a_thread_and_chat_live(
    burn: BurnStack, browser: Browser, screenshots: Path
) -> None:
    alice_ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    bob_ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    alice, bob = alice_ctx.new_page(), bob_ctx.new_page()
    finished: list[Request] = []
    bob.on("requestfinished", lambda request: finished.append(request))
    try:
        alice.goto(burn.url)
        expect(alice.get_by_role("heading", name="Burn")).to_be_visible()
        assert serious_violations(alice) == [], "welcome screen"
        shoot(alice, screenshots, "welcome")
        alice_name, bob_name = unique_name("alice"), unique_name("bob")
        sign_up(alice, alice_name)
        thread_id = start_thread(alice)

        alice.get_by_role("button", name="Rename").click()
        alice.get_by_label("Thread name").fill("Roast night")
        alice.get_by_role("button", name="Save").click()
        expect(alice.get_by_test_id("thread-title")).to_have_text("Roast night")

        # bob follows the invite link, signs up, joins, and sees the thread by its new name
        bob.goto(f"{burn.url}/join/{thread_id}")
        sign_up(bob, bob_name)
        expect(bob.get_by_test_id("thread-title")).to_have_text("Roast night", timeout=LIVE)
        expect(bob.get_by_test_id("thread-list")).to_contain_text("Roast night")
        expect(bob.get_by_test_id("system-event").filter(has_text="joined")).to_be_visible()

        # bob's message is on his screen before the server has it (optimistic), then confirmed
        held: list[Route] = []
        bob.route("**/api/threads/*/messages", lambda route: held.append(route))
        send(bob, "hi alice, it is bob")
        pending = message(bob, "hi alice, it is bob")
        expect(pending).to_have_attribute("data-status", "pending")
        for _ in range(100):
            if held:
                break
            bob.wait_for_timeout(50)
        assert held, "the message was never sent"
        held[0].continue_()
        bob.unroute("**/api/threads/*/messages")
        expect(pending).to_have_attribute("data-status", "final", timeout=LIVE)

        # live in the other tab, both ways, without a reload
        expect(message(alice, "hi alice, it is bob")).to_be_visible(timeout=LIVE)
        send(alice, "welcome, bob")
        expect(message(bob, "welcome, bob")).to_be_visible(timeout=LIVE)
        expect(message(bob, "welcome, bob")).to_have_attribute("data-status", "final")

        # a rename in one tab shows in the other
        alice.get_by_role("button", name="Rename").click()
        alice.get_by_label("Thread name").fill("Roast night II")
        alice.get_by_role("button", name="Save").click()
        expect(bob.get_by_test_id("thread-title")).to_have_text("Roast night II", timeout=LIVE)

        assert serious_violations(alice) == [], "chat screen"
        shoot(alice, screenshots, "chat")

        # The sync requests go without cookies (the sync token in a header): the browser pools
        # them apart from the writes, which its six connections per origin would otherwise hold
        # back behind the six live long-polls.
        syncs = [r.all_headers() for r in finished if "/api/sync/" in r.url]
        writes = [r.all_headers() for r in finished if "/api/threads" in r.url]
        assert syncs and writes
        assert all("cookie" not in h and h["authorization"].startswith("Bearer ") for h in syncs)
        assert all("burn_session=" in h.get("cookie", "") for h in writes)
    finally:
        alice_ctx.close()
        bob_ctx.close()


def test_agents_ask_extract_facts_and_roast(
    burn: BurnStack, browser: Browser, screenshots: Path
) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    try:
        page.goto(burn.url)
        name = unique_name("carol")
        sign_up(page, name)
        start_thread(page)
        send(page, "Hi all, I am a dentist who collects rubber ducks")
        asks = page.locator('[data-testid="message"][data-kind="ask_user_about_themselves"]')
        expect(asks.first).to_be_visible(timeout=AGENT_WAIT)
        expect(asks.first).to_contain_text(f"@{name}")
        # each answer gives Sarah facts; the comedians start once someone has a few
        answers = [
            "I also run marathons badly and sing karaoke every Friday",
            "As a child I wanted to be an astronaut; now I fix teeth",
            "I talk to my rubber ducks when I debug my spreadsheets",
            "My cat has more followers than I do",
            "I once got lost in a parking garage for two hours",
        ]
        roasts = page.locator('[data-testid="message"][data-kind="roast_user"]')
        for answer in answers:
            facts_before = page.get_by_test_id("fact").count()
            send(page, answer)
            page.wait_for_function(
                "n => document.querySelectorAll('[data-testid=fact]').length > n"
                " || document.querySelector('[data-kind=roast_user]')",
                arg=facts_before,
                timeout=AGENT_WAIT,
            )
            if roasts.count():
                break
        expect(page.get_by_test_id("facts-extracted").first).to_contain_text("extracted")
        expect(roasts.first).to_be_visible(timeout=AGENT_WAIT)
        expect(roasts.first).to_contain_text(f"@{name}")
        sidebar = page.get_by_role("complementary", name="Computer")
        sidebar.screenshot(path=str(screenshots / "sidebar.png"))
        # the Memory filter narrows the list live
        page.get_by_label("Filter facts").fill("no fact says this zzz")
        expect(page.get_by_test_id("fact")).to_have_count(0)
        expect(sidebar).to_contain_text("No fact matches.")
    finally:
        context.close()


def test_rows_written_in_postgres_appear_and_a_streamed_reply_grows(
    burn: BurnStack, browser: Browser
) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    try:
        page.goto(burn.url)
        name = unique_name("dave")
        sign_up(page, name)
        thread_id = start_thread(page)
        expect(page.get_by_test_id("system-event").first).to_be_visible(timeout=LIVE)
        [(user_id,)] = burn.execute("SELECT id FROM users WHERE name = %s", name)

        # a reply streamed by an agent: one row, updated in place, then final
        event = uuid.uuid4()

        def stream(roast: str, status: str) -> None:
            data = json.dumps(
                {
                    "id": "toolu_1",
                    "name": "roast_user",
                    "input": {"subject": str(user_id), "roast": roast},
                }
            )
            burn.execute(
                "INSERT INTO events (id, thread_id, user_id, kind, data, status)"
                " VALUES (%s, %s, %s, 'tool_use', %s, %s)"
                " ON CONFLICT (id) DO UPDATE SET data = excluded.data, status = excluded.status",
                event,
                thread_id,
                JERRY,
                data,
                status,
            )

        stream("You floss", "streaming")
        streaming = page.locator('[data-testid="message"][data-status="streaming"]')
        expect(streaming).to_contain_text(f"@{name} you floss", timeout=LIVE)
        stream("You floss like you are defusing a bomb", "streaming")
        expect(streaming).to_contain_text("defusing a bomb", timeout=LIVE)
        stream("You floss like you are defusing a bomb, slowly.", "final")
        final = message(page, "defusing a bomb, slowly.")
        expect(final).to_have_attribute("data-status", "final", timeout=LIVE)

        # a fact written straight into Postgres shows in Memory, its event in Context
        source = burn.execute(
            "SELECT id FROM events WHERE thread_id = %s ORDER BY seq LIMIT 1", thread_id
        )[0][0]
        burn.execute(
            "INSERT INTO facts (id, thread_id, subject_id, source_event_id, tool_use_event_id,"
            " predicate, object, category, confidence)"
            " VALUES (%s, %s, %s, %s, %s, 'is afraid of', 'pigeons', 'fears', 0.9)",
            uuid.uuid4(),
            thread_id,
            user_id,
            source,
            event,
        )
        expect(page.get_by_test_id("fact").filter(has_text="pigeons")).to_be_visible(timeout=LIVE)
        expect(page.get_by_test_id("context-event").filter(has_text="tool_use")).not_to_have_count(
            0
        )
    finally:
        context.close()


def test_leaving_removes_the_thread_and_phone_layout(
    burn: BurnStack, browser: Browser, screenshots: Path
) -> None:
    owner_ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    phone_ctx = browser.new_context(viewport={"width": 390, "height": 844}, has_touch=True)
    owner, phone = owner_ctx.new_page(), phone_ctx.new_page()
    try:
        owner.goto(burn.url)
        sign_up(owner, unique_name("erin"))
        thread_id = start_thread(owner)
        phone.goto(f"{burn.url}/join/{thread_id}")
        guest = unique_name("frank")
        sign_up(phone, guest)
        expect(phone.get_by_test_id("thread-title")).to_be_visible(timeout=LIVE)
        send(phone, "hello from my phone")
        expect(message(owner, "hello from my phone")).to_be_visible(timeout=LIVE)
        assert serious_violations(phone) == [], "phone chat"
        shoot(phone, screenshots, "phone-chat")
        phone.get_by_role("button", name="Show the computer").click()
        expect(phone.get_by_role("complementary", name="Computer")).to_be_in_viewport()
        shoot(phone, screenshots, "phone-computer")
        phone.get_by_role("button", name="Close the computer").click()

        # offline: the app says so and keeps the screen; back online, it catches up
        phone_ctx.set_offline(True)
        expect(phone.get_by_test_id("offline")).to_be_visible(timeout=LIVE)
        phone_ctx.set_offline(False)
        expect(phone.get_by_test_id("offline")).to_be_hidden(timeout=LIVE)

        # a write the server refuses is said, and its optimistic message goes away
        phone.route(
            "**/api/threads/*/messages",
            lambda route: route.fulfill(
                status=403, json={"message": "You are not in this thread", "errors": {}}
            ),
        )
        send(phone, "this one is refused")
        expect(phone.get_by_test_id("notice")).to_contain_text("You are not in this thread")
        expect(message(phone, "this one is refused")).to_have_count(0)
        phone.unroute("**/api/threads/*/messages")

        # leaving: the thread leaves the list, and the owner sees the guest leave
        phone.get_by_role("button", name="Leave").click()
        phone.get_by_role("button", name="Show threads").click()
        expect(phone.get_by_role("link", name="Untitled thread")).to_have_count(0, timeout=LIVE)
        expect(owner.get_by_test_id("system-event").filter(has_text="left")).to_be_visible(
            timeout=LIVE
        )
    finally:
        owner_ctx.close()
        phone_ctx.close()
