"""``stemify keys``: create, update, list and revoke API keys.

The key store (SQLAlchemy) is imported by the commands, not when the command line starts.
"""

from __future__ import annotations

import secrets
import uuid
from typing import Any

import click

from stemify.cli.common import fail, services_from
from stemify.clock import now_utc
from stemify.keys.limits import LIMIT_NAMES, KeyLimits
from stemify.settings import Settings


@click.group()
def keys() -> None:
    """Create, list and revoke API keys."""


# Help of each limit flag; the flags are the limits' own names (stemify.keys.limits).
_LIMIT_HELP = {
    "submissions_per_minute": "Job submissions per minute.",
    "reads_per_minute": "Other requests (status, downloads) per minute.",
    "max_running_jobs": "Jobs queued or running at once.",
    "daily_audio_minutes": "Minutes of audio per UTC day.",
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _limit_options(command: Any) -> Any:
    """One flag per limit: a number (0: no limit) or `default` (the STEMIFY_ setting)."""
    for name in reversed(LIMIT_NAMES):
        command = click.option(_flag(name), name, metavar="N|default", help=_LIMIT_HELP[name])(
            command
        )
    return command


def _limit_changes(given: dict[str, str | None]) -> dict[str, int | float | None]:
    changes: dict[str, int | float | None] = {}
    for name, raw in given.items():
        if raw is None:
            continue
        if raw == "default":
            changes[name] = None
            continue
        kind = float if name == "daily_audio_minutes" else int
        try:
            value = kind(raw)
        except ValueError:
            fail(f"{_flag(name)} takes a number or `default`, not {raw!r}")
        if value < 0:
            fail(f"{_flag(name)} cannot be negative (0 turns the limit off)")
        changes[name] = value
    return changes


def _describe_limits(limits: KeyLimits) -> str:
    """``submissions_per_minute=5 reads_per_minute=default ...``: each limit by its name."""
    values = {name: getattr(limits, name) for name in LIMIT_NAMES}
    return " ".join(
        f"{name}={'default' if value is None else f'{value:g}'}" for name, value in values.items()
    )


@keys.command("create")
@click.option("--name", required=True)
@click.option("--admin", is_flag=True, help="The key sees every caller's jobs.")
@_limit_options
def keys_create(name: str, admin: bool, **limits: str | None) -> None:
    """Create a key and print it once (only its hash is stored)."""
    from stemify.keys.store import hash_key

    own = KeyLimits(**_limit_changes(limits))  # type: ignore[arg-type]
    services = services_from(Settings())
    secret = f"sk_{secrets.token_urlsafe(32)}"
    key_id = uuid.uuid4().hex
    prefix = secret[:10]
    services.keys.add(key_id, name, hash_key(secret), prefix, admin, now_utc(), own)
    click.echo(secret)
    click.echo(
        f"key {prefix}… ({'admin' if admin else 'user'}; {_describe_limits(own)}) created; "
        "it is not shown again",
        err=True,
    )


@keys.command("update")
@click.argument("key")
@_limit_options
def keys_update(key: str, **limits: str | None) -> None:
    """Change a key's limits, by prefix (as listed) or id; `default` follows the settings."""
    changes = _limit_changes(limits)
    if not changes:
        fail("nothing to change: give " + ", ".join(map(_flag, LIMIT_NAMES)))
    services = services_from(Settings())
    updated = services.keys.update_limits(key, changes)
    if updated is None:
        fail(f"no active key {key!r}")
    click.echo(f"key {updated.prefix}: {_describe_limits(updated.limits)}")


@keys.command("list")
def keys_list() -> None:
    services = services_from(Settings())
    click.echo(f"{'PREFIX':<12} {'NAME':<24} {'ROLE':<6} {'CREATED':<20} {'REVOKED':<17} LIMITS")
    for k in services.keys.all():
        revoked = f"{k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "-"
        role = "admin" if k.admin else "user"
        click.echo(
            f"{k.prefix:<12} {k.name:<24} {role:<6} {k.created_at:%Y-%m-%d %H:%M:%S}  "
            f"{revoked:<17} {_describe_limits(k.limits)}"
        )


@keys.command("revoke")
@click.argument("key")
def keys_revoke(key: str) -> None:
    """Revoke by prefix (as listed) or id."""
    services = services_from(Settings())
    if not services.keys.revoke(key, now_utc()):
        fail(f"no active key {key!r}")
    click.echo(f"revoked {key}")
