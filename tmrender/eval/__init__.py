"""Evaluation and benchmarks.

- `metrics`: pure metric functions (Pearson, A/V offset, masked PSNR/SSIM, motion, pauses);
- `mouth`: the mouth reader's weights and reading mouth parameters off frames;
- `sources`: frame sources (ground truth, still image, loudness cheat, a model);
- `options`: what an evaluation measures (`EvalOptions`) and what one run does (`RunOptions`);
- `suite`: rendering test clips with sources and measuring them;
- `real`: the same on a tracked real corpus, measured with landmarks (`faces.measure`);
- `report`: report.json, figures and index.html;
- `run`: one whole run, `run_eval` (what `tmrender eval` calls);
- `bench`: `run_bench`, which picks and runs a benchmark (what `tmrender bench` calls);
- `bench_io`, `bench_render`, `bench_gpu`, `trace`, `peak`: the speed and memory benchmarks.

Layer 5: may import every layer up to render (README.md, "Module map"); the training stages
import eval (its metrics and mouth reader), never the other way.
"""
