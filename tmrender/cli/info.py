"""`tmrender info`: what a model is: config, parameters per network, dtype, checksum."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from tmrender.cli.app import app, console, stdout
from tmrender.cli.options import JsonOpt


@app.command(
    epilog=(
        "Examples:\n\n"
        "  tmrender info                      (the default model)\n\n"
        "  tmrender info runs/untrained.safetensors --json\n\n"
        "  tmrender info --preset wan2.1-14b-audio   (a preset, counted without weights)"
    )
)
def info(
    model: Annotated[str | None, typer.Argument(help="Model name or path.")] = None,
    preset: Annotated[
        str | None, typer.Option("--preset", help="Describe a preset instead of a file.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Describe a model: config, parameters, dtype and trained-or-not per network (with the
    source's counts and layout for converted models), SHA-256."""
    from tmrender.models.describe import describe_checkpoint, describe_preset

    facts = describe_preset(preset) if preset else describe_checkpoint(model)
    if as_json:
        stdout.print_json(json.dumps(facts))
        return
    table = Table(title=facts["name"], show_header=False)
    for key, value in facts.items():
        if key == "parameters":
            value = "\n".join(f"{k}: {v:,}" for k, v in value.items())
        elif key == "networks":
            value = "\n".join(_network_line(k, v) for k, v in value.items())
        elif key == "config":
            value = json.dumps(value, indent=1)[:2000]
        table.add_row(key, str(value))
    console.print(table)


def _network_line(name: str, facts: dict) -> str:
    """One network of `info`'s table: parameters, dtype, trained, and the source's count."""
    source = facts.get("source_parameters")
    origin = f", {source:,} in the source" if source is not None else ""
    state = "trained" if facts["trained"] else "untrained"
    return f"{name}: {facts['parameters']:,} ({facts['dtype']}, {state}{origin})"
