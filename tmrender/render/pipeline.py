"""The streaming renderer (DESIGN.md section 1): one portrait + audio of any length -> frames.

Three stages run at once and talk through small bounded queues, so memory stays constant:

    audio thread:   ffmpeg blocks (or a live PushAudioStream) -> audio encoder, segment
                    by segment (runs ahead)
    DiT thread:     per chunk: audio tokens or silence -> 2 student steps -> KV cache update
    caller thread:  streaming VAE decode -> uint8 frames (-> ffmpeg pipe in `render_video`)

The embedding cache (anchor K/V, face gate, context K/V) is computed once per render by
`start_stream`, with, for converted Wan models, the umT5 context of the prompt and the CLIP
features of the portrait (`encode_conditioning`); the KV cache holds the anchor and the
previous chunk only.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch
from torch import Tensor

from tmrender.config import TEMPORAL_FILTERS
from tmrender.diffusion.stream import ChunkInput, ChunkOutput, StreamPlan, Student, rollout
from tmrender.media.audio import SAMPLE_RATE, AudioInfo, AudioStream, PushAudioStream
from tmrender.media.image import CropBox, load_image
from tmrender.media.video import DEFAULT_CRF, VideoWriter
from tmrender.models.audio import audio_windows
from tmrender.models.conditioning import DEFAULT_PROMPT
from tmrender.models.dit import StreamState, WanDiT
from tmrender.models.talking import TalkingModel
from tmrender.models.vae import StreamingDecoder
from tmrender.render.features import FeatureProducer, FeatureTimeline, Segmenting
from tmrender.render.graphs import ChunkGraph, graph_ready
from tmrender.render.reference import ReferenceKeeper
from tmrender.render.temporal import CausalFilter, Retimer, TemporalFilter, causal_filter

Mode = Literal["auto", "speaking", "silence"]
Temporal = Literal["centred", "causal"]  # TEMPORAL_FILTERS
QUEUE_DEPTH = 4  # items in flight between two stages
AUDIO_BLOCK = SAMPLE_RATE // 2  # samples per read from ffmpeg: small, for a quick first frame
JOIN_SECONDS = 10.0


@dataclass(frozen=True)
class RenderOptions:
    """How to render one video."""

    # what to render
    seed: int = 0
    mode: Mode = "auto"  # auto: speaking/silence per chunk from voice activity
    crop: CropBox | None = None
    prompt: str = DEFAULT_PROMPT  # text context, for models with a text encoder (Wan)
    # output
    crf: int = DEFAULT_CRF
    # compute
    intra_op_threads: int = 1  # torch threads per stage on the CPU (stages run in parallel)
    # the model's frame post-processing: re-timing within latents (`SamplerConfig.retime`),
    # the zero-lag filter against latent-boundary flicker (`deflicker_taps`) and the
    # portrait kept where nothing moves (`keep_reference`); False = the decoder's frames
    # as they are
    deflicker: bool = True
    # which filter: "centred" (the model's zero-lag taps; holds frames back until the
    # frames after them exist) or "causal" (past frames only, holds nothing back: live use;
    # `tmrender.render.temporal.causal_filter`)
    temporal: Temporal = "centred"
    # on a GPU: capture the steady chunk step (denoising steps + commit) in a CUDA graph
    # and replay it (`tmrender.render.graphs`): one launch per chunk instead of thousands
    cuda_graphs: bool = False
    # latency (a live source): how the audio is cut into feature segments, and the items
    # in flight between two stages
    segmenting: Segmenting = Segmenting()
    queue_depth: int = QUEUE_DEPTH


@dataclass
class RenderStats:
    """Figures of one render, filled in while it runs (seconds unless named otherwise)."""

    frames: int = 0
    total_frames: int | None = None
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0
    first_frame_seconds: float | None = None
    chunks: int = 0
    speaking_chunks: int = 0
    dit_steps: int = 0
    stage_seconds: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(
            ("audio_encoder", "dit", "cache_update", "vae_decode", "video_encode"), 0.0
        )
    )

    @property
    def realtime_factor(self) -> float:
        """Wall time / audio time (below 1 is faster than real time)."""
        return self.wall_seconds / self.audio_seconds if self.audio_seconds else float("nan")


class FrameStep(Protocol):
    """A per-block step on finished frames (paste-back): uint8 (n, h, w, 3) -> (n, H, W, 3),
    or the same frames as I420 for the encoder (`planar`)."""

    size: tuple[int, int]  # (W, H) of the frames it returns, both even

    def __call__(self, frames: np.ndarray) -> np.ndarray: ...

    def planar(self, frames: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """The same frames as I420 (n, H * W * 3 // 2) uint8, for the encoder; written
        into `out` when given (an earlier result of the same shape, reused)."""
        ...


class EndOfStream:
    """Marks the end of a stage's output in a queue."""


def render_frames(
    model: TalkingModel,
    image: Path | str | np.ndarray,
    audio: Path | str | AudioInfo | PushAudioStream,
    options: RenderOptions | None = None,
    stats: RenderStats | None = None,
) -> Iterator[np.ndarray]:
    """Stream a talking-head video: yields uint8 RGB blocks of shape (n, H, W, 3).

    image: a file (scaled and centre-cropped to the model's size, or cut by
    `options.crop`) or RGB uint8 (H, W, 3) already at the model's size. audio: a file, its
    AudioInfo from `open_audio` (saves probing it again), or a live PushAudioStream (the
    render ends once it is closed; the caller closes it). The blocks add up
    to exactly ceil(audio_seconds * fps) frames; frame i shows audio samples
    [i * spf, (i + 1) * spf) with spf = sample_rate / fps.
    """
    options = options or RenderOptions()
    stats = stats if stats is not None else RenderStats()
    cfg = model.cfg
    start = time.perf_counter()
    # 1. Check the inputs before any work: both raise one clear UserInputError.
    stream = (
        audio
        if isinstance(audio, PushAudioStream)
        else AudioStream(audio, block_samples=AUDIO_BLOCK)
    )
    reference = _reference_image(image, cfg.height, cfg.width, options.crop)
    stop = threading.Event()
    threads: list[threading.Thread] = []
    previous_threads = torch.get_num_threads()
    device = next(model.dit.parameters()).device
    if device.type == "cpu":
        torch.set_num_threads(options.intra_op_threads)
    try:
        # 2. Audio features in their own thread, starting at once (ffmpeg, then the encoder).
        producer = FeatureProducer(
            stream,
            model.audio_encoder,
            cfg.samples_per_frame,
            needed_frames=lambda total: (
                _ceil_to(total, cfg.frames_per_chunk) + cfg.audio_proj.window
            ),
            device=device,
            start=-cfg.audio_proj.window,
            segmenting=options.segmenting,
        )
        features: queue.Queue = queue.Queue(options.queue_depth)
        threads.append(_start(_pump, producer.segments(), features, stop, name="tmrender-audio"))
        # 3. Embedding cache meanwhile: the anchor latent and everything derived from it.
        with torch.inference_mode():
            anchor = encode_reference(model, reference)
            context, clip_fea = encode_conditioning(model, reference, options.prompt)
            state = model.dit.start_stream(anchor, context=context, clip_fea=clip_fea)
            decoder = StreamingDecoder(model.vae)
            # prime the causal decoder with the anchor; the gate drops the reference frame
            gate = FrameGate(skip=1)
            gate(decoder.decode(anchor.to(next(model.vae.parameters()).device)))
        # 4. The autoregressive chunk loop in its own thread.
        latents: queue.Queue = queue.Queue(options.queue_depth)
        timeline = FeatureTimeline(features, stop)
        chunks = latent_chunks(model, state, timeline, options, stats)
        threads.append(_start(_pump, chunks, latents, stop, name="tmrender-dit"))
        # 5. Decode latent chunks into frames, here, while the other stages run ahead (on
        #    a GPU: on a stream of its own, so decoding overlaps the next chunk's steps).
        vae_device = next(model.vae.parameters()).device
        decode_stream = torch.cuda.Stream(vae_device) if vae_device.type == "cuda" else None
        retimer, smoother = frame_filters(cfg, options)
        keeper = reference_keeper(model, options, reference, anchor)

        def out(frames: Tensor) -> np.ndarray:
            """Finished frames -> uint8, the reference kept where nothing moved."""
            return to_uint8(keeper(frames) if keeper else frames)

        def finish(decoded: Tensor) -> np.ndarray:
            """Decoded frames -> the video's next uint8 frames (gate, re-time, filter)."""
            decoded = gate(decoded)
            decoded = retimer.push(decoded) if retimer else decoded
            return out(smoother.push(decoded) if smoother else decoded)

        while (item := _take(latents, stop)) is not None:
            chunk, keep, ready = item
            gate.cover(keep)
            tick = time.perf_counter()
            with torch.inference_mode(), _side_stream(decode_stream, ready):
                chunk = chunk.to(vae_device, non_blocking=True)
                if decode_stream is not None:  # made on the DiT's stream, freed there later
                    chunk.record_stream(decode_stream)
                frames = finish(decoder.decode(chunk))
            stats.stage_seconds["vae_decode"] += time.perf_counter() - tick
            stats.total_frames = timeline.total_frames
            if len(frames):
                yield _counted(frames, stats, start)
        # the end: what the decoder (look-ahead) and the filter still hold back
        with torch.inference_mode(), _side_stream(decode_stream, None):
            held = decoder.flush()
            tails = [finish(held)] if held is not None else []
            if retimer is not None and (last := retimer.flush()) is not None:
                tails.append(out(smoother.push(last) if smoother else last))
            if smoother is not None and (rest := smoother.flush()) is not None:
                tails.append(out(rest))
        for frames in tails:
            if len(frames):
                yield _counted(frames, stats, start)
        stats.stage_seconds["audio_encoder"] = producer.seconds
        stats.audio_seconds = stream.seconds_read
    finally:
        stop.set()
        for thread in threads:
            thread.join(JOIN_SECONDS)
        stream.close()
        torch.set_num_threads(previous_threads)
        stats.wall_seconds = time.perf_counter() - start


def render_video(
    model: TalkingModel,
    image: Path | str | np.ndarray,
    audio: Path | str | AudioInfo,
    output: Path | str,
    options: RenderOptions | None = None,
    stats: RenderStats | None = None,
    on_frames: Callable[[RenderStats], None] | None = None,
    paste: FrameStep | None = None,
) -> RenderStats:
    """Render to an MP4 file with the audio muxed in; the file appears only when complete.

    `on_frames(stats)` is called after each block of frames is written (progress bars).
    `paste`: a per-block step from the model's frames (n, H, W, 3) to the video's, e.g.
    `tmrender.render.paste.PasteBack` (streamed: block by block, constant memory), whose
    I420 frames (`FrameStep.planar`) go to the encoder; None: the model's frames are the
    video (RGB)."""
    options = options or RenderOptions()
    stats = stats if stats is not None else RenderStats()
    cfg = model.cfg
    start = time.perf_counter()
    frames = render_frames(model, image, audio, options, stats)
    source = audio.path if isinstance(audio, AudioInfo) else audio
    width, height = (cfg.width, cfg.height) if paste is None else paste.size
    planar = paste is not None  # pasted frames go to the encoder as I420 (`FrameStep.planar`)
    with VideoWriter(
        output, width, height, cfg.fps, audio=source, crf=options.crf, planar=planar
    ) as out:
        try:
            pasted = None  # the last pasted block, whose memory the next one of its size reuses
            for block in frames:
                if paste is not None:
                    tick = time.perf_counter()
                    reuse = pasted if pasted is not None and len(pasted) == len(block) else None
                    block = pasted = paste.planar(block, out=reuse)
                    stats.stage_seconds["paste_back"] = (
                        stats.stage_seconds.get("paste_back", 0.0) + time.perf_counter() - tick
                    )
                tick = time.perf_counter()
                out.write(block)
                stats.stage_seconds["video_encode"] += time.perf_counter() - tick
                if on_frames is not None:
                    on_frames(stats)
        finally:
            frames.close()
        tick = time.perf_counter()
    stats.stage_seconds["video_encode"] += time.perf_counter() - tick
    stats.wall_seconds = time.perf_counter() - start
    return stats


def frame_filters(
    cfg, options: RenderOptions
) -> tuple[Retimer | None, TemporalFilter | CausalFilter | None]:
    """The frame post-processing `options` ask for: (re-timer, then filter), either None.
    centred: the model's re-timing and zero-lag filter; causal: the causal filter alone
    (it re-times as it smooths); without `deflicker`, or for a model without taps, none."""
    assert options.temporal in TEMPORAL_FILTERS, f"temporal {options.temporal} is not known"
    if not options.deflicker:
        return None, None
    if options.temporal == "causal":
        return None, causal_filter(cfg.sampler, cfg.frames_per_latent)
    taps = cfg.sampler.deflicker_taps
    smoother = TemporalFilter(taps, cfg.sampler.deflicker_keep) if taps else None
    return frame_retimer(cfg, options), smoother


def frame_retimer(cfg, options: RenderOptions) -> Retimer | None:
    """The model's re-timing of each latent's frames (`SamplerConfig.retime`), or None when
    it has none, the raw frames are asked for, or each latent makes one frame."""
    weights = cfg.sampler.retime
    if not weights or not options.deflicker or cfg.frames_per_latent < 2:
        return None
    return Retimer(cfg.frames_per_latent, weights)


def reference_keeper(
    model: TalkingModel, options: RenderOptions, reference: np.ndarray, anchor: Tensor
) -> ReferenceKeeper | None:
    """The model's pull of still pixels back to the reference (`SamplerConfig.keep_reference`),
    or None when it has none or the raw frames are asked for. anchor: the reference's
    latent (1, C_lat, 1, h, w)."""
    cfg = model.cfg
    keep = cfg.sampler.keep_reference
    if not keep or not options.deflicker:
        return None
    device = next(model.vae.parameters()).device
    still = anchor_picture(model, anchor)
    return ReferenceKeeper(reference, keep, device, still=still, follow=cfg.sampler.keep_follow)


def anchor_picture(model: TalkingModel, anchor: Tensor) -> Tensor:
    """The decoder's picture of the anchor latent alone: (1, 3, 1, H, W) float32 in -1..1,
    what the model draws of the portrait where nothing moves."""
    vae = next(model.vae.parameters())
    with torch.inference_mode():
        picture = model.vae.decode(anchor.to(device=vae.device, dtype=vae.dtype))
    return picture[:, :, :1].float().clamp(-1, 1)


def latent_chunks(
    model: TalkingModel,
    state: StreamState,
    timeline: FeatureTimeline,
    options: RenderOptions,
    stats: RenderStats,
) -> Iterator[tuple[Tensor, int, torch.cuda.Event | None]]:
    """The autoregressive loop (`tmrender.diffusion.stream.rollout`): yields (clean latent
    chunk (1, C_lat, C, h, w), frames to keep of its decoded 4*C, a CUDA event marking the
    chunk ready or None on the CPU) until the audio is covered."""
    frames_per_chunk = model.cfg.frames_per_chunk
    plan = StreamPlan.for_sampler(model.cfg.sampler)
    student = RenderStudent(model.dit, plan, stats, options.cuda_graphs)
    first = 0
    for out in rollout(student, state, chunk_inputs(model, timeline, options, stats)):
        total = timeline.total_frames
        keep = frames_per_chunk if total is None else min(frames_per_chunk, total - first)
        yield out.clean, keep, _ready_event(out.clean)
        first += frames_per_chunk


def chunk_inputs(
    model: TalkingModel, timeline: FeatureTimeline, options: RenderOptions, stats: RenderStats
) -> Iterator[ChunkInput]:
    """Each chunk's seeded noise (1, C_lat, C, h, w) in the DiT's dtype and its audio
    tokens (the silence embedding in silence mode), made as the audio arrives."""
    cfg = model.cfg
    frames_per_chunk, window = cfg.frames_per_chunk, cfg.audio_proj.window
    device = next(model.dit.parameters()).device
    dtype = next(model.dit.parameters()).dtype
    generator = torch.Generator(device).manual_seed(options.seed)
    shape = (
        1,
        cfg.vae.latent_channels,
        cfg.chunk_latent_frames,
        cfg.latent_height,
        cfg.latent_width,
    )
    first = 0
    while timeline.covers(first):
        feats, voiced = timeline.window(first - window, first + frames_per_chunk + window)
        speaking = chunk_is_speaking(options.mode, voiced)
        tick = time.perf_counter()
        if speaking:
            windows = audio_windows(feats, window, cfg.frames_per_latent, pad="none")
            tokens = model.audio_tokens(windows.to(dtype))
        else:
            tokens = model.silence.expand(1, cfg.chunk_latent_frames)
        noise = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        stats.stage_seconds["dit"] += time.perf_counter() - tick
        stats.chunks += 1
        stats.speaking_chunks += int(speaking)
        yield ChunkInput(noise, tokens)
        first += frames_per_chunk


class RenderStudent(Student):
    """The renderer's student: the stream's steps, timed in `stats`; with `cuda_graphs` on
    a GPU, the steady chunk step (denoising steps + commit) captured once in a CUDA graph
    and replayed for every later chunk (`tmrender.render.graphs`)."""

    def __init__(
        self, dit: WanDiT, plan: StreamPlan, stats: RenderStats, cuda_graphs: bool
    ) -> None:
        super().__init__(dit, plan)
        self.stats, self.cuda_graphs = stats, cuda_graphs
        self.device = next(dit.parameters()).device
        self.graph: ChunkGraph | None = None

    def denoise(self, state: StreamState, chunk: ChunkInput) -> ChunkOutput:
        tick = time.perf_counter()
        if self.graph is None and self.cuda_graphs and graph_ready(state, self.device):
            self.graph = ChunkGraph(
                lambda noise, tokens: self.step_and_commit(state, noise, tokens),
                chunk.noise,
                chunk.tokens,
            )
        if self.graph is not None:  # the replay commits too
            clean = self.graph.replay(chunk.noise, chunk.tokens)
            out = ChunkOutput(clean, clean, None)
        else:
            out = super().denoise(state, chunk)
        self.stats.stage_seconds["dit"] += time.perf_counter() - tick
        self.stats.dit_steps += len(self.plan.sigmas)
        return out

    def commit(self, state: StreamState, chunk: ChunkInput, out: ChunkOutput) -> StreamState:
        if self.graph is not None:
            return state
        tick = time.perf_counter()
        state = super().commit(state, chunk, out)
        self.stats.stage_seconds["cache_update"] += time.perf_counter() - tick
        return state

    def step_and_commit(self, state: StreamState, noise: Tensor, tokens: Tensor) -> Tensor:
        """Denoise then commit as one piece of GPU work (what `ChunkGraph` captures): with
        the stream's preallocated KV window the commit writes in place, so the same piece
        replays correctly for every later chunk. Returns the clean chunk."""
        chunk = ChunkInput(noise, tokens)
        out = Student.denoise(self, state, chunk)
        Student.commit(self, state, chunk, out)
        return out.clean


def _ready_event(x: Tensor) -> torch.cuda.Event | None:
    """An event recorded after the work that makes `x`, on a GPU; None on the CPU."""
    if x.device.type != "cuda":
        return None
    event = torch.cuda.Event()
    event.record(torch.cuda.current_stream(x.device))
    return event


@contextlib.contextmanager
def _side_stream(stream: torch.cuda.Stream | None, ready: torch.cuda.Event | None):
    """Run the block on `stream` once `ready` has fired (nothing to do on the CPU)."""
    if stream is None:
        yield
        return
    if ready is not None:
        stream.wait_event(ready)
    with torch.cuda.stream(stream):
        yield


def chunk_is_speaking(mode: Mode, voiced: np.ndarray) -> bool:
    """Speaking or silence for one chunk: forced by `mode`, or any voiced frame in its
    audio window (voiced: (F,) bool)."""
    if mode == "speaking":
        return True
    if mode == "silence":
        return False
    return bool(voiced.any())


def encode_reference(model: TalkingModel, image: np.ndarray) -> Tensor:
    """RGB uint8 (H, W, 3) -> anchor latent (1, C_lat, 1, h, w) (B, C, T, H, W)."""
    device = next(model.vae.parameters()).device
    dtype = next(model.vae.parameters()).dtype
    pixels = torch.from_numpy(np.array(image, np.uint8)).to(device).permute(2, 0, 1)[None, :, None]
    video = pixels.to(dtype) / 127.5 - 1.0
    dit = next(model.dit.parameters())
    return model.vae.encode(video).to(device=dit.device, dtype=dit.dtype)


def encode_conditioning(
    model: TalkingModel, image: np.ndarray, prompt: str
) -> tuple[Tensor | None, Tensor | None]:
    """RGB uint8 (H, W, 3) portrait + prompt -> (text context (1, L, text_dim), CLIP
    features (1, image_tokens, image_dim)), on the DiT's device and dtype; None for each
    encoder the model does not have (tm-mini has neither)."""
    dit = next(model.dit.parameters())
    context = clip_fea = None
    if model.text_encoder is not None:
        context = model.text_encoder.encode(prompt).to(device=dit.device, dtype=dit.dtype)
    if model.image_encoder is not None:
        device = next(model.image_encoder.parameters()).device
        pixels = torch.from_numpy(np.array(image, np.uint8)).to(device)
        video = pixels.permute(2, 0, 1)[None].float() / 127.5 - 1.0
        clip_fea = model.image_encoder(video).to(device=dit.device, dtype=dit.dtype)
    return context, clip_fea


class FrameGate:
    """Cuts the decoder's output to the video: drops the first `skip` frames (the reference
    frame the anchor decodes to) and everything past the frames the chunks so far cover
    (`cover`: the last chunk overshoots the audio). Works whether the decoder gives a
    chunk's frames at once or one latent later (look-ahead)."""

    def __init__(self, skip: int) -> None:
        self.skip, self.covered, self.passed = skip, 0, 0

    def cover(self, frames: int) -> None:
        """The next chunk adds `frames` frames of the video."""
        self.covered += frames

    def __call__(self, decoded: Tensor) -> Tensor:
        """decoded (1, 3, n, H, W) -> the part of it that belongs to the video."""
        drop = min(self.skip, decoded.shape[2])
        self.skip -= drop
        take = max(0, min(decoded.shape[2] - drop, self.covered - self.passed))
        self.passed += take
        return decoded[:, :, drop : drop + take]


def _counted(frames: np.ndarray, stats: RenderStats, start: float) -> np.ndarray:
    """Count a block of finished frames in `stats` (and the first frame's time)."""
    stats.frames += frames.shape[0]
    if stats.first_frame_seconds is None:
        stats.first_frame_seconds = time.perf_counter() - start
    return frames


def to_uint8(frames: Tensor) -> np.ndarray:
    """Frames (1, 3, n, H, W) in [-1, 1] -> uint8 (n, H, W, 3) on the host.

    From a GPU the frames land in pinned (page-locked) host memory through an asynchronous
    copy on the current stream, and only this thread waits for it: the copy is a direct
    DMA, with no staging through pageable memory. PyTorch's caching host allocator takes
    the block back once the returned array (which holds the tensor) is dropped."""
    assert frames.ndim == 5 and frames.shape[:2] == (1, 3), f"got {tuple(frames.shape)}"
    pixels = ((frames[0].float() + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8)
    pixels = pixels.permute(1, 2, 3, 0)
    if pixels.device.type != "cuda":
        return pixels.cpu().numpy()
    host = torch.empty(pixels.shape, dtype=torch.uint8, pin_memory=True)
    host.copy_(pixels, non_blocking=True)
    done = torch.cuda.Event()
    done.record()
    done.synchronize()
    return host.numpy()


def _reference_image(image, height: int, width: int, crop: CropBox | None) -> np.ndarray:
    if isinstance(image, np.ndarray):
        assert image.shape == (height, width, 3) and image.dtype == np.uint8, (
            f"reference must be uint8 ({height}, {width}, 3), got {image.dtype} {image.shape}"
        )
        return image
    return load_image(image, (height, width), crop)


def _ceil_to(value: int, step: int) -> int:
    return -(-value // step) * step


def _start(target, *args, name: str) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, name=name, daemon=True)
    thread.start()
    return thread


def _pump(items: Iterable, out: queue.Queue, stop: threading.Event) -> None:
    """Run a stage: put its items (then EndOfStream, or the exception it raised) on `out`."""
    try:
        with torch.inference_mode():
            for item in items:
                if not _put(out, item, stop):
                    return
        _put(out, EndOfStream(), stop)
    except BaseException as err:  # noqa: BLE001 - handed to the consumer, which re-raises
        _put(out, err, stop)


def _put(out: queue.Queue, item, stop: threading.Event) -> bool:
    while not stop.is_set():
        with contextlib.suppress(queue.Full):
            out.put(item, timeout=0.1)
            return True
    return False


def _take(source: queue.Queue, stop: threading.Event):
    """Next item of a stage, None at its end; re-raises the stage's exception here."""
    while True:
        try:
            item = source.get(timeout=0.1)
        except queue.Empty:
            if stop.is_set():
                return None
            continue
        if isinstance(item, EndOfStream):
            return None
        if isinstance(item, BaseException):
            raise item
        return item
