"""Live use (layer 7, just below the commands): `tmrender live` serves a page that sends the
microphone over WebRTC and plays the avatar rendered from it, chunk by chunk, by the one
streaming renderer (`tmrender.render.pipeline.render_frames` fed by a
`tmrender.media.audio.PushAudioStream`).

Modules: `session` (one live render: audio in, frames out at the video's rate, latency
and skip statistics, the recording; no WebRTC), `webrtc` (aiortc tracks: the microphone
into the session, the session's frames out), `server` (the local HTTP page, WebRTC
signalling, one session at a time), `client` (a Python WebRTC client that plays samples as
its microphone and timestamps the frames it gets back: tests and latency figures),
`say` (the queue of speech that drives the avatar in say and reply modes, eSpeak NG),
`vad` (voice activity: the microphone cut into utterances), `reply` (the reply program:
a command or a URL, its private folder, the conversation loop), `measure` (`tmrender bench
--suite live`: glass-to-glass latency, frame rate and the server's memory on loopback, the
server in a process of its own, read with the mouth reader), `measure_say` (the
audio/video offset of what is played in say mode),
`static/` (the page: HTML and JS, no build step). aiortc is the `live` extra.
"""

MODES = ("mirror", "say", "reply")
LOOKAHEAD_FRAMES = 2  # audio after a chunk's window its features wait for (80 ms at 25 fps)
