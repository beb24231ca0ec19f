"""Conversion of real checkpoints (Wan2.1 in its original or diffusers layout, wav2vec2)
into one tmrender checkpoint: `tmrender convert`.

- `wan`: the conversion itself, checked against the reference classes;
- `names`: the tensor-name maps, kept as data;
- `stream_write`: writing one safetensors file tensor by tensor.

Layer 2: may import config, errors, files, devices, diffusion and models (README.md,
"Module map").
"""
