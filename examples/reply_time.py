#!/usr/bin/env python3
"""A tiny reply program for `tmrender live --mode reply`: it answers every utterance with
the time of day and how long it heard you, spoken by eSpeak NG (needs only tmrender).

Usage (as `tmrender live` runs it: the WAV it heard, the WAV to write):

    examples/reply_time.py HEARD.wav ANSWER.wav [--voice en+f2]
    tmrender live --image examples/face.png --mode reply --reply examples/reply_time.py

Exit status 0 when the answer was written; 2 with a message on stderr otherwise.
"""

from __future__ import annotations

import argparse
import sys
import time
import wave
from pathlib import Path


def heard_seconds(path: Path) -> float:
    """Duration of a WAV file in seconds."""
    with wave.open(str(path), "rb") as heard:
        return heard.getnframes() / heard.getframerate()


def answer_text(seconds: float, now: time.struct_time) -> str:
    """What to say: the time of day and the length of what was heard."""
    return f"It is {now.tm_hour} {now.tm_min:02d}. I heard you for {seconds:.1f} seconds."


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("heard", type=Path, help="WAV of what the user said")
    parser.add_argument("answer", type=Path, help="WAV to write the spoken answer to")
    parser.add_argument("--voice", default="en+f2", help="eSpeak NG voice, LANGUAGE+VARIANT")
    args = parser.parse_args()
    from tmrender.data.speech import named_voice, speak_text
    from tmrender.media.audio import write_wav

    try:
        seconds = heard_seconds(args.heard)
    except (OSError, wave.Error, EOFError) as err:
        print(f"cannot read {args.heard}: {err}", file=sys.stderr)
        return 2
    text = answer_text(seconds, time.localtime())
    partial = args.answer.with_name(args.answer.name + ".partial.wav")
    write_wav(partial, speak_text(text, named_voice(args.voice)))
    partial.replace(args.answer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
