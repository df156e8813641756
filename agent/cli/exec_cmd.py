"""``infermeter exec -- PROGRAM ARGS...``: run a program with its Python instrumented.

No code change in the application: the program's environment gets this
package's ``_site`` folder first on PYTHONPATH, whose sitecustomize calls
``infermeter.instrument()`` in every Python process of the tree (children
inherit the environment) and then runs any sitecustomize it shadows. The
program replaces this process (``execvp``): same pid, its signals and exit
code pass straight through, and nothing of infermeter stays in between.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import click

from infermeter.cli import cli
from infermeter.spans.wire import ENV_SOCKET

SITE_DIR = Path(__file__).resolve().parent.parent / "_site"
ENV_AUTO = "INFERMETER_AUTO_INSTRUMENT"


def instrumented_env(environ: Mapping[str, str], socket_path: str | None) -> dict[str, str]:
    """The environment that instruments every Python process started with it."""
    env = dict(environ)
    site = str(SITE_DIR)
    rest = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != site]
    env["PYTHONPATH"] = os.pathsep.join([site, *rest])  # once, even under a nested exec
    env[ENV_AUTO] = "1"
    if socket_path:
        env[ENV_SOCKET] = socket_path
    return env


@cli.command(
    "exec",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.option(
    "--socket",
    "socket_path",
    metavar="PATH",
    help="Span socket of the agent (default: $INFERMETER_SOCKET, then the standard path).",
)
@click.argument("program", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_cmd(socket_path: str | None, program: Sequence[str]) -> None:
    """Run PROGRAM with every Python process in it instrumented.

    Example: infermeter exec -- python serve.py --port 8000
    """
    env = instrumented_env(os.environ, socket_path)
    try:
        os.execvpe(program[0], list(program), env)
    except FileNotFoundError:
        click.echo(f"infermeter: error: {program[0]}: command not found", err=True)
        raise click.exceptions.Exit(127) from None
    except OSError as e:
        click.echo(f"infermeter: error: {program[0]}: {e.strerror or e}", err=True)
        raise click.exceptions.Exit(126) from None
