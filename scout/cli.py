"""Operator commands: `flask --app notifier poll --once` and `flask --app notifier poller`."""
from __future__ import annotations

import click
from flask import Flask

from scout.web import get_config, get_store


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
        )
        if summary.error:
            raise click.ClickException(summary.error)

    @app.cli.command("poller")
    def poller() -> None:
        """Run the poller in the foreground, a cycle every minute at :30, until stopped."""
        from scout.poller import run_forever

        run_forever(get_config())
