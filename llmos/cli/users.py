"""`llmos users ...`: add, list, disable/enable, set-quota, set-role, grant/revoke models,
set-share (fair-share weight), reserve/unreserve/reservations (guaranteed KV blocks and slots).

Every command needs a key whose role may manage users (admin) and is written to the audit log.
"""

from __future__ import annotations

import dataclasses
import json

import typer
from rich.table import Table

from llmos.cli.common import console
from llmos.cli.credentials import API_KEY_HELP, security_session
from llmos.cli.models import StorageGroup
from llmos.kernel.process import Priority
from llmos.security.acl import Permission
from llmos.security.principals import Quota, UserInfo, Users
from llmos.security.reservations import ReservationInfo, Reservations, check_amount

app = typer.Typer(cls=StorageGroup, no_args_is_help=True, help="Users, roles and quotas.")

ApiKey = typer.Option(None, "--api-key", help=API_KEY_HELP, envvar="LLMOS_API_KEY")
TokensPerDay = typer.Option(None, "--tokens-per-day", help="Tokens per UTC day (0 = no limit).")
MaxConcurrent = typer.Option(
    None, "--max-concurrent", help="Live processes at once (0 = no limit)."
)
MaxPriority = typer.Option(
    None, "--max-priority", help="Highest priority class: interactive, normal or batch."
)
MaxContext = typer.Option(None, "--max-context", help="Longest context in tokens (0 = no limit).")


def _quota_changes(
    tokens_per_day: int | None,
    max_concurrent: int | None,
    max_priority: str | None,
    max_context: int | None,
) -> dict[str, int | Priority | None]:
    changes: dict[str, int | Priority | None] = {
        "tokens_per_day": tokens_per_day,
        "max_concurrent": max_concurrent,
        "max_context": max_context,
    }
    if max_priority is not None:
        changes["max_priority"] = Priority.parse(max_priority)
    return {k: v for k, v in changes.items() if v is not None}


def _show(info: UserInfo) -> None:
    q = info.quota
    state = "disabled" if info.is_disabled else "active"
    console.print(
        f"{info.name}: role {info.role.value}, {state}, tokens/day {q.tokens_per_day or '-'}, "
        f"max concurrent {q.max_concurrent or '-'}, max priority "
        f"{q.max_priority.name.lower() if q.max_priority is not None else '-'}, "
        f"max context {q.max_context or '-'}, share {info.share:g}",
        markup=False,
    )


@app.command("add")
def add(
    name: str = typer.Argument(..., help="User name (a-z, 0-9, '.', '_', '-')."),
    role: str = typer.Option("user", "--role", help="admin, operator, user or viewer."),
    tokens_per_day: int | None = TokensPerDay,
    max_concurrent: int | None = MaxConcurrent,
    max_priority: str | None = MaxPriority,
    max_context: int | None = MaxContext,
    api_key: str | None = ApiKey,
) -> None:
    """Add a user (then give it a key with `llmos keys create --user NAME`)."""
    changes = _quota_changes(tokens_per_day, max_concurrent, max_priority, max_context)
    quota = Quota(**{k: (None if v == 0 else v) for k, v in changes.items()})  # type: ignore[arg-type]
    with security_session(api_key, Permission.USERS_MANAGE) as s:
        info = Users(s.db).add(name, role, quota)
        s.record("user.add", info.name, role=info.role.value)
    _show(info)


@app.command("list")
def list_(
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    api_key: str | None = ApiKey,
) -> None:
    """List users with their role, state, quotas and model grants."""
    with security_session(api_key, Permission.USERS_MANAGE) as s:
        users = Users(s.db).list()
    if as_json:
        rows = [dataclasses.asdict(u) | {"role": u.role.value} for u in users]
        console.print_json(json.dumps(rows, default=str))
        return
    table = Table("NAME", "ROLE", "STATE", "TOKENS/DAY", "CONCURRENT", "PRIORITY", "CONTEXT",
                  "SHARE", "MODELS", "KEYS", box=None)  # fmt: skip
    for u in users:
        q = u.quota
        table.add_row(
            u.name,
            u.role.value,
            "disabled" if u.is_disabled else "active",
            str(q.tokens_per_day or "-"),
            str(q.max_concurrent or "-"),
            q.max_priority.name.lower() if q.max_priority is not None else "-",
            str(q.max_context or "-"),
            f"{u.share:g}",
            ",".join(u.models) or "*",
            str(u.num_active_keys),
        )
    console.print(table)


@app.command("disable")
def disable(name: str = typer.Argument(...), api_key: str | None = ApiKey) -> None:
    """Disable a user: every key of theirs is refused from the next request on."""
    with security_session(api_key, Permission.USERS_MANAGE) as s:
        info = Users(s.db).set_disabled(name, True)
        s.record("user.disable", info.name)
    _show(info)


@app.command("enable")
def enable(name: str = typer.Argument(...), api_key: str | None = ApiKey) -> None:
    """Enable a disabled user again."""
    with security_session(api_key, Permission.USERS_MANAGE) as s:
        info = Users(s.db).set_disabled(name, False)
        s.record("user.enable", info.name)
    _show(info)


@app.command("set-quota")
def set_quota(
    name: str = typer.Argument(...),
    tokens_per_day: int | None = TokensPerDay,
    max_concurrent: int | None = MaxConcurrent,
    max_priority: str | None = MaxPriority,
    max_context: int | None = MaxContext,
    api_key: str | None = ApiKey,
) -> None:
    """Change a user's quotas (only the options given; 0 removes a limit)."""
    changes = _quota_changes(tokens_per_day, max_concurrent, max_priority, max_context)
    if not changes:
        raise typer.BadParameter("give at least one quota option")
    with security_session(api_key, Permission.USERS_MANAGE) as s:
        info = Users(s.db).set_quota(name, **changes)
        shown = {k: (v.name.lower() if isinstance(v, Priority) else v) for k, v in changes.items()}
        s.record("user.set_quota", info.name, **shown)
    _show(info)


@app.command("set-role")
def set_role(
    name: str = typer.Argument(...),
    role: str = typer.Argument(..., help="admin, operator, user or viewer."),
    api_key: str | None = ApiKey,
) -> None:
    """Change a user's role."""
    with security_session(api_key, Permission.USERS_MANAGE) as s:
        info = Users(s.db).set_role(name, role)
        s.record("user.set_role", info.name, role=info.role.value)
    _show(info)


@app.command("grant-model")
def grant_model(
    name: str = typer.Argument(...),
    model: str = typer.Argument(..., help="Model id or alias as clients name it."),
    api_key: str | None = ApiKey,
) -> None:
    """Allow a user to use a model; once a model is granted to anyone, only grantees (and
    operators/admins) may use it."""
    with security_session(api_key, Permission.USERS_MANAGE) as s:
        info = Users(s.db).grant_model(name, model)
        s.record("user.grant_model", info.name, model=model)
    console.print(f"{info.name} may use: {', '.join(info.models)}", markup=False)


@app.command("revoke-model")
def revoke_model(
    name: str = typer.Argument(...), model: str = typer.Argument(...), api_key: str | None = ApiKey
) -> None:
    """Withdraw a model grant."""
    with security_session(api_key, Permission.USERS_MANAGE) as s:
        info = Users(s.db).revoke_model(name, model)
        s.record("user.revoke_model", info.name, model=model)
    console.print(f"{info.name} may use: {', '.join(info.models) or '(grants removed)'}")


@app.command("set-share")
def set_share(
    name: str = typer.Argument(...),
    weight: float = typer.Argument(
        ..., help="Fair-share weight (default 1; 2 = twice the service)."
    ),
    api_key: str | None = ApiKey,
) -> None:
    """Set a user's fair-share weight: when owners compete, service is divided in proportion to
    their weights (`kernel.policy` fair or llmos). A running server applies it within
    `kernel.allotments_refresh_s`."""
    with security_session(api_key, Permission.USERS_MANAGE) as s:
        info = Users(s.db).set_share(name, weight)
        s.record("user.set_share", info.name, share=info.share)
    _show(info)


def _amount(r: ReservationInfo) -> str:
    return f"{r.fraction:.0%} of the pool" if r.fraction is not None else f"{r.blocks} blocks"


@app.command("reserve")
def reserve(
    name: str = typer.Argument(...),
    model: str = typer.Option(..., "--model", "-m", help="Model id or name:tag."),
    blocks: int | None = typer.Option(None, "--blocks", help="KV blocks guaranteed."),
    fraction: float | None = typer.Option(
        None, "--fraction", help="Share of the model's KV pool guaranteed, in (0, 1]."
    ),
    slots: int = typer.Option(1, "--slots", help="Running processes guaranteed."),
    api_key: str | None = ApiKey,
) -> None:
    """Guarantee a user a minimum of KV blocks and running slots on a model. While the user is
    idle the capacity is lent to others; their work takes it back within one tick. Refused,
    with the numbers, when the model's reservations would exceed its pool or max_num_seqs."""
    from llmos.system import model_capacity

    check_amount(blocks, fraction, slots)
    with security_session(api_key, Permission.USERS_MANAGE) as s:
        model_id, num_blocks, max_num_seqs = model_capacity(model, s.settings)
        info = Reservations(s.db).set(
            name,
            model_id,
            blocks=blocks,
            fraction=fraction,
            slots=slots,
            num_blocks=num_blocks,
            max_num_seqs=max_num_seqs,
        )
        s.record("user.reserve", info.user, model=model_id, blocks=blocks, fraction=fraction,
                 slots=slots)  # fmt: skip
    console.print(
        f"{info.user} holds {_amount(info)} (pool {num_blocks}) and {info.slots} slots "
        f"(of {max_num_seqs}) on {model_id}",
        markup=False,
    )


@app.command("unreserve")
def unreserve(
    name: str = typer.Argument(...),
    model: str = typer.Option(..., "--model", "-m", help="Model id or name:tag."),
    api_key: str | None = ApiKey,
) -> None:
    """Remove a user's reservation on a model."""
    from llmos.system import served_name

    model_id = served_name(model) or model
    with security_session(api_key, Permission.USERS_MANAGE) as s:
        info = Reservations(s.db).remove(name, model_id)
        s.record("user.unreserve", info.user, model=model_id)
    console.print(f"{info.user} no longer holds a reservation on {model_id}", markup=False)


@app.command("reservations")
def reservations(
    user: str | None = typer.Option(None, "--user", help="Only this user's."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    api_key: str | None = ApiKey,
) -> None:
    """List reservations: user, model, blocks (or fraction of the pool) and slots."""
    with security_session(api_key, Permission.USERS_MANAGE) as s:
        rows = Reservations(s.db).list(user=user)
    if as_json:
        console.print_json(json.dumps([dataclasses.asdict(r) for r in rows]))
        return
    if not rows:
        console.print("no reservations", markup=False, style="dim")
        return
    table = Table("USER", "MODEL", "BLOCKS", "SLOTS", box=None)
    for r in rows:
        table.add_row(r.user, r.model, _amount(r), str(r.slots))
    console.print(table)
