"""Command line: `tmrender COMMAND ...`. Each command lives in its own module and only
parses arguments and calls the library; `main` turns errors into one line and an exit code.

Exit codes: 0 success, 1 internal error, 2 bad input or usage, 3 some batch rows failed,
130 interrupted.

Modules: `app` (the Typer app and consoles), `options` (options shared by commands), one
module per command (`generate`, `batch`, `eval`, `bench`, `synth`, `avatar`, `speak`,
`prepare`, `convert`, `init`, `info`, `live`), and `train` (the group) with `train_commands` (its
subcommands, loaded only when `tmrender train` runs).
"""

import sys

import click
import typer

# Importing a command module registers its command on `app`.
from tmrender.cli import (  # noqa: F401
    avatar,
    batch,
    bench,
    convert,
    eval,
    faces,
    generate,
    info,
    init,
    live,
    prepare,
    speak,
    synth,
    train,
)
from tmrender.cli.app import State, app, console
from tmrender.errors import UserInputError

EXIT_INTERNAL = 1
EXIT_USER = 2
EXIT_INTERRUPTED = 130


def _usage_error_types() -> tuple[type[Exception], ...]:
    """Click's usage errors, and those of the click copy that typer >= 0.29 vendors."""
    types: list[type[Exception]] = [click.ClickException]
    try:
        from typer._click.exceptions import ClickException as VendoredClickException
    except ImportError:  # older typer uses click itself
        pass
    else:
        types.append(VendoredClickException)
    return tuple(types)


USAGE_ERRORS = _usage_error_types()


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `tmrender` script; never lets a traceback through without --debug."""
    args = sys.argv[1:] if argv is None else argv
    State.debug = debug = "--debug" in args
    command = typer_command()
    try:
        code = command.main(args=args, prog_name="tmrender", standalone_mode=False)
    except USAGE_ERRORS as err:  # bad options or commands: click's own message and code
        err.show()
        code = err.exit_code
    except (KeyboardInterrupt, click.exceptions.Abort, typer.Abort):
        code = EXIT_INTERRUPTED
    except UserInputError as err:
        if debug:
            console.print_exception()
        console.print(f"[red]error:[/red] {err}", highlight=False)
        code = EXIT_USER
    except Exception as err:  # noqa: BLE001 - the last line of defence
        if debug:
            console.print_exception()
        console.print(
            f"[red]internal error:[/red] {type(err).__name__}: {err} "
            "(run again with --debug for the traceback)",
            highlight=False,
        )
        code = EXIT_INTERNAL
    if code == EXIT_INTERRUPTED:  # typer turns Ctrl-C into Exit(130) itself
        console.print("interrupted: nothing was written", highlight=False)
    sys.exit(code if isinstance(code, int) else 0)


def typer_command() -> click.Command:
    """The click command behind `app`, for callers (tests) that want to run it in-process."""
    import typer.main

    return typer.main.get_command(app)
