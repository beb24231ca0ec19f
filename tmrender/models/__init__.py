"""Networks and model files: pure `nn.Module`s (no paths, no ffmpeg, no printing) and the
code that saves, loads and finds them.

- `dit`: the Wan2.1-style DiT with per-frame audio cross-attention, bidirectional, block
  causal or streaming with a KV cache; `attention`, `rope`, `fused`: its parts;
- `vae`, `vae_layers`: tm-mini's causal video autoencoder with a streaming decoder;
  `wan_vae`: Wan2.1's own VAE;
- `audio`: the Wav2Vec2 encoder, per-latent-frame windows, audio projection, silence;
- `conditioning`: Wan2.1's text (umT5) and image (CLIP) encoders;
- `talking`: `TalkingModel`, the bundle of one model's networks;
- `mouth_reader`: the lip-sync instrument's CNN;
- `presets`: the size presets; `init`: randomly initialised checkpoints of them;
- `checkpoint`: safetensors files with the config in their metadata;
- `registry`: `--model NAME|PATH`, the default and the installed models;
- `describe`: what `tmrender info` says about a model.

Layer 1: may import config, errors, files, devices and diffusion (README.md, "Module map").
"""
