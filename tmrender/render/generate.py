"""`tmrender generate` as a library call: one portrait + one audio file -> a lip-synced MP4.

    job = prepare_generate(GenerateOptions(image=..., audio=...), on_warning=print)
    stats = job.run(on_frames=...)

`prepare_generate` checks every input before the model is loaded, then loads it and
reports what may disappoint (an untrained model, an ignored prompt, a portrait unlike the
avatars the model learned from); `GenerateJob.run` renders. Python callers get the same
video as `tmrender generate` with the same options.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tmrender.errors import UserInputError
from tmrender.media.video import DEFAULT_CRF
from tmrender.render.manifest import MODES


@dataclass(frozen=True)
class GenerateOptions:
    """One video to render, and with what (the defaults are `tmrender generate`'s)."""

    # inputs and output
    image: Path
    audio: Path
    output: Path | None = None  # None: <audio stem>.mp4 beside the audio
    # the model and where it runs
    model: str | None = None  # name or path; None: the default model
    device: str = "auto"
    devices: str | None = None  # DIT,VAE: decode on a second device (overrides `device`)
    compiled: bool = False  # fuse the DiT's elementwise ops with torch.compile
    # how to render
    seed: int = 0
    mode: str = "auto"  # one of MODES
    crop: str | None = None  # x,y,w,h in image pixels (no face search); None: see `face`
    face: str = "auto"  # auto: model-framed as is, else the largest face; or N (1 = largest)
    paste_back: bool = True  # a face's frames go back into the picture (else: the crop)
    prompt: str | None = None  # None: the default prompt (and no warning without a text encoder)
    crf: int = DEFAULT_CRF
    deflicker: bool = True  # the model's frame post-processing over time, if it names any
    cuda_graphs: bool = False


@dataclass
class GenerateJob:
    """A checked request with its model loaded, ready to render."""

    net: object  # TalkingModel
    audio: object  # AudioInfo
    image: Path
    output: Path
    options: object  # RenderOptions
    source: object = None  # tmrender.render.source.Source: the framed picture, decoded once

    @property
    def fps(self) -> int:
        return self.net.cfg.fps

    @property
    def estimated_frames(self) -> int | None:
        """Frames the audio's header promises (None when it says nothing)."""
        return round((self.audio.duration_hint or 0) * self.fps) or None

    def run(self, on_frames: Callable | None = None):
        """Render; -> RenderStats. `on_frames(stats)` after each block of frames."""
        from tmrender.render.pipeline import render_video

        image, paste = self.image, None
        if self.source is not None:
            image, paste = self.source.reference, self.source.paste
        return render_video(
            self.net, image, self.audio, self.output, self.options, on_frames=on_frames,
            paste=paste,
        )  # fmt: skip


def output_path(opts: GenerateOptions) -> Path:
    """Where the video goes: `opts.output`, else <audio stem>.mp4; never over the audio."""
    output = (
        opts.output if opts.output is not None else opts.audio.with_name(f"{opts.audio.stem}.mp4")
    )
    if output.resolve() == opts.audio.resolve():
        raise UserInputError(f"the output would overwrite the audio {opts.audio}; choose -o")
    return output


def prepare_generate(
    opts: GenerateOptions, on_warning: Callable[[str], None] | None = None
) -> GenerateJob:
    """Check every input (one-line UserInputError), then load the model; warnings go to
    `on_warning`."""
    from tmrender.devices import split_devices
    from tmrender.media.audio import open_audio
    from tmrender.media.image import CropBox
    from tmrender.media.video import check_crf, check_writable_output
    from tmrender.models.conditioning import DEFAULT_PROMPT
    from tmrender.models.registry import load_model
    from tmrender.render.pipeline import RenderOptions
    from tmrender.render.source import load_picture, parse_face

    warn = on_warning or (lambda line: None)
    # 1. Check every input before the model is loaded.
    if opts.mode not in MODES:
        raise UserInputError(f"--mode must be one of {', '.join(MODES)}; got {opts.mode!r}")
    check_crf(opts.crf)
    output = output_path(opts)
    options = RenderOptions(
        seed=opts.seed,
        mode=opts.mode,
        crop=CropBox.parse(opts.crop) if opts.crop else None,
        prompt=DEFAULT_PROMPT if opts.prompt is None else opts.prompt,
        crf=opts.crf,
        deflicker=opts.deflicker,
        cuda_graphs=opts.cuda_graphs,
    )
    face = parse_face(opts.face)
    info = open_audio(opts.audio)
    picture = load_picture(opts.image, face, options.crop)  # decoded once, face found
    check_writable_output(output)
    # 2. Load the model.
    device, vae_device = opts.device, None
    if opts.devices is not None:
        device, vae_device = split_devices(opts.devices)
    net, meta = load_model(opts.model, device, vae_device)
    if opts.compiled:
        from tmrender.models.fused import enable_fusion

        enable_fusion()
    source = picture.for_model(net.cfg.height, opts.paste_back)
    # 3. What may disappoint.
    for line in warnings_for(opts, source, net, meta):
        warn(line)
    return GenerateJob(
        net=net, audio=info, image=opts.image, output=output, options=options, source=source
    )


def warnings_for(opts: GenerateOptions, source, net, meta: dict) -> list[str]:
    """One line per thing that renders but may disappoint (source: the framed picture)."""
    lines = []
    if not meta["trained"]:
        lines.append(f"{meta['path']} is an untrained model: the video will be noise")
    if opts.prompt is not None and net.text_encoder is None:
        lines.append(f"{meta['path']} has no text encoder: --prompt is ignored")
    if not source.avatar_like:
        lines.append(
            f"{opts.image} does not look like the drawn avatars the model learned from (a "
            "photograph?): it still renders, but expect a poor likeness and lip sync"
        )
    return lines
