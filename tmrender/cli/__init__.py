"""Command line: `tmrender COMMAND ...`. Each command lives in its own module and only
parses arguments and calls the library; `main` turns errors into one line and an exit code.

Exit codes: 0 success, 1 internal error, 2 bad input or usage, 3 some batch rows failed,
130 interrupted.
"""

import sys

import click

# Importing a command module registers its command on `app`.
from tmrender.cli import avatar, bench, synth  # noqa: F401
from tmrender.cli.app import State, app, console
from tmrender.errors import UserInputError

EXIT_INTERNAL = 1
EXIT_USER = 2
EXIT_INTERRUPTED = 130


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `tmrender` script; never lets a traceback through without --debug."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    command = typer_command()
    try:
        code = command.main(args=args, prog_name="tmrender", standalone_mode=False)
    except click.ClickException as err:  # usage errors: typer/click print them themselves
        err.show()
        code = err.exit_code
    except click.exceptions.Abort:
        console.print("interrupted", highlight=False)
        code = EXIT_INTERRUPTED
    except KeyboardInterrupt:
        console.print("interrupted: nothing was written", highlight=False)
        code = EXIT_INTERRUPTED
    except UserInputError as err:
        if debug or State.debug:
            console.print_exception()
        console.print(f"[red]error:[/red] {err}", highlight=False)
        code = EXIT_USER
    except Exception as err:  # noqa: BLE001 - the last line of defence
        if debug or State.debug:
            console.print_exception()
        console.print(
            f"[red]internal error:[/red] {type(err).__name__}: {err} "
            "(run again with --debug for the traceback)",
            highlight=False,
        )
        code = EXIT_INTERNAL
    sys.exit(code if isinstance(code, int) else 0)


def typer_command() -> click.Command:
    """The click command behind `app`, for callers (tests) that want to run it in-process."""
    import typer.main

    return typer.main.get_command(app)
