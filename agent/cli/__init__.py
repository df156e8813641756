"""The ``infermeter`` command: a thin shell over the agent's functions.

Every command shares the global options (--config, --db, --log-level) and one
lazily built application context; a problem the user can fix is one line on
stderr and exit code 2, before anything is written.
"""

from __future__ import annotations

import importlib
import logging
import sys
from functools import cached_property
from typing import Any

import click

from infermeter.config import Config, load_config
from infermeter.errors import InfermeterError
from infermeter.plugin_manager import PluginManager, make_plugin_manager

log = logging.getLogger("infermeter")


class App:
    """What the commands share: the plugins and the effective config."""

    def __init__(self, config_path: str | None, db_url: str | None, log_level: str | None) -> None:
        self.config_path = config_path
        self.overrides: dict[str, Any] = {"store.url": db_url, "agent.log_level": log_level}

    @cached_property
    def pm(self) -> PluginManager:
        return make_plugin_manager()

    @cached_property
    def config(self) -> Config:
        config = load_config(self.pm.config_options(), self.config_path, overrides=self.overrides)
        disabled = list(config["plugins.disabled"])
        known = {name for name, _ in self.pm.list_name_plugin()}
        for name in disabled:
            if name not in known:
                log.warning("plugins.disabled names %s, which is not installed", name)
        self.pm.block(disabled)
        return config

    def setup_logging(self) -> None:
        from infermeter.safe_log import PrintableFormatter  # logs quote untrusted text

        level = getattr(logging, str(self.config["agent.log_level"]).upper())
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(PrintableFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.basicConfig(level=level, handlers=[handler])
        logging.getLogger("apscheduler").setLevel(max(level, logging.WARNING))
        logging.getLogger("alembic").setLevel(max(level, logging.WARNING))


# Each command's module, imported only when that command runs (or for --help):
# importing them all costs ~0.7 s of start-up, most of it SQLAlchemy and rich.
COMMAND_MODULES = {
    "config": "config_cmd",
    "db": "db",
    "demo": "demo",
    "exec": "exec_cmd",
    "model-energy": "model_energy",
    "export": "export",
    "plugins": "plugins",
    "prices": "prices",
    "recommend": "recommend",
    "apply": "recommend",
    "record": "trace",
    "replay": "trace",
    "report": "report",
    "reprice": "reprice",
    "run": "run",
    "sql": "sql_cmd",
    "status": "status",
    "top": "top",
}


class InfermeterGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(COMMAND_MODULES) | set(self.commands))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMAND_MODULES.get(cmd_name)
        if module is not None and cmd_name not in self.commands:
            importlib.import_module(f"infermeter.cli.{module}")
        return self.commands.get(cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except InfermeterError as e:
            from infermeter.safe_text import printable  # a message may quote a stored label

            click.echo(f"infermeter: error: {printable(e)}", err=True)
            ctx.exit(2)


pass_app = click.make_pass_decorator(App)


@click.group(cls=InfermeterGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    metavar="PATH",
    help="Config file (default: $INFERMETER_CONFIG, then the default locations).",
)
@click.option(
    "--db",
    "db_url",
    metavar="URL",
    help="Store URL, any SQLAlchemy URL (default: $INFERMETER_DB, config, SQLite).",
)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]))
@click.version_option(package_name="infermeter")
@click.pass_context
def cli(
    ctx: click.Context, config_path: str | None, db_url: str | None, log_level: str | None
) -> None:
    """Meter the energy, cost and carbon of AI inference, per process, model and request."""
    ctx.obj = App(config_path, db_url, log_level)


def main() -> None:
    cli()
