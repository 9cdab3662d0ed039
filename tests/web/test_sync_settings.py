"""The web app's syncd settings: the URL the sync routes relay to, and syncd's secret."""

from __future__ import annotations

from web.config import Settings, load_settings
from web.sync import SYNC_TABLES, USER_COLUMNS


def test_syncd_url_defaults_to_a_local_syncd() -> None:
    assert load_settings([], {}).syncd_url == "http://127.0.0.1:3000"


def test_burn_syncd_url_sets_it_and_the_flag_and_web_variable_win() -> None:
    env = {"BURN_SYNCD_URL": "http://syncd.internal:3000"}
    assert load_settings([], env).syncd_url == "http://syncd.internal:3000"
    env["WEB_SYNCD_URL"] = "http://other:3000"
    assert load_settings([], env).syncd_url == "http://other:3000"
    flag = load_settings(["--syncd-url", "http://flag:3000"], env)
    assert flag.syncd_url == "http://flag:3000"


def test_the_syncd_secret_is_not_shown() -> None:
    settings = load_settings([], {"WEB_SYNCD_SECRET": "s3cret-value"})
    assert settings.syncd_secret == "s3cret-value"
    assert "s3cret-value" not in repr(settings)
    assert Settings().syncd_secret is None


def test_every_route_is_scoped_by_the_users_memberships() -> None:
    paths = [table.path for table in SYNC_TABLES]
    assert paths == [
        "/api/sync/threads",
        "/api/sync/memberships",
        "/api/sync/events",
        "/api/sync/facts",
        "/api/sync/users",
        "/api/sync/agent_status",
    ]
    for table in SYNC_TABLES:
        assert "FROM memberships WHERE user_id = $1" in table.where
    users = next(t for t in SYNC_TABLES if t.table == "users")
    assert users.columns == USER_COLUMNS
    assert set(USER_COLUMNS) == {"id", "name", "kind", "avatar_url", "inserted_at", "updated_at"}
