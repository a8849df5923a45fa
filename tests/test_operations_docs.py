"""docs/operations/runbook.md and docs/troubleshooting.md: every `stemify ...` command they
show parses against the real command line (commands, options, choices), every alert links
to a section that exists, and every troubleshooting entry says symptom, confirm and fix."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
import yaml

from stemify.cli.main import cli

pytestmark = pytest.mark.unit

DOCS = Path(__file__).resolve().parent.parent / "docs"
RUNBOOK = DOCS / "operations" / "runbook.md"
TROUBLESHOOTING = DOCS / "troubleshooting.md"
AUTOSCALING = DOCS / "operations" / "autoscaling.md"
ALERTS = DOCS.parent / "deploy" / "prometheus" / "alerts.yml"
_FENCE = re.compile(r"^```sh\n(.*?)^```$", re.MULTILINE | re.DOTALL)
_INLINE = re.compile(r"`(stemify [^`]+)`")
_SHELL_OPERATORS = {"|", ">", ">>", "&&", "||", ";"}


def commands(path: Path) -> list[str]:
    """`stemify ...` invocations in sh blocks and inline code, without what follows a pipe."""
    text = path.read_text()
    found = [m.group(1) for m in _INLINE.finditer(text)]
    for block in _FENCE.findall(text):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if "stemify" in words:
                words = words[words.index("stemify") :]
                ends = [i for i, w in enumerate(words) if w in _SHELL_OPERATORS]
                found.append(shlex.join(words[: ends[0]] if ends else words))
    return [re.split(r"\s[|>]\s", command)[0] for command in found]


def parse(command: str) -> click.Context:
    """Resolve the subcommands and parse the options exactly as the command line would."""
    args = shlex.split(command)[1:]
    group: click.Command = cli
    name = "stemify"
    while isinstance(group, click.Group):
        assert args and not args[0].startswith("-"), f"{command!r}: no subcommand"
        sub = group.get_command(click.Context(group), args[0])
        assert sub is not None, f"{command!r}: `{name} {args[0]}` does not exist"
        name, group, args = f"{name} {args[0]}", sub, args[1:]
    return group.make_context(name, args)


def test_runbook_and_troubleshooting_commands_exist() -> None:
    found = commands(RUNBOOK) + commands(TROUBLESHOOTING) + commands(AUTOSCALING)
    assert len(found) > 20
    for command in found:
        try:
            parse(command)
        except click.ClickException as exc:
            pytest.fail(f"{command!r}: {exc.format_message()}")


def test_the_command_check_can_fail() -> None:
    with pytest.raises(click.ClickException):
        parse("stemify jobs list --status lost")
    with pytest.raises(AssertionError):
        parse("stemify workers restart")


def anchors(path: Path) -> set[str]:
    return {
        re.sub(r"[^a-z0-9 -]", "", heading.lower()).replace(" ", "-")
        for heading in re.findall(r"^#+ (.+)$", path.read_text(), re.MULTILINE)
    }


def test_every_alert_has_a_runbook_section() -> None:
    rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    sections = anchors(RUNBOOK)
    for rule in rules:
        link = rule["annotations"]["runbook"]
        assert link == f"docs/operations/runbook.md#{rule['alert'].lower()}"
        assert link.split("#")[1] in sections, f"no runbook section for {rule['alert']}"


def test_runbook_covers_the_operations() -> None:
    sections = anchors(RUNBOOK)
    for wanted in (
        "start-stop-and-scale",
        "failed-jobs-look-retry-clear",
        "rotate-api-keys",
        "pre-pull-models",
        "back-up-the-store",
        "read-the-dashboards",
    ):
        assert wanted in sections


def test_troubleshooting_entries_say_symptom_confirm_fix() -> None:
    text = TROUBLESHOOTING.read_text()
    entries = re.split(r"^## ", text, flags=re.MULTILINE)[1:]
    titles = [entry.splitlines()[0] for entry in entries]
    assert titles == [
        "Models missing", "A model runs on torch instead of onnxruntime",
        "The first-run model download failed", "Workers take no jobs for a model",
        "The autoscaler does not add or stop workers", "Redis unreachable",
        "PostgreSQL unreachable", "ffmpeg missing",
        "Disk full", "S3 unreachable or refusing", "A stuck queue", "Out of memory",
        "Stem links from S3 refused (403), or the player cannot load them",
        "The image build fails or pulls a CUDA torch",
        "A container exits at start or stays unhealthy",
    ]  # fmt: skip
    for entry in entries:
        for part in ("**Symptom.**", "**Confirm.**", "**Fix.**"):
            assert part in entry, f"{entry.splitlines()[0]}: no {part}"
