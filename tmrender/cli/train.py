"""`tmrender train STAGE`: the training recipe, one subcommand per stage.

The subcommands live in `tmrender.cli.train_commands`. Their option defaults are the
recipes' own (the options dataclasses of `tmrender.train`), whose modules import torch;
this group loads them only when `tmrender train` runs, so that `tmrender --help` and the
other commands do not spend those seconds.
"""

from __future__ import annotations

import functools

import click
import typer
import typer.main
from typer.core import TyperGroup

from tmrender.cli.app import app


@functools.cache
def _stage_commands() -> click.Group:
    from tmrender.cli.train_commands import stages_app

    return typer.main.get_command(stages_app)


class _TrainGroup(TyperGroup):
    """`tmrender train`, with the subcommands of `tmrender.cli.train_commands`."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return _stage_commands().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return _stage_commands().get_command(ctx, cmd_name)


train_app = typer.Typer(
    name="train",
    cls=_TrainGroup,
    help="Train a model stage; every stage resumes from its run folder with --resume.",
    no_args_is_help=True,
)
app.add_typer(train_app, name="train")
