"""`tmrender live` in a real browser, once (not in CI): Debian's Chromium, headless, plays
`examples/speech.wav` (looped) as its fake microphone into the page, which connects by
itself (`?autostart=1`); while it streams, the page is photographed every few hundred ms
and the mouth reader reads the avatar's mouth in each photo; the one with the mouth most
open (the avatar mid-word) is written as a small PNG, and the page's figures are printed:
the server's (as the page shows them) and the browser's own (WebRTC inbound video:
frames received, decoded, dropped, frame rate, jitter buffer delay).

    python scripts/live_browser_shot.py [--seconds 15] [--out docs/live_browser.png]

Chromium is driven over its DevTools protocol on a pipe (`--remote-debugging-pipe`: JSON
messages ending in a NUL byte, commands on its fd 3, replies on its fd 4), so nothing
beyond the standard library and tmrender is needed. Needs /usr/bin/chromium (Debian's
`chromium` package) and the live extra.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

from tmrender.eval.mouth import load_mouth_reader, read_mouth

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
WINDOW = (720, 900)  # CSS pixels of the headless window
SHOT_EVERY = 0.25  # seconds between photos while it streams
PALETTE = 96  # colours of the PNG written (it stays small)


class Browser:
    """A headless Chromium on a DevTools pipe, with one page attached."""

    def __init__(self, microphone: Path, profile: Path) -> None:
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        flags = [
            "--headless",
            "--no-sandbox",  # root in a container
            "--disable-gpu",
            "--no-first-run",
            "--mute-audio",
            "--autoplay-policy=no-user-gesture-required",
            "--use-fake-ui-for-media-stream",  # grant the microphone without asking
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={microphone}",  # looped WAV
            f"--window-size={WINDOW[0]},{WINDOW[1]}",
            f"--user-data-dir={profile}",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        # the shell puts the two pipe ends on the fds Chromium reads and writes: 3 and 4
        command = f'exec "$0" "$@" 3<&{to_browser_r} 4>&{from_browser_w}'
        self.process = subprocess.Popen(
            ["sh", "-c", command, CHROMIUM, *flags],
            pass_fds=(to_browser_r, from_browser_w),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._next_id, self._buffer = 0, b""
        targets = self.call("Target.getTargets")["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        attached = self.call("Target.attachToTarget", targetId=page["targetId"], flatten=True)
        self.session = attached["sessionId"]

    def call(self, method: str, session: str | None = None, **params) -> dict:
        """Send one command (to the page's session when given) and return its result."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def page(self, method: str, **params) -> dict:
        return self.call(method, self.session, **params)

    def evaluate(self, expression: str):
        """A JavaScript expression's value in the page (promises awaited)."""
        result = self.page(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
        )
        return result["result"].get("value")

    def _read(self) -> dict:
        while b"\0" not in self._buffer:
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed its DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.call("Browser.close")
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int) -> subprocess.Popen:
    """`tmrender live` (mirror mode, default settings) on `port`, once it answers."""
    server = subprocess.Popen(
        [sys.executable, "-m", "tmrender", "live", "--image", "examples/face.png",
         "--port", str(port)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2).close()
            return server
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise RuntimeError("tmrender live did not start")


VIDEO_STATS = """(async () => {
  const v = document.getElementById("video");
  const r = v.getBoundingClientRect();
  const out = {rect: [r.x, r.y, r.width, r.height], playing: v.currentTime,
               stats: document.getElementById("stats").textContent,
               size: [v.videoWidth, v.videoHeight]};
  if (typeof pc !== "undefined" && pc) {
    (await pc.getStats()).forEach((s) => {
      if (s.type === "inbound-rtp" && s.kind === "video") out.inbound = {
        framesReceived: s.framesReceived, framesDecoded: s.framesDecoded,
        framesDropped: s.framesDropped, framesPerSecond: s.framesPerSecond,
        jitterBufferDelayMsPerFrame: s.jitterBufferEmittedCount ?
          1000 * s.jitterBufferDelay / s.jitterBufferEmittedCount : null,
        freezeCount: s.freezeCount, totalFreezesDuration: s.totalFreezesDuration};
    });
  }
  return out;
})()"""


def shoot(browser: Browser) -> Image.Image:
    data = browser.page("Page.captureScreenshot", format="png")["data"]
    return Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")


def mouth_opening(reader, shot: Image.Image, rect) -> float:
    """The mouth reader's opening of the avatar as shown in the photo (its video box)."""
    x, y, w, h = (round(v) for v in rect)
    avatar = shot.crop((x, y, x + w, y + h)).resize((128, 128), Image.BILINEAR)
    return float(read_mouth(reader, np.asarray(avatar)[None])[0, 0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="how long it streams")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "live_browser.png")
    args = parser.parse_args()
    port = free_port()
    server = start_server(port)
    reader = load_mouth_reader()
    with tempfile.TemporaryDirectory() as profile:
        browser = Browser(ROOT / "examples" / "speech.wav", Path(profile))
        try:
            browser.page("Page.enable")
            browser.page("Page.navigate", url=f"http://127.0.0.1:{port}/?autostart=1")
            best, best_opening, readings = None, -1.0, []
            start = time.monotonic()
            while time.monotonic() - start < args.seconds:
                time.sleep(SHOT_EVERY)
                page = browser.evaluate(VIDEO_STATS)
                if not page or not page.get("playing"):
                    continue  # not connected yet
                shot = shoot(browser)
                opening = mouth_opening(reader, shot, page["rect"])
                readings.append(opening)
                if opening > best_opening:
                    best, best_opening = shot, opening
            final = browser.evaluate(VIDEO_STATS)
        finally:
            browser.close()
            server.terminate()
            server.wait(20)
    if best is None:
        raise SystemExit("the page never played the avatar")
    small = best.crop((0, 0, WINDOW[0], min(best.height, 680)))
    small = small.quantize(PALETTE, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    small.save(args.out, optimize=True)
    print(json.dumps({
        "photos": len(readings),
        "mouth_opening_of_photo_kept": round(best_opening, 3),
        "mouth_opening_median_of_photos": round(float(np.median(readings)), 3),
        "png": str(args.out), "png_bytes": args.out.stat().st_size,
        "video_size": final["size"], "seconds_played": round(final["playing"], 1),
        "browser_inbound_video": final.get("inbound"),
        "page_stats": final["stats"].splitlines(),
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
