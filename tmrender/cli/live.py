"""`tmrender live`: talk with the avatar in a browser (WebRTC), in real time."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from tmrender.cli.app import app, console, warn
from tmrender.cli.options import CropOpt, DeviceOpt, ModelOpt, SeedOpt
from tmrender.config import TEMPORAL_FILTERS
from tmrender.data.speech import DEFAULT_VOICE, named_voice
from tmrender.errors import UserInputError
from tmrender.serve import LOOKAHEAD_FRAMES, MODES


@app.command(
    epilog=(
        "Examples:\n\n"
        "  tmrender live --image examples/face.png        # then open http://127.0.0.1:8000\n\n"
        "  tmrender live --image me.png --record session.mp4\n\n"
        "  tmrender live --image me.png --mode say --voice en+f2   # type, the avatar speaks\n\n"
        "  tmrender live --image me.png --mode reply --reply examples/reply_time.py\n\n"
        "A reply program gets two arguments, the WAV of what you said (16 kHz mono) and the "
        "path to write its spoken answer to (WAV, any rate); a URL gets the WAV POSTed and "
        "answers with WAV bytes. See docs/LIVE.md.\n\n"
        "Needs the live extra (aiortc): pip install -e '.\\[live]'."
    )
)
def live(
    image: Annotated[Path, typer.Option("--image", "-i", help="Portrait: PNG, JPEG, WebP, BMP.")],
    model: ModelOpt = None,
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on; 0.0.0.0 opens it to the network.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port of the page.")] = 8000,
    mode: Annotated[
        str,
        typer.Option(
            "--mode",
            help="mirror: the avatar speaks with your voice; say: it speaks what you type "
            "(eSpeak NG); reply: it speaks the answers of --reply to what you say.",
        ),
    ] = "mirror",
    voice: Annotated[
        str, typer.Option("--voice", help="eSpeak NG voice of say mode, LANGUAGE+VARIANT.")
    ] = DEFAULT_VOICE,
    reply: Annotated[
        str | None,
        typer.Option(
            "--reply",
            help="reply mode: a command (gets IN.wav OUT.wav) or an http:// URL (POST WAV, "
            "get WAV) that answers each of your utterances.",
        ),
    ] = None,
    reply_timeout: Annotated[
        float,
        typer.Option("--reply-timeout", help="Seconds the reply program may take per answer."),
    ] = 30.0,
    record: Annotated[
        Path | None,
        typer.Option("--record", help="Write each session's video and audio as an MP4."),
    ] = None,
    lookahead: Annotated[
        int,
        typer.Option(
            "--lookahead",
            help="Audio (frames, 40 ms each) the encoder waits for after each chunk: more "
            "follows the file render's lips more closely, less answers sooner.",
        ),
    ] = LOOKAHEAD_FRAMES,
    deflicker: Annotated[
        bool,
        typer.Option(
            "--deflicker/--no-deflicker", help="The model's temporal filter against flicker."
        ),
    ] = True,
    temporal: Annotated[
        str,
        typer.Option(
            "--temporal",
            help="That filter: causal (past frames only, holds nothing back) or centred "
            "(the file render's; holds 3 frames back, about 120 ms).",
        ),
    ] = "causal",
    seed: SeedOpt = 0,
    crop: CropOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """Serve a page that sends your microphone to the avatar and streams it back."""
    # 1. Check every input before loading anything.
    if mode not in MODES:
        raise UserInputError(f"--mode {mode}: unknown (modes: {', '.join(MODES)})")
    if (mode == "reply") != (reply is not None):
        raise UserInputError(
            "--reply CMD|URL is needed in --mode reply"
            if reply is None
            else "--reply is for --mode reply"
        )
    if not 0 < reply_timeout <= 600:
        raise UserInputError(f"--reply-timeout {reply_timeout:g}: must be above 0, at most 600 s")
    named_voice(voice)  # an unknown voice says so before the model loads
    if reply is not None:
        from tmrender.serve.reply import check_reply_target

        check_reply_target(reply)
    if not 0 <= port <= 65535:
        raise UserInputError(f"--port {port}: must be 0 to 65535")
    if not 0 <= lookahead <= 10:
        raise UserInputError(f"--lookahead {lookahead}: must be 0 to 10 frames")
    if temporal not in TEMPORAL_FILTERS:
        known = ", ".join(TEMPORAL_FILTERS)
        raise UserInputError(f"--temporal {temporal}: unknown (filters: {known})")
    try:
        import aiortc  # noqa: F401
    except ImportError:
        raise UserInputError(
            "tmrender live needs aiortc (the live extra): pip install aiortc"
        ) from None
    from tmrender.media.image import load_image, open_rgb
    from tmrender.media.video import check_writable_output
    from tmrender.models.registry import load_model
    from tmrender.render.manifest import parse_crop
    from tmrender.serve.server import LiveServer
    from tmrender.serve.session import LiveOptions

    if record is not None:
        record = check_writable_output(record)
    box = parse_crop(crop) if crop else None
    open_rgb(image)  # a missing or unreadable portrait says so before the model loads
    loaded, _ = load_model(model, device)
    reference = load_image(image, (loaded.cfg.height, loaded.cfg.width), box)
    if host not in ("127.0.0.1", "localhost", "::1"):
        warn(
            f"--host {host}: anyone who can reach this machine can open the page, drive the "
            "avatar with their audio or text"
            + (f" and run the reply program ({reply}) on what they say" if reply else "")
        )
    # 2. Serve until Ctrl-C.
    options = LiveOptions(
        mode=mode,
        seed=seed,
        lookahead_frames=lookahead,
        deflicker=deflicker,
        temporal=temporal,
        record=record,
        voice=voice,
        reply=reply,
        reply_timeout=reply_timeout,
    )
    server = LiveServer(loaded, reference, options, on_event=_event)
    try:
        asyncio.run(_serve(server, host, port))
    except KeyboardInterrupt:  # the way to stop: the running session has been ended
        console.print("stopped", highlight=False)


async def _serve(server, host: str, port: int) -> None:
    try:
        bound = await server.start(host, port)
    except OSError as err:
        raise UserInputError(f"cannot listen on {host}:{port}: {err.strerror}") from None
    console.print(f"tmrender live: open http://{host}:{bound} (Ctrl-C to stop)", highlight=False)
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()


def _event(message: str) -> None:
    console.print(message, highlight=False)
