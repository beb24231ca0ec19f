"""`tmrender eval` end to end on two short synthetic clips: the ground truth must score as a
perfect model, the held image as a mouth that never moves, and an untrained model renders
through the pipeline; the report has its schema, figures and page."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tmrender.cli import main
from tmrender.data.corpus import ClipSpec, make_clip, write_clip, write_index
from tmrender.eval.options import EvalOptions
from tmrender.eval.sources import loudness_mouth, loudness_source, still_source
from tmrender.eval.suite import METRICS, SCHEMA

SECONDS = 3.0


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Two 3 s test clips (npy frames) with speech in them."""
    root = tmp_path_factory.mktemp("evalcorpus")
    rows = []
    for i in range(2):
        clip = make_clip(ClipSpec("test", 0, i, SECONDS))
        assert clip.mouth[:, 6].std() > 0.1, "the fixture clip must speak"
        write_clip(clip, root / "test" / clip.meta["id"], "npy")
        rows.append({"id": clip.meta["id"]})
    write_index(root / "test", rows)
    return root


def run_cli(*args: str) -> int:
    with pytest.raises(SystemExit) as stop:
        main(list(args))
    return stop.value.code


@pytest.fixture(scope="module")
def baseline_report(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    code = run_cli(
        "eval", "--data", str(corpus), "--out", str(out), "--model", "gt", "--model", "still",
        "--clips", "2", "--plots", "1",
    )  # fmt: skip
    assert code == 0
    return out, json.loads((out / "report.json").read_text())


@pytest.mark.slow
def test_report_schema(baseline_report):
    _, report = baseline_report
    assert report["schema"] == SCHEMA and report["clips"] == 2 and report["split"] == "test"
    assert set(report["sources"]) == {"gt", "still"}
    for source in report["sources"].values():
        assert len(source["clips"]) == 2
        assert set(METRICS) <= set(source["summary"])
        for row in source["clips"]:
            assert {"id", "frames", "render_seconds", "all"} <= set(row)
            assert set(row["all"]) == set(METRICS)
    assert {"path", "sha256"} <= set(report["reader"])


@pytest.mark.slow
def test_ground_truth_scores_as_a_perfect_model(baseline_report):
    gt = baseline_report[1]["sources"]["gt"]["summary"]
    assert gt["sync_r"] >= 0.95 and gt["offset_zero_share"] == 1.0
    assert gt["psnr"] == 100.0 and gt["ssim"] == pytest.approx(1.0)
    assert gt["motion_ratio"] == pytest.approx(1.0)
    assert gt["silence_open"] < 0.1


@pytest.mark.slow
def test_still_image_scores_at_the_floor(baseline_report):
    still = baseline_report[1]["sources"]["still"]["summary"]
    assert abs(still["sync_r"]) < 0.1
    assert still["offset"] is None and still["offset_zero_share"] == 0.0
    assert still["motion_ratio"] == 0.0
    assert still["psnr"] < 60


@pytest.mark.slow
def test_python_callers_get_the_command_line_run(baseline_report, corpus, tmp_path):
    from tmrender.eval.options import RunOptions
    from tmrender.eval.run import run_eval

    opts = RunOptions(data=corpus, out=tmp_path, models=("gt", "still"), clips=2, plots=1)
    steps = []
    report = run_eval(opts, on_step=lambda *step: steps.append(step[:4]))
    cli = baseline_report[1]
    assert report["options"] == cli["options"] and report["reader"] == cli["reader"]
    for name in ("gt", "still"):
        mine, theirs = report["sources"][name]["clips"], cli["sources"][name]["clips"]
        assert [row["all"] for row in mine] == [row["all"] for row in theirs]
    assert [s[:3] for s in steps] == [(1, 4, "gt"), (2, 4, "still"), (3, 4, "gt"), (4, 4, "still")]


@pytest.mark.slow
def test_report_figures_and_page(baseline_report):
    out, _ = baseline_report
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert len(pngs) == 3  # one opening figure and a strip per source, for one clip
    page = (out / "index.html").read_text()
    assert all(name in page for name in pngs) and "<table>" in page


def test_loudness_baseline_is_a_partial_cheat(corpus):
    from tmrender.data.corpus import list_clips, read_clip

    clip = read_clip(list_clips(corpus, "test")[0])
    mouth = loudness_mouth(clip.audio, len(clip.frames))
    r = np.corrcoef(mouth[:, 6], clip.mouth[:, 6])[0, 1]
    assert 0.2 < r < 0.95  # follows speech, but not the visemes
    frames = loudness_source(clip)
    assert frames.shape == clip.frames.shape and frames.dtype == np.uint8
    assert np.array_equal(still_source(clip)[-1], clip.frames[0])


@pytest.mark.slow
def test_eval_with_an_untrained_model_through_the_pipeline(corpus, tmp_path):
    from tmrender.models.init import init_checkpoint

    model = tmp_path / "untrained.safetensors"
    init_checkpoint("tm-mini", model, seed=0)
    out = tmp_path / "report"
    threads = torch.get_num_threads()
    code = run_cli(
        "eval", "--data", str(corpus), "--out", str(out), "--model", str(model),
        "--clips", "1", "--plots", "0", "--json",
    )  # fmt: skip
    torch.set_num_threads(threads)
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    (row,) = report["sources"]["untrained"]["clips"]
    assert row["frames"] == round(SECONDS * 25)
    assert abs(row["all"]["sync_r"]) < 0.5  # an untrained model cannot lip-sync


def test_bad_input_is_one_line_exit_2(corpus, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TMRENDER_WEIGHTS", str(tmp_path / "no-weights"))
    assert run_cli("eval", "--data", str(corpus), "--out", str(tmp_path)) == 2  # no tm-mini
    assert run_cli("eval", "--data", str(tmp_path), "--out", str(tmp_path), "--baselines") == 2
    code = run_cli("eval", "--data", str(corpus), "--out", str(tmp_path), "--baselines", "--long")
    assert code == 2
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.slow
def test_long_mode_measures_first_and_last_windows(corpus, tmp_path):
    from tmrender.data.corpus import list_clips
    from tmrender.eval import report, suite
    from tmrender.eval.mouth import load_mouth_reader
    from tmrender.eval.sources import truth_source

    opts = EvalOptions(window_seconds=1.0)  # 3 s clips: first and last second
    sources = {"gt": truth_source, "still": still_source}
    paths = list_clips(corpus, "test")
    results, traces = suite.evaluate(paths, sources, load_mouth_reader(), opts, long=True)
    gt, still = results["gt"]["summary"], results["still"]["summary"]
    assert {"first", "last", "drift"} <= set(gt)
    assert gt["drift"]["psnr"] == 0.0 and gt["drift"]["motion_ratio"] == 0.0
    assert still["last"]["psnr"] < still["first"]["psnr"]  # the held image drifts away
    meta = {"data": str(corpus), "split": "test", "clips": 2, "long": True,
            "reader": {"path": "x", "sha256": "y"}}  # fmt: skip
    report.write_report(tmp_path, results, traces, meta)
    page = (tmp_path / "index.html").read_text()
    assert "Drift: first vs last minute" in page and "Window by window" in page
    assert (tmp_path / report.DRIFT_PNG).stat().st_size > 0
    # 3 s clips, 1 s windows: three of them; the truth against itself neither drifts nor
    # trends, the held still image loses PSNR window after window
    assert len(gt["windows"]) == 3 and gt["trend"]["psnr"] == 0.0
    assert still["trend"]["psnr"] < 0 and len(results["still"]["clips"][0]["windows"]) == 3


def test_a_late_video_is_caught_by_the_offset(corpus):
    """The ground truth delayed by two frames: lip sync drops and the offset reads +2."""
    from tmrender.data.corpus import list_clips
    from tmrender.eval import suite
    from tmrender.eval.mouth import load_mouth_reader

    def late(clip):
        return np.concatenate([np.repeat(clip.frames[:1], 2, axis=0), clip.frames[:-2]])

    paths = list_clips(corpus, "test")
    results, _ = suite.evaluate(paths, {"late": late}, load_mouth_reader(), EvalOptions())
    assert [row["all"]["offset"] for row in results["late"]["clips"]] == [2, 2]
    assert results["late"]["summary"]["sync_r"] < 0.95


def test_a_reader_of_other_outputs_is_a_user_error(corpus):
    from tmrender.data.corpus import list_clips, read_clip
    from tmrender.errors import UserInputError
    from tmrender.eval.suite import clip_metrics
    from tmrender.models.mouth_reader import MouthReader, MouthReaderConfig

    clip = read_clip(list_clips(corpus, "test")[0])
    reader = MouthReader(MouthReaderConfig(outputs=("width", "open", "round")))
    with pytest.raises(UserInputError, match="needs a reader of open, width, round"):
        clip_metrics(clip.frames, clip, reader, EvalOptions())
