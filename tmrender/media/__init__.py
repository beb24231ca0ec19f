"""Media I/O through the ffmpeg binary that imageio-ffmpeg ships, and the audio DSP the
renderer and the corpus share.

- `ffmpeg`: running ffmpeg/ffprobe with its own error surfaced, probing files;
- `audio`: decoding any audio to 16 kHz mono blocks (`AudioStream`), WAV writing, frame
  arithmetic, loudness-based voice activity;
- `video`: the H.264 writer (temporary name, renamed when complete) and frame readers;
- `image`: loading, cropping and scaling a portrait.

Layer 2: may import config, errors, files, devices, diffusion and models (README.md,
"Module map").
"""
