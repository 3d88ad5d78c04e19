"""Stored reservations and shares: refused over-commit with the numbers, one-line CLI errors, and
what the kernel is handed (plain data)."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmos.errors import Conflict, InvalidRequest, NotFound
from llmos.kernel.reservation import Reservation
from llmos.security.principals import Users
from llmos.security.reservations import Reservations
from tests.security.test_cli import home, run  # noqa: F401


def test_reserve_refuses_overcommit_with_the_numbers(db, users: Users) -> None:
    for name in ("bob", "carol"):
        users.add(name)
    r = Reservations(db)
    r.set("bob", "m", blocks=60, slots=2, num_blocks=100, max_num_seqs=8)
    with pytest.raises(Conflict) as e:
        r.set("carol", "m", fraction=0.5, slots=2, num_blocks=100, max_num_seqs=8)
    assert "110 KV blocks (bob 60, carol 50)" in e.value.message and "has 100" in e.value.message
    with pytest.raises(Conflict, match=r"9 running slots \(bob 2, carol 7\)"):
        r.set("carol", "m", blocks=10, slots=7, num_blocks=100, max_num_seqs=8)
    r.set("carol", "m", fraction=0.25, slots=6, num_blocks=100, max_num_seqs=8)
    r.set("carol", "other", fraction=1.0, slots=8, num_blocks=10, max_num_seqs=8)  # per model
    r.set("bob", "m", blocks=75, slots=2, num_blocks=100, max_num_seqs=8)  # replaces bob's own
    assert [(x.user, x.model, x.blocks, x.fraction, x.slots) for x in r.list()] == [
        ("bob", "m", 75, None, 2),
        ("carol", "m", None, 0.25, 6),
        ("carol", "other", None, 1.0, 8),
    ]
    users.set_share("bob", 2.0)
    a = r.allotments()
    assert a.shares == {"bob": 2.0}
    assert a.reservations["m"] == {
        "bob": Reservation(blocks=75, slots=2),
        "carol": Reservation(fraction=0.25, slots=6),
    }
    r.remove("carol", "m")
    with pytest.raises(NotFound, match="carol has no reservation on m"):
        r.remove("carol", "m")
    assert [x.model for x in r.list(user="carol")] == ["other"]


def test_bad_numbers_and_unknown_users_are_refused(db, users: Users) -> None:
    users.add("bob")
    r = Reservations(db)
    cap = {"num_blocks": 100, "max_num_seqs": 8}
    for kwargs, match in (
        ({"fraction": 1.5}, r"fraction must be in \(0, 1\]"),
        ({"fraction": 0.0}, "fraction must be in"),
        ({"blocks": 0}, "blocks must be >= 1"),
        ({"blocks": 5, "fraction": 0.1}, "exactly one of blocks or fraction"),
        ({"blocks": 5, "slots": 0}, "slots must be >= 1"),
    ):
        with pytest.raises(InvalidRequest, match=match):
            r.set("bob", "m", **kwargs, **cap)  # type: ignore[arg-type]
    with pytest.raises(NotFound, match="user nobody not found"):
        r.set("nobody", "m", blocks=1, **cap)
    for weight in (0.0, -1.0, float("nan"), 1e6):
        with pytest.raises(InvalidRequest, match="share must be a weight"):
            users.set_share("bob", weight)
    assert users.set_share("bob", 0.5).share == 0.5
    assert users.set_share("bob", 1).share == 1.0
    assert Reservations(db).allotments().shares == {}


def test_cli_reserve_unreserve_and_set_share(home: Path) -> None:  # noqa: F811
    assert run("users", "add", "bob")[0] == 0
    code, out = run("users", "reserve", "bob", "--model", "smollm2", "--fraction", "0.25")
    assert code == 0 and "bob holds 25% of the pool" in out and "on smollm2" in out, out
    code, out = run("users", "reserve", "bob", "--model", "smollm2", "--fraction", "1.5")
    assert code == 1 and out.count("\n") == 1 and "fraction must be in (0, 1]" in out
    code, out = run("users", "reserve", "bob", "--model", "nope", "--blocks", "4")
    assert code == 1 and "model nope not found" in out and "Traceback" not in out
    code, out = run("users", "reserve", "ghost", "--model", "smollm2", "--blocks", "4")
    assert code == 1 and "user ghost not found" in out
    assert run("users", "add", "carol")[0] == 0
    code, out = run("users", "reserve", "carol", "--model", "smollm2", "--fraction", "0.8")
    assert code == 1 and "KV blocks (bob" in out and "but its pool has" in out
    code, out = run("users", "reservations")
    assert code == 0 and "bob" in out and "smollm2" in out and "25% of the pool" in out
    code, out = run("users", "unreserve", "bob", "--model", "smollm2")
    assert code == 0 and "no longer holds" in out
    code, out = run("users", "unreserve", "bob", "--model", "smollm2")
    assert code == 1 and "bob has no reservation on smollm2" in out
    code, out = run("users", "set-share", "bob", "2")
    assert code == 0 and "share 2" in out
    code, out = run("users", "set-share", "bob", "0")
    assert code == 1 and "share must be a weight" in out
    code, out = run("users", "list")
    assert code == 0 and "SHARE" in out
