"""The Typer application every command registers on, and the console they print through."""

import typer
from rich.console import Console

import tmrender

app = typer.Typer(
    name="tmrender",
    help=(
        "Lip-synced talking-head video from one portrait image and an audio file of any "
        "length.\n\nExample: tmrender generate --image face.png --audio speech.wav -o out.mp4"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

# Progress bars, warnings and errors go to stderr so that stdout stays clean for --json.
console = Console(stderr=True, soft_wrap=True)  # one message, one line
stdout = Console(soft_wrap=True)


class State:
    """Options of the top-level callback that every command may read."""

    debug: bool = False


def _print_version(value: bool) -> None:
    if value:
        stdout.print(f"tmrender {tmrender.__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version."
    ),
    debug: bool = typer.Option(False, "--debug", help="Show the full traceback on errors."),
) -> None:
    """Lip-synced talking-head video from one portrait image and an audio file of any length."""
    State.debug = debug


def warn(message: str) -> None:
    """Print one warning line on stderr."""
    console.print(f"[yellow]warning:[/yellow] {message}", highlight=False)
