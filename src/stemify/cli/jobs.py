"""``stemify jobs``: list, retry and clean up jobs (operators)."""

from __future__ import annotations

import json
from datetime import timedelta

import click

from stemify.cli.common import fail, services_from
from stemify.clock import now_utc
from stemify.settings import Settings

# The values of stemify.jobs.model.JobStatus (tests/test_cli_startup.py checks they agree),
# written out so that `stemify --help` and `stemify jobs --help` do not import the job model and,
# through it, the engine (torch). The commands themselves import JobStatus.
JOB_STATUSES = ("queued", "running", "succeeded", "failed", "canceled", "expired")


@click.group()
def jobs() -> None:
    """List, retry and clean up jobs (operators)."""


@jobs.command("list")
@click.option("--status", type=click.Choice(JOB_STATUSES))
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def jobs_list(status: str | None, limit: int, as_json: bool) -> None:
    """Every caller's jobs, newest first."""
    from stemify.jobs.model import JobStatus
    from stemify.jobs.render import job_to_dict

    services = services_from(Settings())
    found, _ = services.store.list_jobs(
        owner=None, all_owners=True, status=JobStatus(status) if status else None, limit=limit
    )
    if as_json:
        click.echo(json.dumps([job_to_dict(j) for j in found], indent=2))
        return
    click.echo(f"{'ID':<32} {'STATUS':<10} {'PROGRESS':>8} {'MODEL':<12} CREATED")
    for j in found:
        click.echo(
            f"{j.id:<32} {j.status.value:<10} {j.progress:>7.0f}% {j.spec.model:<12} "
            f"{j.created_at:%Y-%m-%d %H:%M:%S}"
            + (f"  {j.error_code}: {j.error_message}" if j.error_code else "")
        )


@jobs.command("retry")
@click.argument("job_ids", nargs=-1)
@click.option("--all-failed", is_flag=True, help="Retry every failed job.")
def jobs_retry(job_ids: tuple[str, ...], all_failed: bool) -> None:
    """Put failed or canceled jobs back on the queue."""
    from stemify.jobs.model import JobStatus

    services = services_from(Settings())
    ids = list(job_ids)
    if all_failed:
        found, _ = services.store.list_jobs(
            owner=None, all_owners=True, status=JobStatus.FAILED, limit=10_000
        )
        ids += [j.id for j in found]
    if not ids:
        fail("name job ids or use --all-failed")
    retried = 0
    for job_id in ids:
        if services.store.retry(job_id, now_utc()):
            services.queue.enqueue(job_id)
            retried += 1
        else:
            click.echo(f"stemify: {job_id}: not found, or not failed or canceled", err=True)
    click.echo(f"retried {retried} job(s)")


@jobs.command("cleanup")
@click.option("--failed", is_flag=True, help="Also delete failed and canceled jobs.")
@click.option("--older-than-hours", type=float, default=0.0, show_default=True)
def jobs_cleanup(failed: bool, older_than_hours: float) -> None:
    """Expire results past their TTL now; with --failed, delete failed and canceled jobs."""
    from stemify.jobs.model import JobStatus
    from stemify.worker.maintenance import cleanup, sweep

    services = services_from(Settings())
    now = now_utc()
    swept = sweep(services, now)
    click.echo(f"expired {len(swept)} job(s)")
    if failed:
        removed = cleanup(
            services, [JobStatus.FAILED, JobStatus.CANCELED], timedelta(hours=older_than_hours), now
        )
        click.echo(f"deleted {removed} failed or canceled job(s)")
