"""`tmrender speak`: text -> a 16 kHz mono WAV in one of the corpus's eSpeak NG voices."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tmrender.cli.app import app, console
from tmrender.data.speech import DEFAULT_VOICE


@app.command(
    epilog=(
        "Voices are LANGUAGE+VARIANT as in the corpus, e.g. en+m3, en+f2, de+Andy, fi+m6.\n\n"
        "Examples:\n\n"
        '  tmrender speak "Hello there. This is a talking avatar." -o speech.wav\n\n'
        '  tmrender speak "Guten Tag." -o hallo.wav --voice de+f2 --seed 4'
    )
)
def speak(
    text: Annotated[str, typer.Argument(help="What to say (quote it).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="WAV file to write.")],
    voice: Annotated[
        str, typer.Option("--voice", help="eSpeak NG voice, LANGUAGE+VARIANT.")
    ] = DEFAULT_VOICE,
    seed: Annotated[
        int | None,
        typer.Option(
            "--seed", help="Draw rate and pitch as the corpus does (default: middle values)."
        ),
    ] = None,
) -> None:
    """Speak TEXT with eSpeak NG into a 16 kHz mono 16-bit WAV (audio for `generate`)."""
    from tmrender.data.speech import named_voice, speak_text
    from tmrender.errors import UserInputError
    from tmrender.files import atomic_write
    from tmrender.media.audio import SAMPLE_RATE, write_wav
    from tmrender.media.video import check_writable_output

    chosen = named_voice(voice, seed)
    path = check_writable_output(output)
    samples = speak_text(text, chosen)
    try:
        with atomic_write(path) as partial:
            write_wav(partial, samples)
    except OSError as err:
        raise UserInputError(f"cannot write {path}: {err.strerror or err}") from err
    console.print(
        f"wrote {path} ({samples.size / SAMPLE_RATE:.2f} s, voice {chosen.espeak_name}, "
        f"{chosen.rate} wpm, pitch {chosen.pitch})",
        highlight=False,
    )
