"""Latency, frame rate and memory of `tmrender live`, measured on loopback:

    tmrender bench --suite live [-s SECONDS]          (`bench_live`, a table)
    python -m tmrender.serve.measure [-s SECONDS] [--lookahead N] [--temporal causal|centred]
        [--no-deflicker] [--no-say] [--file-render]   (JSON)

The server runs in a process of its own (`ServerProcess`), as `tmrender live` would: the
client's decoding and mouth reading do not share its interpreter (2 cores are still
shared). A Python WebRTC client (`client.LiveClient`) plays pieces of speech after
silences as its microphone, for the session's length, and timestamps every frame it gets
back; the mouth reader reads the mouth opening of each (in batches, so a long session
keeps no frames). Figures:

- glass to glass: per onset, the time from the onset leaving the client to the first
  received frame whose mouth opening is halfway from its closed level to the piece's peak
  (median, 95th percentile, onsets read of those played);
- the server's own figures (the page's): latency from a block of audio arriving to the
  frame it drove leaving and, of it, the time the frame waited to be sent (medians over the
  session), compute per chunk, frames sent, held and dropped, audio dropped, sender
  restarts;
- frame rate received and the longest gap between frames;
- the server process's resident memory: after 1 minute, the most read (every 5 s) after
  that, at the end, and its peak (by 1 minute and in all);
- say mode's audio/video offset (`measure_say`), unless left out;
- with `file_render`: the model's own half-rise in the file render of the same audio, and
  the shift that best aligns the received mouth curve with the file render's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from tmrender.config import TEMPORAL_FILTERS
from tmrender.errors import UserInputError
from tmrender.eval.bench import LIVE_SECONDS, BenchOptions
from tmrender.eval.mouth import load_mouth_reader, read_mouth
from tmrender.media.audio import SAMPLE_RATE, VOICE_RMS_DB, frame_rms_db, load_audio, write_wav
from tmrender.serve.session import LiveOptions

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CLIENT_RATE = 48_000
GAP_SECONDS, PIECE_SECONDS = 1.0, 0.8
SETTLE_SECONDS = 2.0  # after the last piece, so its frames come back
CYCLE_ONSETS = 12  # pieces in the signal that a session repeats
MOUTH_BATCH = 250  # received frames read by the mouth reader at a time (10 s)
RSS_EVERY = 5.0  # seconds between readings of the server's memory
MINUTE = 60.0


def onset_signal(speech: np.ndarray, onsets: int) -> tuple[np.ndarray, list[int]]:
    """Pieces of `speech` (16 kHz) after silences -> (signal (N,), onset samples): each
    onset is the first voiced 10 ms of its piece."""
    gap, piece = int(GAP_SECONDS * SAMPLE_RATE), int(PIECE_SECONDS * SAMPLE_RATE)
    step = SAMPLE_RATE // 100
    parts, marks, at, offset = [], [], 0, 0
    while len(marks) < onsets:
        chunk = np.resize(speech, offset + piece)[offset : offset + piece]
        offset = (offset + piece) % max(1, speech.size - piece)
        voiced = np.flatnonzero(
            frame_rms_db(chunk[: chunk.size // step * step], step) > VOICE_RMS_DB
        )
        if not voiced.size:
            continue
        chunk = chunk[voiced[0] * step :]
        parts += [np.zeros(gap, np.float32), chunk]
        marks.append(at + gap)
        at += gap + chunk.size
    parts.append(np.zeros(int(SETTLE_SECONDS * SAMPLE_RATE), np.float32))
    return np.concatenate(parts).astype(np.float32), marks


def upsample(x: np.ndarray, factor: int) -> np.ndarray:
    """16 kHz -> 48 kHz by linear interpolation (the server's low-pass takes the rest)."""
    t = np.arange(x.size * factor) / factor
    return np.interp(t, np.arange(x.size), x).astype(np.float32)


def half_rise(times: np.ndarray, opening: np.ndarray, onset: float) -> float | None:
    """First time after `onset` at which `opening` is halfway from its level in the 0.3 s
    before the onset to its peak in the 1.5 s after it (None without a clear rise)."""
    before = opening[(times >= onset - 0.3) & (times < onset)]
    after = (times >= onset) & (times < onset + 1.5)
    if not before.size or not after.any():
        return None
    low, peak = float(np.median(before)), float(opening[after].max())
    if peak - low < 0.05:
        return None
    rising = np.flatnonzero(after & (opening >= low + 0.5 * (peak - low)))
    return float(times[rising[0]]) if rising.size else None


async def live_run(model, reference, signal, options: LiveOptions) -> tuple:
    """Play `signal` (16 kHz) into a server in this process (tests); the client, which
    kept every frame, and the server's last figures."""
    from tmrender.serve.client import LiveClient
    from tmrender.serve.server import LiveServer

    server = LiveServer(model, reference, options, on_event=lambda _: None)
    url = f"http://127.0.0.1:{await server.start('127.0.0.1', 0)}"
    try:
        client = await LiveClient.connect(url, upsample(signal, CLIENT_RATE // SAMPLE_RATE))
        await asyncio.sleep(signal.size / SAMPLE_RATE + 1.0)
        figures = client.figures[-1] if client.figures else {}
        await client.close()
    finally:
        await server.stop()
    return client, figures


# --- the server in a process of its own ------------------------------------------------------


class ProcessFigures:
    """Memory and CPU time of a running process (Linux /proc)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def _status(self) -> dict[str, int]:
        """VmRSS and VmHWM of the process, kB."""
        lines = Path(f"/proc/{self.pid}/status").read_text().splitlines()
        fields = dict(line.split(":", 1) for line in lines if ":" in line)
        return {key: int(fields[key].split()[0]) for key in ("VmRSS", "VmHWM")}

    def rss_mb(self) -> float:
        """Its resident memory now, MB (10^6 bytes)."""
        return self._status()["VmRSS"] * 1024 / 1e6

    def peak_rss_mb(self) -> float:
        """Its peak resident memory so far, MB."""
        return self._status()["VmHWM"] * 1024 / 1e6

    def cpu_seconds(self) -> float:
        """CPU time the process has used (user + system), seconds."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ServerProcess:
    """A `LiveServer` for a model and portrait in a spawned process of its own, on a free
    loopback port: `start()` returns its URL, `figures` reads the process's memory and CPU
    time, `stop()` waits for its session to end and returns the recordings it wrote. The
    process is spawned, so a script that starts one needs `if __name__ == "__main__":`."""

    def __init__(self, model: str | None, image: Path | str, options: LiveOptions) -> None:
        context = multiprocessing.get_context("spawn")  # no copy of this process's threads
        self._conn, child = context.Pipe()
        self.process = context.Process(
            target=_serve, args=(model, str(image), options, child), daemon=True
        )

    def start(self, timeout: float = 300.0) -> str:
        """Start the process; its URL once it listens (the model is loaded by then)."""
        self.process.start()
        port = self._receive(timeout, "did not start")
        self.figures = ProcessFigures(self.process.pid)
        return f"http://127.0.0.1:{port}"

    def _receive(self, timeout: float, what: str):
        if not self._conn.poll(timeout):
            raise RuntimeError(f"the live server process {what} within {timeout:g} s")
        message = self._conn.recv()
        if isinstance(message, BaseException):
            raise RuntimeError(f"the live server process failed: {message}") from message
        return message

    def stop(self, timeout: float = 30.0) -> list[Path]:
        """Let the running session end (its recording written), stop, and return the
        paths of the recordings written."""
        try:
            self._conn.send("stop")
            return self._receive(timeout, "did not stop")
        finally:
            self.process.join(5.0)
            if self.process.is_alive():
                self.process.kill()
                self.process.join()


def _serve(model: str | None, image: str, options: LiveOptions, conn) -> None:
    """The server process: load the model and portrait, listen, send the port, serve until
    told to stop, send the recordings written (or the exception that stopped it)."""
    try:
        from tmrender.media.image import load_image
        from tmrender.models.registry import load_model

        loaded, _ = load_model(model, "cpu")
        reference = load_image(image, (loaded.cfg.height, loaded.cfg.width))
        asyncio.run(_serve_until_stopped(loaded, reference, options, conn))
    except BaseException as err:  # noqa: BLE001 - handed to the measuring process
        conn.send(RuntimeError(f"{type(err).__name__}: {err}"))


async def _serve_until_stopped(model, reference, options: LiveOptions, conn) -> None:
    from tmrender.serve.server import LiveServer

    server = LiveServer(model, reference, options, on_event=lambda _: None)
    conn.send(await server.start("127.0.0.1", 0))
    await asyncio.to_thread(conn.recv)
    start = time.monotonic()
    while server.busy and time.monotonic() - start < 20:  # the session ends, writes
        await asyncio.sleep(0.1)
    await server.stop()
    conn.send(list(server.recorded))


# --- one mirror session ---------------------------------------------------------------------


class MouthLog:
    """Received frames -> their arrival times and mouth openings; the frames are read in
    batches (`read`) and dropped, so a long session keeps only two numbers per frame."""

    def __init__(self, reader) -> None:
        self.reader = reader
        self.times: list[float] = []
        self.opening: list[float] = []
        self._pending: list[np.ndarray] = []

    def add(self, arrival: float, frame: np.ndarray) -> None:
        self.times.append(arrival)
        self._pending.append(frame)

    @property
    def unread(self) -> int:
        return len(self._pending)

    def take(self) -> list[np.ndarray]:
        """The frames not read yet, in order (taken where they are added: the event loop)."""
        frames, self._pending = self._pending, []
        return frames

    def read(self, frames: list[np.ndarray]) -> None:
        """Read the mouths of frames taken (in order), in any thread."""
        if frames:
            self.opening.extend(read_mouth(self.reader, np.stack(frames))[:, 0].tolist())


async def mirror_session(url: str, seconds: float, reader) -> dict:
    """Play the onset cycle for `seconds` into the server at `url`; the arrays and figures
    the report is made of: received frame times and openings, onset send times, the
    server's figures as the page got them."""
    from tmrender.serve.client import LiveClient

    cycle, marks = onset_signal(load_audio(EXAMPLES / "speech.wav"), CYCLE_ONSETS)
    length = int(seconds * SAMPLE_RATE)
    factor = CLIENT_RATE // SAMPLE_RATE
    log = MouthLog(reader)
    client = await LiveClient.connect(
        url, upsample(cycle, factor), length=length * factor, on_frame=log.add
    )
    end = time.perf_counter() + seconds + SETTLE_SECONDS
    while time.perf_counter() < end:
        await asyncio.sleep(min(1.0, max(0.0, end - time.perf_counter())))
        if log.unread >= MOUTH_BATCH:
            await asyncio.to_thread(log.read, log.take())
    await client.close()
    log.read(log.take())
    # onsets whose 1.5 s after were played: every cycle's, at their place in the cycle
    onsets = [
        c * cycle.size + m
        for c in range(length // cycle.size + 1)
        for m in marks
        if c * cycle.size + m + 1.5 * SAMPLE_RATE <= length
    ]
    return {
        "times": np.array(log.times),
        "opening": np.array(log.opening),
        "sent": [client.sent_at(s * factor) for s in onsets],
        "figures": client.figures,
        "cycle": cycle,
        "onsets": onsets,
    }


def glass_to_glass(times: np.ndarray, opening: np.ndarray, sent: list[float]) -> list:
    """Per onset sent at `sent[i]`: the received mouth's half-rise after it, seconds after
    it (None where no clear rise was read)."""
    rises = [half_rise(times, opening, t) for t in sent]
    return [None if r is None else r - t for r, t in zip(rises, sent, strict=True)]


def bench_live(
    seconds: float,
    model: str | None = None,
    image: Path | str = EXAMPLES / "face.png",
    options: LiveOptions | None = None,
    say: bool = True,
    file_render: bool = False,
    url: str | None = None,
    pid: int | None = None,
) -> dict:
    """One mirror session of `seconds` against a server in its own process (then say
    mode's offset, unless `say` is False); the figures of the module docstring. With `url`,
    against a `tmrender live` already running there instead (its memory and CPU time read
    where `pid` is given; no say mode)."""
    options = options or LiveOptions()
    reader = load_mouth_reader()
    server = None if url is not None else ServerProcess(model, image, options)
    try:
        if server is not None:
            url = server.start()
        process = server.figures if server is not None else pid and ProcessFigures(pid)
        cpu = process.cpu_seconds() if process else None
        rss, session = asyncio.run(_measured(process, url, seconds, reader))
        if process:
            cpu, peak = process.cpu_seconds() - cpu, process.peak_rss_mb()
    finally:
        if server is not None:
            server.stop()
    result = report(session, seconds, options if server is not None else None)
    if process:
        result.update(memory_figures(rss, peak))
        result["server_cpu_s"] = round(cpu, 1)
    if file_render:
        result.update(file_render_figures(session, model, image))
    if say and server is not None:
        from tmrender.serve.measure_say import measure_say

        offset = measure_say(model, image, options=options)
        per_frame = offset["offset_per_frame_ms"]
        result["say_offset_median_ms"] = per_frame["median"]
        result["say_offset_p5_p95_ms"] = f"{per_frame.get('p5')} / {per_frame.get('p95')}"
        result["say_offset_equal_buffers_ms"] = offset["offset_per_frame_equal_buffers_ms"]
    result["load_average"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return result


async def _measured(process: ProcessFigures | None, url: str, seconds: float, reader) -> tuple:
    """The session, with the server's memory read every RSS_EVERY seconds meanwhile (where
    its process is known): ([(seconds since connecting, resident MB, peak MB so far)], the
    session's figures)."""
    readings: list[tuple[float, float, float]] = []
    start = time.perf_counter()

    def reading() -> tuple[float, float, float]:
        return time.perf_counter() - start, process.rss_mb(), process.peak_rss_mb()

    async def watch() -> None:
        while process:
            readings.append(reading())
            await asyncio.sleep(RSS_EVERY)

    watcher = asyncio.ensure_future(watch())
    try:
        session = await mirror_session(url, seconds, reader)
    finally:
        watcher.cancel()
    if process:
        readings.append(reading())
    return readings, session


def report(session: dict, seconds: float, options: LiveOptions | None) -> dict:
    """The session's figures (see the module docstring), ms unless named otherwise;
    `options`: the server's settings, where known."""
    times = session["times"]
    glass = glass_to_glass(times, session["opening"], session["sent"])
    glass = [g for g in glass if g is not None]
    figures = [f for f in session["figures"] if f.get("frames_rendered")]
    last = session["figures"][-1] if session["figures"] else {}
    latencies = [f["latency_ms"] for f in figures if f.get("latency_ms") is not None]
    waits = [f["buffer_wait_ms"] for f in figures if f.get("buffer_wait_ms") is not None]
    gaps = np.diff(times) if times.size > 1 else np.zeros(1)
    return {
        "session_s": seconds,
        "settings": "a running server"
        if options is None
        else f"look-ahead {options.lookahead_frames}, "
        + (f"{options.temporal} filter" if options.deflicker else "no filter")
        + f", audio prefetch {options.audio_prefetch}",
        "glass_to_glass_median_ms": _ms(np.median(glass)) if glass else None,
        "glass_to_glass_p95_ms": _ms(np.percentile(glass, 95)) if glass else None,
        "onsets_read": f"{len(glass)}/{len(session['onsets'])}",
        "server_latency_ms": round(float(np.median(latencies))) if latencies else None,
        "of_it_waiting_to_be_sent_ms": round(float(np.median(waits))) if waits else None,
        "compute_ms_per_chunk": last.get("compute_ms_per_chunk"),
        "fps_received": round((times.size - 1) / (times[-1] - times[0]), 2)
        if times.size > 1
        else 0.0,
        "longest_gap_ms": _ms(gaps.max()),
        "frames_sent": last.get("frames_sent"),
        "frames_held": last.get("frames_held"),
        "frames_dropped": last.get("frames_dropped"),
        "audio_dropped_ms": last.get("audio_dropped_ms"),
        "sender_reanchored": last.get("sender_reanchored"),
        "error": last.get("error"),
    }


def memory_figures(readings: list[tuple[float, float, float]], peak: float) -> dict:
    """The server's memory from readings (seconds into the session, resident MB, peak MB
    so far): after 1 minute and the peak by then (None in a shorter session), the most
    read after it, at the end, the process's peak, and that peak's growth over the
    1-minute figure (%)."""
    minute = next((r for r in readings if r[0] >= MINUTE), None)
    later = [mb for t, mb, _ in readings if minute is not None and t > minute[0]]
    return {
        "server_rss_1min_mb": None if minute is None else round(minute[1], 1),
        "server_peak_rss_by_1min_mb": None if minute is None else round(minute[2], 1),
        "server_rss_max_after_1min_mb": round(max(later), 1) if later else None,
        "server_rss_end_mb": round(readings[-1][1], 1),
        "server_peak_rss_mb": round(peak, 1),
        "peak_over_1min_pct": None if minute is None else round(100 * (peak / minute[1] - 1), 1),
    }


def file_render_figures(session: dict, model: str | None, image: Path | str) -> dict:
    """The file render of the onset cycle against what was received in the first cycle:
    the model's own half-rise after each onset, the lag that best aligns the received mouth
    curve with the file render's, and their correlation."""
    from tmrender.media.image import load_image
    from tmrender.models.registry import load_model
    from tmrender.render.pipeline import RenderOptions, render_frames

    loaded, _ = load_model(model, "cpu")
    cfg = loaded.cfg
    reference = load_image(image, (cfg.height, cfg.width))
    cycle = session["cycle"]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "onsets.wav"
        write_wav(path, cycle)
        offline = np.concatenate(list(render_frames(loaded, reference, path, RenderOptions())))
    off_open = read_mouth(load_mouth_reader(), offline)[:, 0]
    off_times = (np.arange(len(off_open)) + 1) / cfg.fps  # a frame ends at (i + 1) / fps
    marks = [s for s in session["onsets"] if s < cycle.size]
    own = [half_rise(off_times, off_open, s / SAMPLE_RATE) for s in marks]
    own = [r - s / SAMPLE_RATE for r, s in zip(own, marks, strict=True) if r is not None]
    # the first cycle's sound left at sent0 + t: frame i of the file render at sent0 + t_i
    sent0 = session["sent"][0] - marks[0] / SAMPLE_RATE
    times, opening = session["times"], session["opening"]
    best = max(
        (np.corrcoef(off_open, np.interp(sent0 + off_times + lag, times, opening))[0, 1], lag)
        for lag in np.arange(0.0, 1.5, 0.01)
    )
    return {
        "model_half_rise_ms": _ms(np.median(own)) if own else None,
        "pipeline_lag_ms": _ms(best[1]),
        "mouth_correlation_live_vs_file": round(float(best[0]), 3),
    }


def _ms(seconds: float) -> int:
    return round(1000 * float(seconds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--image", default=str(EXAMPLES / "face.png"))
    parser.add_argument("-s", "--seconds", type=float, default=30.0)
    parser.add_argument("--lookahead", type=int, default=LiveOptions.lookahead_frames)
    parser.add_argument("--temporal", default=LiveOptions.temporal, choices=TEMPORAL_FILTERS)
    parser.add_argument("--no-deflicker", action="store_true")
    parser.add_argument(
        "--audio-prefetch", type=int, default=LiveOptions.audio_prefetch, help="aiortc's: 4"
    )
    parser.add_argument("--no-say", action="store_true", help="leave out say mode's offset")
    parser.add_argument("--file-render", action="store_true", help="compare with the file")
    parser.add_argument("--url", help="measure a tmrender live running there instead")
    parser.add_argument("--pid", type=int, help="with --url: its process, for memory figures")
    args = parser.parse_args()
    options = LiveOptions(
        lookahead_frames=args.lookahead,
        deflicker=not args.no_deflicker,
        temporal=args.temporal,
        audio_prefetch=args.audio_prefetch,
    )
    start = time.perf_counter()
    result = bench_live(
        args.seconds,
        args.model,
        args.image,
        options,
        not args.no_say,
        args.file_render,
        args.url,
        args.pid,
    )
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()


def live_rows(opts: BenchOptions) -> list[dict]:
    """`live`: one loopback session per length (default LIVE_SECONDS), the server in a
    process of its own, then say mode's audio/video offset (`tmrender.serve.measure`)."""
    try:
        import aiortc  # noqa: F401
    except ImportError:
        message = "--suite live needs aiortc (the live extra): pip install aiortc"
        raise UserInputError(message) from None
    if opts.preset is not None:
        raise UserInputError("--suite live measures a model (--model), not a preset")
    from tmrender.models.registry import resolve_model_path

    spec = str(resolve_model_path(opts.model))  # a missing model says so before any work
    return [bench_live(seconds, spec) for seconds in opts.seconds or (LIVE_SECONDS,)]
