"""Entry point of the `raylm` command: one Typer app, one module per command group.

Errors raised on purpose (`RaylmError`) print as one line saying what failed, why and
what to run next; `--debug` (or `RAYLM_DEBUG=1`) shows the traceback instead.
"""

from __future__ import annotations

import logging
import os
import sys
import types

import click
import typer
from rich.console import Console
from rich.markup import escape

from raylm import __version__
from raylm.cli import bench, cluster, k8s, model, ops, plan, serve
from raylm.errors import RaylmError

app = typer.Typer(
    name="raylm",
    help="vLLM on Ray, from a few servers to a verified OpenAI-compatible endpoint.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err_console = Console(stderr=True)

# Typer 0.2x parses with a copy of click of its own (typer._click): its usage errors are not
# click's classes, so both are caught, or a mistyped flag would read as a bug in raylm.
_typer_click: types.ModuleType
try:
    from typer._click import exceptions as _typer_click
except ImportError:  # an older typer: plain click
    _typer_click = click.exceptions
_EXIT = (click.exceptions.Exit, typer.Exit)
_ABORT = (click.exceptions.Abort, typer.Abort)
_USAGE = (click.ClickException, _typer_click.ClickException)


def _version(value: bool) -> None:
    if value:
        print(f"raylm {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks and debug logs."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """raylm plans, places, launches, watches, routes and verifies vLLM on Ray."""
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _register() -> None:
    # Each group keeps its Ray and vLLM imports inside its commands: that is what keeps
    # `raylm --help` fast.
    for group in (serve, ops, cluster, plan, model, bench, k8s):
        group.register(app)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI and turn every failure into a clear message and a non-zero exit."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args or os.environ.get("RAYLM_DEBUG") == "1"
    _register()
    command = typer.main.get_command(app)
    try:
        # Without standalone mode click returns typer.Exit's code instead of exiting.
        code = command.main(args=args, prog_name="raylm", standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except _EXIT as e:
        sys.exit(e.exit_code)
    except _ABORT:
        err_console.print("[red]Aborted.[/red]")
        sys.exit(130)
    except _USAGE as e:
        e.show()
        sys.exit(e.exit_code)
    except RaylmError as e:
        if debug:
            err_console.print_exception()
        # One unwrapped line: people grep logs and paste errors into issues.
        err_console.print(
            f"[bold red]Error:[/bold red] {escape(e.message())}", highlight=False, soft_wrap=True
        )
        if not debug:
            err_console.print("[dim](run with --debug for the traceback)[/dim]")
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as e:
        if debug:
            err_console.print_exception()
        else:
            err_console.print(
                f"[bold red]Error:[/bold red] unexpected {type(e).__name__}: {escape(str(e))}. "
                "This is a bug in raylm; rerun with --debug and report the traceback.",
                highlight=False,
                soft_wrap=True,
            )
        sys.exit(1)


if __name__ == "__main__":
    main()
