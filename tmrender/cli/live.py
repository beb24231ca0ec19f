"""`tmrender live`: talk with the avatar in a browser (WebRTC), in real time."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from tmrender.cli.app import app, console, warn
from tmrender.cli.options import CropOpt, DeviceOpt, ModelOpt, SeedOpt
from tmrender.errors import UserInputError
from tmrender.serve import LOOKAHEAD_FRAMES, MODES


@app.command(
    epilog=(
        "Examples:\n\n"
        "  tmrender live --image examples/face.png        # then open http://127.0.0.1:8000\n\n"
        "  tmrender live --image me.png --record session.mp4\n\n"
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
        str, typer.Option("--mode", help="mirror: the avatar speaks with your voice.")
    ] = "mirror",
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
            "--deflicker/--no-deflicker",
            help="The model's temporal filter; it holds 3 frames back (about 120 ms).",
        ),
    ] = True,
    seed: SeedOpt = 0,
    crop: CropOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """Serve a page that sends your microphone to the avatar and streams it back."""
    # 1. Check every input before loading anything.
    if mode not in MODES:
        raise UserInputError(f"--mode {mode}: not available yet (modes: {', '.join(MODES)})")
    if not 0 <= port <= 65535:
        raise UserInputError(f"--port {port}: must be 0 to 65535")
    if not 0 <= lookahead <= 10:
        raise UserInputError(f"--lookahead {lookahead}: must be 0 to 10 frames")
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
            f"--host {host}: anyone who can reach this machine can open the page and drive "
            "the avatar with their audio"
        )
    # 2. Serve until Ctrl-C.
    options = LiveOptions(
        mode=mode, seed=seed, lookahead_frames=lookahead, deflicker=deflicker, record=record
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
