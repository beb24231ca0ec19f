"""The streaming renderer and what runs it: one video (`generate`) or a manifest (`batch`).

- `pipeline`: the chunk-by-chunk renderer (`render_video`, `render_frames`);
- `features`: audio features computed ahead of the DiT in segments;
- `temporal`: re-timing within latents and the zero-lag filter over frames;
- `graphs`: CUDA-graph replay of the steady chunk step;
- `portrait`: is a portrait like the avatars the model learned from;
- `generate`: one portrait + one audio -> an MP4 (`tmrender generate`);
- `manifest`: reading and checking batch manifests;
- `batch`: rendering a manifest: `plan`, `sidecars`, `workers`, `report`, `execute`.

Layer 4: may import config, errors, files, devices, diffusion, models, convert, media and
data (README.md, "Module map").
"""
