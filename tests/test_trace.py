"""GPU timeline helpers on synthetic kernel events (the profiling itself needs CUDA)."""

from __future__ import annotations

import json

import pytest

from tmrender.eval.trace import (
    KernelEvent,
    busy_intervals,
    kernel_events_from_chrome_trace,
    overlap_fraction,
    shorten_kernel_name,
    steady_window,
    stream_roles,
    write_trace,
)

DIT, DECODE = 7, 13


def synthetic_events() -> list[KernelEvent]:
    """DiT busy 0-100 and 120-200 us; decode busy 90-130 (20 us of it during the DiT's
    gap 100-120) and 190-200 (all during the DiT)."""
    return [
        KernelEvent(DIT, "gemm", 0.0, 60.0),
        KernelEvent(DIT, "flash_fwd", 50.0, 50.0),  # overlaps the gemm: merged
        KernelEvent(DIT, "gemm", 120.0, 80.0),
        KernelEvent(DECODE, "conv", 90.0, 40.0),
        KernelEvent(DECODE, "conv", 190.0, 10.0),
    ]


def test_busy_intervals_merge_overlapping_kernels():
    assert busy_intervals(synthetic_events(), {DIT}) == [(0.0, 100.0), (120.0, 200.0)]
    assert busy_intervals(synthetic_events(), {DECODE}) == [(90.0, 130.0), (190.0, 200.0)]


def test_roles_and_overlap_fraction():
    events = synthetic_events()
    roles = stream_roles(events)
    assert roles == {DIT: "dit", DECODE: "decode"}
    # decode busy 50 us; with the DiT: 90-100, 120-130, 190-200 = 30 us
    assert overlap_fraction(events, roles) == pytest.approx(30 / 50)
    assert overlap_fraction([e for e in events if e.stream == DIT], roles) is None


def test_steady_window_clips_and_rebases():
    events = [KernelEvent(1, "k", float(t), 10.0) for t in range(0, 1000, 20)]
    window = steady_window(events, 100e-6)  # 100 us around the middle (500 us)
    assert min(e.start_us for e in window) == 0.0
    assert max(e.start_us + e.dur_us for e in window) <= 100.0
    assert sum(e.dur_us for e in window) == pytest.approx(50.0)


def test_chrome_trace_parsing_and_names():
    trace = {
        "traceEvents": [
            {
                "cat": "kernel",
                "name": "void at::gemm<float>(int)",
                "ts": 5,
                "dur": 2,
                "args": {"stream": 7},
            },
            {"cat": "cpu_op", "name": "aten::mm", "ts": 1, "dur": 9, "args": {}},
            {"cat": "kernel", "name": "x" * 100, "ts": 1, "dur": 1, "args": {"stream": 13}},
        ]
    }
    events = kernel_events_from_chrome_trace(trace)
    assert [e.stream for e in events] == [13, 7]
    assert events[1].name == "void at::gemm"
    assert len(events[0].name) == 60
    assert shorten_kernel_name("") == ""


def test_write_trace_json_and_png(tmp_path):
    out = write_trace(synthetic_events(), "tiny", str(tmp_path / "t"))
    doc = json.loads((tmp_path / "t.json").read_text())
    assert doc["streams"] == {str(DIT): "dit", str(DECODE): "decode"}
    assert len(doc["events"]) == 5 and doc["names"] == ["conv", "flash_fwd", "gemm"]
    assert doc["overlap_fraction"] == pytest.approx(0.6)
    assert out["decode_overlap_fraction"] == pytest.approx(0.6)
    assert (tmp_path / "t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*partial"))


def test_cli_trace_on_cpu_is_a_user_error(tmp_path, capsys):
    from tmrender.cli import main

    args = ["bench", "--preset", "tm-mini", "--device", "cpu", "--trace", str(tmp_path / "t")]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    assert "needs --device cuda" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_bench_config_swaps_in_wans_vae_with_the_same_latent_shape():
    from tmrender.eval.bench_gpu import bench_config

    mini = bench_config("wan2.1-1.3b-audio", "last_step")
    wan = bench_config("wan2.1-1.3b-audio", "last_step", vae="wan")
    assert (mini.vae.kind, wan.vae.kind) == ("mini", "wan")
    assert wan.sampler.context == "last_step" and wan.dit == mini.dit
    assert wan.latent_height == mini.latent_height and wan.vae.latent_channels == 16
    assert len(wan.vae.latent_mean) == 16  # Wan2.1's statistics: the DiT sees unit scale


@pytest.mark.parametrize(("preset", "vae", "words"), [
    ("tm-mini", "wan", "16 latent channels"),
    ("wan2.1-1.3b-audio", "big", "choose mini or wan"),
])  # fmt: skip
def test_bench_config_refuses_what_it_cannot_build(preset, vae, words):
    from tmrender.errors import UserInputError
    from tmrender.eval.bench_gpu import bench_config

    with pytest.raises(UserInputError, match=words):
        bench_config(preset, vae=vae)
