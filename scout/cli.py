"""Operator commands: `flask --app notifier poll --once`, `flask --app notifier poller` and
`flask --app notifier import-users FILE.json`."""
from __future__ import annotations

from typing import Any

import click
from flask import Flask

from scout.context import get_config, get_store


class ImportFileRefused(click.ClickException):
    """A file import-users cannot read at all: one line, and exit code 2 (bad input)."""

    exit_code = 2


def register_commands(app: Flask) -> None:
    @app.cli.command("poll")
    @click.option("--once", is_flag=True, help="Run one poll cycle now and print what it did.")
    def poll(once: bool) -> None:
        """Run one poll cycle now (with --once) and print a line per user."""
        if not once:
            raise click.UsageError("Use 'poll --once' for one cycle, or 'poller' to keep polling.")
        from scout.poller import Poller

        poller = Poller(get_config(), store=get_store())
        try:
            summary = poller.run_cycle(use_lease=False)
        finally:
            poller.close()
        for result in summary.results:
            click.echo(result.line())
        counts = summary.counts
        click.echo(
            f"{counts['users']} user(s): {counts['ok']} read, {sum(counts['failed'].values())} failed, "
            f"{counts['calls']} call(s), {counts['messages']} message(s) in {counts['duration_s']:.2f} s"
            + (f"; {counts['queued']} handed to the send queues" if counts["queued"] else "")
        )
        if summary.error:
            raise click.ClickException(summary.error)

    @app.cli.command("poller")
    def poller() -> None:
        """Run the poller in the foreground, a cycle every minute at :30, until stopped."""
        from scout.poller import run_forever

        run_forever(get_config())

    @app.cli.command("import-users")
    @click.argument("file", type=click.File("r", encoding="utf-8"))
    @click.option("--dry-run", is_flag=True, help="Check every record and report, but save nothing.")
    def import_users_command(file: Any, dry_run: bool) -> None:
        """Load the tutorial's `scouts` documents from FILE (JSON) into the configured store.

        FILE holds a list of documents, or an object mapping document ids to documents.
        Every record is reported; invalid ones are listed with the reason and not imported."""
        from scout.migration import import_users, read_import_file

        try:
            records = read_import_file(file)
        except ValueError as exc:
            raise ImportFileRefused(f"{file.name} cannot be imported: {exc}") from None
        from models import StoreUnavailable
        from scout.progress import Progress

        config = get_config()
        bar = Progress(len(records), "records")
        try:
            results = import_users(get_store(), records, config.default_region, dry_run=dry_run,
                                   allowed_countries=config.allowed_countries, progress=bar.advance)
        except StoreUnavailable as exc:
            raise click.ClickException(f"{exc}. The import stopped near record {bar.done:,} of {len(records):,}; "
                                       "run it again once the store answers: records already saved are simply "
                                       "saved again.") from None
        for result in results:
            click.echo(result.line())
        imported = sum(r.imported for r in results)
        verb = "would be imported (dry run: nothing saved)" if dry_run else "imported"
        click.echo(f"{imported} of {len(results)} record(s) {verb}, {len(results) - imported} not imported.")
        if imported < len(results):
            raise click.ClickException("some records were not imported: fix them in the file and run the "
                                       "import again (records already imported are simply saved again).")
