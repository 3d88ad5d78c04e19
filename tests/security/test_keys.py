"""API keys: shown once, stored hashed, constant-time checked, revocation/expiry immediate."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from llmos.errors import Conflict, InvalidRequest, NotFound, Unauthenticated
from llmos.security.keys import ApiKeys, bootstrap_admin_key, parse_key
from llmos.security.principals import Quota, Role, Users
from llmos.security.secretfile import SecretFileError, read_secret_file
from llmos.security.tables import ApiKeyRow


def test_create_resolve_and_only_hash_stored(users: Users, keys: ApiKeys) -> None:
    users.add("alice", Role.USER, Quota(tokens_per_day=100))
    new = keys.create("alice", "laptop", requests_per_minute=5)
    key_id, secret = parse_key(new.secret) or ("", "")
    assert new.secret.startswith(f"llmos-{key_id}-") and len(secret) == 43
    p = keys.resolve(new.secret)
    assert (p.name, p.role, p.key_id, p.requests_per_minute) == ("alice", Role.USER, key_id, 5)
    assert p.quota.tokens_per_day == 100
    with keys.db.session() as s:
        row = s.scalars(select(ApiKeyRow)).one()
        stored = [str(v) for v in vars(row).values()]
    assert not any(secret in v for v in stored)
    assert keys.list("alice")[0].key_id == key_id


@pytest.mark.parametrize(
    "token",
    ["", "nope", "llmos-000000000000-" + "A" * 43, "Bearer x", "llmos-" + "a" * 200],
)
def test_bad_tokens_are_401(users: Users, keys: ApiKeys, token: str) -> None:
    users.add("alice")
    keys.create("alice")
    with pytest.raises(Unauthenticated) as e:
        keys.resolve(token)
    assert e.value.error_type == "authentication_error"


def test_wrong_secret_for_a_real_key_id(users: Users, keys: ApiKeys) -> None:
    users.add("alice")
    new = keys.create("alice")
    forged = new.secret[:-4] + ("AAAA" if not new.secret.endswith("AAAA") else "BBBB")
    with pytest.raises(Unauthenticated, match="Invalid API key"):
        keys.resolve(forged)


def test_revocation_and_disable_take_effect_on_next_request(users: Users, keys: ApiKeys) -> None:
    users.add("alice")
    a, b = keys.create("alice"), keys.create("alice")
    keys.resolve(a.secret)
    keys.revoke(a.info.key_id)
    with pytest.raises(Unauthenticated) as e:
        keys.resolve(a.secret)
    assert e.value.code == "key_revoked"
    keys.resolve(b.secret)
    users.set_disabled("alice")
    with pytest.raises(Unauthenticated, match="disabled"):
        keys.resolve(b.secret)
    users.set_disabled("alice", False)
    assert keys.resolve(b.secret).name == "alice"


def test_expiry(users: Users, keys: ApiKeys) -> None:
    users.add("alice")
    new = keys.create("alice", expires_in_s=60)
    keys.resolve(new.secret)
    later = ApiKeys(keys.db, now=lambda: datetime.now(UTC) + timedelta(seconds=61))
    with pytest.raises(Unauthenticated) as e:
        later.resolve(new.secret)
    assert e.value.code == "key_expired"
    assert later.get(new.info.key_id).state(later._now()) == "expired"


def test_user_management_errors(users: Users, keys: ApiKeys) -> None:
    users.add("alice")
    with pytest.raises(Conflict):
        users.add("ALICE")
    with pytest.raises(InvalidRequest):
        users.add("local")
    with pytest.raises(InvalidRequest):
        users.add("bob", "superuser")
    with pytest.raises(NotFound):
        keys.create("nobody")
    with pytest.raises(NotFound):
        keys.revoke("000000000000")
    with pytest.raises(InvalidRequest):
        keys.create("alice", requests_per_minute=0)


def test_set_quota_changes_only_named_fields(users: Users) -> None:
    users.add("alice", quota=Quota(tokens_per_day=10, max_concurrent=2))
    info = users.set_quota("alice", max_context=512)
    assert (info.quota.tokens_per_day, info.quota.max_concurrent) == (10, 2)
    assert info.quota.max_context == 512
    assert users.set_quota("alice", tokens_per_day=0).quota.tokens_per_day is None


def test_bootstrap_admin_key(db, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "admin.key"
    assert bootstrap_admin_key(db, path) == (path, True)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    secret = read_secret_file(path)
    assert ApiKeys(db).resolve(secret).role is Role.ADMIN
    assert bootstrap_admin_key(db, path) == (path, False)  # reused while it works
    ApiKeys(db).revoke(parse_key(secret)[0])  # type: ignore[index]
    assert bootstrap_admin_key(db, path) == (path, True)  # replaced once it stops working
    assert read_secret_file(path) != secret
    os.chmod(path, 0o644)
    with pytest.raises(SecretFileError, match="readable by group or others"):
        read_secret_file(path)
