"""Evaluation and benchmarks.

- `metrics`: pure metric functions (Pearson, A/V offset, masked PSNR/SSIM, motion, pauses);
- `mouth`: the mouth reader's weights and reading mouth parameters off frames;
- `sources`: frame sources (ground truth, still image, loudness cheat, a model);
- `suite`: rendering test clips with sources and measuring them (`tmrender eval`);
- `report`: report.json, figures and index.html;
- `bench_io`, `bench_render`, `peak`: speed and memory benchmarks (`tmrender bench`).
"""
