"""Tests of the routing index (shapes/router.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from shapes.router import Router
from shapes.schema import Column
from shapes.where import parse_where

COLUMNS = {
    column.name: column
    for column in [
        Column("id", "int4", pk_index=0),
        Column("owner", "uuid"),
        Column("name", "text"),
        Column("status", "mood", category="E"),
    ]
}
OWNER = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"


def add(router: Router[str], shape: str, where: str | None, table: str = "t") -> None:
    clause = parse_where(where, COLUMNS) if where is not None else None
    router.add(shape, table, clause, COLUMNS)


def test_equality_shapes_are_indexed() -> None:
    router: Router[int] = Router()
    for n in range(10_000):
        router.add(n, "t", parse_where(f"id = {n}", COLUMNS), COLUMNS)
    assert len(router) == 10_000
    assert router.residual("t") == frozenset()
    assert router.affected("t", {"id": "4321", "name": "x"}) == {4321}
    assert router.affected("t", {"id": "0004321"}) == {4321}
    assert router.affected("t", {"id": "10000"}) == set()
    assert router.affected("t", {"id": None}) == set()
    assert router.affected("t", {"id": "not a number"}) == set()
    assert len(router.shapes_for_table("t")) == 10_000


def test_residual_shapes_are_always_returned() -> None:
    router: Router[str] = Router()
    add(router, "all", None)
    add(router, "range", "id > 5")
    add(router, "or", "id = 1 OR id = 2")
    add(router, "eq", "id = 1")
    assert router.residual("t") == frozenset({"all", "range", "or"})
    assert router.affected("t", {"id": "3"}) == {"all", "range", "or"}
    assert router.affected("t", {"id": "1"}) == {"all", "range", "or", "eq"}


def test_in_any_and_conjunctions() -> None:
    router: Router[str] = Router()
    add(router, "in", "id IN (1, 2) AND name LIKE 'a%'")
    add(router, "any", "id = ANY('{2,3}')")
    add(router, "owner", f"owner = '{OWNER.upper()}' AND id > 0")
    add(router, "enum", "status::text = 'open'")
    add(router, "never", "id = NULL")
    assert router.residual("t") == frozenset()
    assert router.affected("t", {"id": "2"}) == {"in", "any"}
    assert router.affected("t", {"id": "1", "owner": OWNER}) == {"in", "owner"}
    assert router.affected("t", {"id": "9", "status": "open"}) == {"enum"}
    assert router.affected("t", {"id": "9", "status": "closed"}) == set()


def test_tables_are_separate() -> None:
    router: Router[str] = Router()
    add(router, "a", "id = 1", table="a")
    add(router, "b", None, table="b")
    assert router.affected("a", {"id": "1"}) == {"a"}
    assert router.affected("b", {"id": "1"}) == {"b"}
    assert router.affected("c", {"id": "1"}) == set()
    assert router.shapes_for_table("a") == {"a"}


def test_remove_and_readd() -> None:
    router: Router[str] = Router()
    add(router, "x", "id = 1")
    add(router, "y", "id IN (1, 2)")
    add(router, "z", None)
    router.remove("x")
    router.remove("missing")
    assert router.affected("t", {"id": "1"}) == {"y", "z"}
    add(router, "y", "id = 3")
    assert router.affected("t", {"id": "1"}) == {"z"}
    assert router.affected("t", {"id": "3"}) == {"y", "z"}
    router.remove("y")
    router.remove("z")
    assert len(router) == 0
    assert router.shapes_for_table("t") == set()
    assert router.affected("t", {"id": "3"}) == set()


clauses = st.sampled_from(
    [
        None,
        "id = 1",
        "id = 2",
        "id IN (1, 3)",
        "id = ANY('{2,3}')",
        "id > 1",
        "id = 1 AND name = 'a'",
        "name = 'a'",
        "name IN ('a', 'b') AND id < 3",
        "id = 1 OR name = 'b'",
        "NOT id = 1",
    ]
)
values = st.one_of(st.none(), st.sampled_from(["1", "2", "3", "x"]))
names = st.one_of(st.none(), st.sampled_from(["a", "b", "c"]))


@given(st.lists(clauses, max_size=12), st.lists(st.tuples(values, names), max_size=8))
def test_affected_is_a_superset_of_matches(
    shapes: list[str | None], rows: list[tuple[str | None, str | None]]
) -> None:
    router: Router[int] = Router()
    wheres = [parse_where(text, COLUMNS) if text is not None else None for text in shapes]
    for shape, where in enumerate(wheres):
        router.add(shape, "t", where, COLUMNS)
    for id_value, name in rows:
        row = {"id": id_value, "name": name}
        if id_value == "x":
            continue  # not a valid int4 row
        found = router.affected("t", row)
        for shape, where in enumerate(wheres):
            if where is None or where.matches(row):
                assert shape in found


def test_shapes_filed_under_a_value_set_follow_its_moves() -> None:
    router: Router[str] = Router()
    router.add("dynamic", "t", None, COLUMNS, dynamic=("id", set()))
    add(router, "static", "id = 7")
    assert router.affected("t", {"id": "7"}) == {"static"}
    # the column's last bucket goes with "static": "dynamic" is still filed under it
    router.remove("static")
    assert router.affected("t", {"id": "7"}) == set()
    router.move("dynamic", {7, 8}, set())
    assert router.affected("t", {"id": "7"}) == {"dynamic"}
    assert router.affected("t", {"id": "9"}) == set()
    router.move("dynamic", set(), {7})
    assert router.affected("t", {"id": "7"}) == set()
    assert router.affected("t", {"id": "8"}) == {"dynamic"}
    router.add("dynamic", "t", None, COLUMNS)  # refiled as residual
    assert router.affected("t", {"id": "1"}) == {"dynamic"}
    router.remove("dynamic")
    assert len(router) == 0 and not router.has_table("t")


@given(
    st.lists(clauses, max_size=12),
    st.lists(st.tuples(values, names, st.sampled_from([None, OWNER, "not a uuid"]))),
    st.permutations(["id", "name", "owner", "status"]),
)
def test_affected_values_is_affected_of_the_row(
    shapes: list[str | None],
    rows: list[tuple[str | None, str | None, str | None]],
    order: list[str],
) -> None:
    """The values path gives the shapes the mapping path gives, whatever the column order."""
    router: Router[int] = Router()
    for shape, text in enumerate(shapes):
        router.add(shape, "t", parse_where(text, COLUMNS) if text is not None else None, COLUMNS)
    router.add(-1, "t", parse_where(f"owner = '{OWNER}'", COLUMNS), COLUMNS)
    positions = {name: at for at, name in enumerate(order)}
    for id_value, name, owner in rows:
        row = {"id": id_value, "name": name, "owner": owner, "status": None}
        values = tuple(row[column] for column in order)
        assert router.affected_values("t", positions, values) == router.affected("t", row)
        assert router.affected_values("other", positions, values) == set()
    # A column the relation lacks is a NULL: no shape filed under it is hit.
    without_owner = {name: at for name, at in positions.items() if name != "owner"}
    owned = tuple(OWNER if column == "owner" else None for column in order)
    assert -1 in router.affected_values("t", positions, owned)
    assert -1 not in router.affected_values("t", without_owner, owned)
