"""SyncNet (LSE-C / LSE-D) checked against independent code written here: the network as
numpy convolutions, pools and batch norms on the same random weights, the offset search as
syncnet_python's loop over frames, the MFCC as loops and scipy's DCT, the smoothing as
scipy's medfilt; then loading, one-line errors and `tmrender eval --syncnet`."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch

from tmrender.errors import UserInputError
from tmrender.eval import mfcc as mfcc_mod
from tmrender.eval import syncnet as sn

BN_EPS = 1e-5


# --- Random weights -------------------------------------------------------------------------


def random_net(seed: int = 0, calibrate: tuple | None = None) -> sn.SyncNet:
    """A SyncNet with random weights and random batch-norm affines; with `calibrate`
    (faces (B, 3, 5, 224, 224), mfcc (B, 1, 13, 20)), running statistics taken from one
    batch so that every layer sees unit-scale activations (embeddings of order 1)."""
    torch.manual_seed(seed)
    net = sn.SyncNet()
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.momentum = None  # cumulative: one batch sets the statistics
        if calibrate is not None:
            net.train()
            net.embed_lips(calibrate[0])
            net.embed_audio(calibrate[1])
    return net.eval()


def save_state(path, state: dict) -> None:
    with open(path, "wb") as f:
        torch.save(state, f)


# --- Independent reference (numpy, float64) --------------------------------------------------


def np_conv2d(x, w, b, stride, padding):
    """x (B, C, H, W), w (O, C, kh, kw) -> (B, O, H', W') by patches and a tensor product."""
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    kh, kw = w.shape[2:]
    patches = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))
    patches = patches[:, :, :: stride[0], :: stride[1]]  # (B, C, H', W', kh, kw)
    out = np.tensordot(patches, w, axes=([1, 4, 5], [1, 2, 3]))  # (B, H', W', O)
    return out.transpose(0, 3, 1, 2) + b[None, :, None, None]


def np_pool(x, kernel, stride, padding):
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=-np.inf)
    windows = np.lib.stride_tricks.sliding_window_view(x, kernel, axis=(2, 3))
    return windows[:, :, :: stride[0], :: stride[1]].max(axis=(4, 5))


def np_bn(x, p, prefix):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mean, var = p[prefix + "running_mean"].reshape(shape), p[prefix + "running_var"].reshape(shape)
    scale, shift = p[prefix + "weight"].reshape(shape), p[prefix + "bias"].reshape(shape)
    return (x - mean) / np.sqrt(var + BN_EPS) * scale + shift


def np_head(x, p, name):
    x = x @ p[f"{name}.0.weight"].T + p[f"{name}.0.bias"]
    x = np.maximum(np_bn(x, p, f"{name}.1."), 0)
    return x @ p[f"{name}.3.weight"].T + p[f"{name}.3.bias"]


def np_audio(x, p):
    """(B, 1, 13, 20) -> (B, 1024), syncnet_python's netcnnaud + netfcaud by hand."""

    def block(x, i, stride=(1, 1), padding=1):
        w, b = p[f"netcnnaud.{i}.weight"], p[f"netcnnaud.{i}.bias"]
        return np.maximum(np_bn(np_conv2d(x, w, b, stride, padding), p, f"netcnnaud.{i + 1}."), 0)

    x = block(x, 0)  # the (1, 1) pool after it is the identity
    x = np_pool(block(x, 4), (3, 3), (1, 2), 0)
    x = block(block(block(x, 8), 11), 14)
    x = np_pool(x, (3, 3), (2, 2), 0)
    x = block(x, 18, padding=0)
    return np_head(x.reshape(len(x), -1), p, "netfcaud")


def np_lips(x, p):
    """(B, 3, 5, 224, 224) -> (B, 1024): the 5-frame first layer as a sum over frames of 2-D
    convolutions, the rest 2-D (their temporal kernel is 1)."""
    w0 = p["netcnnlip.0.weight"]
    y = (
        sum(np_conv2d(x[:, :, t], w0[:, :, t], np.zeros(len(w0)), (2, 2), 0) for t in range(5))
        + p["netcnnlip.0.bias"][None, :, None, None]
    )

    def block(x, i, stride=(1, 1), padding=1):
        w, b = p[f"netcnnlip.{i}.weight"][:, :, 0], p[f"netcnnlip.{i}.bias"]
        return np.maximum(np_bn(np_conv2d(x, w, b, stride, padding), p, f"netcnnlip.{i + 1}."), 0)

    y = np_pool(np.maximum(np_bn(y, p, "netcnnlip.1."), 0), (3, 3), (2, 2), 0)
    y = np_pool(block(y, 4, (2, 2), 1), (3, 3), (2, 2), 1)
    y = np_pool(block(block(block(y, 8), 11), 14), (3, 3), (2, 2), 0)
    y = block(y, 18, padding=0)
    return np_head(y.reshape(len(y), -1), p, "netfclip")


def np_offset_search(video, audio, vshift):
    """syncnet_python's calc_pdist and evaluate, as loops: -> (LSE-C, LSE-D, offset)."""
    zeros = np.zeros((vshift, audio.shape[1]))
    padded = np.concatenate([zeros, audio, zeros])
    dists = np.empty((len(video), 2 * vshift + 1))
    for i in range(len(video)):
        for k in range(2 * vshift + 1):
            dists[i, k] = np.sqrt(np.sum((video[i] - padded[i + k] + 1e-6) ** 2))
    mean = dists.mean(axis=0)
    best = int(np.argmin(mean))
    return float(np.median(mean) - mean[best]), float(mean[best]), vshift - best


def np_mfcc(x, rate=16_000):
    """MFCC by the textbook recipe, loops for the frames and filters, scipy for the DCT."""
    from scipy.fftpack import dct

    x = np.append(x[0], x[1:] - 0.97 * x[:-1])
    count = 1 + math.ceil((len(x) - 400) / 160)
    x = np.concatenate([x, np.zeros((count - 1) * 160 + 400 - len(x))])
    power = np.array([np.abs(np.fft.rfft(x[160 * i : 160 * i + 400], 512)) ** 2 / 512
                      for i in range(count)])  # fmt: skip
    mel = np.linspace(0, 2595 * np.log10(1 + 8000 / 700), 28)
    edges = np.floor(513 * 700 * (10 ** (mel / 2595) - 1) / rate)
    bank = np.zeros((26, 257))
    for j in range(26):
        for k in range(int(edges[j]), int(edges[j + 1])):
            bank[j, k] = (k - edges[j]) / (edges[j + 1] - edges[j])
        for k in range(int(edges[j + 1]), int(edges[j + 2])):
            bank[j, k] = (edges[j + 2] - k) / (edges[j + 2] - edges[j + 1])
    bands = power @ bank.T
    bands[bands == 0] = np.finfo(float).eps
    cep = dct(np.log(bands), type=2, axis=1, norm="ortho")[:, :13]
    cep *= 1 + 11 * np.sin(np.pi * np.arange(13) / 22)
    energy = power.sum(axis=1)
    energy[energy == 0] = np.finfo(float).eps
    cep[:, 0] = np.log(energy)
    return cep


def speechlike(seconds: float, seed: int = 0) -> np.ndarray:
    """(N,) a tone with a moving pitch and loudness, noise and a silent start, in [-1, 1]."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16_000)) / 16_000
    pitch = 2 * np.pi * np.cumsum(180 + 60 * np.sin(2 * np.pi * 2 * t)) / 16_000
    audio = 0.3 * np.sin(pitch) * (1 + np.sin(2 * np.pi * 3 * t)) / 2
    audio += 0.02 * rng.standard_normal(t.size)
    audio[: t.size // 8] = 0.0
    return audio


def clip_inputs(frames: int = 8, size: int = 96, seed: int = 0):
    """frames (T, size, size, 3) uint8 with a moving bright box on noise, face boxes (T, 4)
    that move a little, and audio (T * 640,)."""
    rng = np.random.default_rng(seed)
    video = rng.integers(0, 256, (frames, size, size, 3), dtype=np.uint8)
    boxes = np.zeros((frames, 4), np.int32)
    for i in range(frames):
        x0, y0 = 20 + i % 3, 15 + (i // 2) % 2
        boxes[i] = (x0, y0, x0 + 50, y0 + 56)
        video[i, y0 + 35 : y0 + 40 + 3 * (i % 4), x0 + 15 : x0 + 35] = 250  # the "mouth"
    return video, boxes, speechlike(frames * 640 / 16_000, seed)


# --- Network and offset search ---------------------------------------------------------------


def test_state_dict_has_syncnet_pythons_layout():
    state = sn.SyncNet().state_dict()
    shapes = {k: tuple(v.shape) for k, v in state.items() if "num_batches" not in k}
    assert len(shapes) == 88  # 12 convolutions, 4 linears, 14 batch norms
    assert shapes["netcnnaud.0.weight"] == (64, 1, 3, 3)
    assert shapes["netcnnaud.18.weight"] == (512, 256, 5, 4)
    assert shapes["netcnnlip.0.weight"] == (96, 3, 5, 7, 7)
    assert shapes["netcnnlip.18.weight"] == (512, 256, 1, 6, 6)
    assert shapes["netfcaud.1.running_var"] == (512,)
    assert shapes["netfclip.3.weight"] == (1024, 512)
    assert sum(math.prod(s) for k, s in shapes.items() if "running" not in k) == 13_631_616


@pytest.mark.slow
def test_clip_scores_match_an_independent_reference():
    """Crop -> both branches -> offset search on 8 frames (3 windows): the module against
    numpy convolutions and loops on the same random weights."""
    video, boxes, audio = clip_inputs()
    # 1. The module's crops and MFCC windows calibrate the random batch norms.
    crops = sn.face_crops(video, boxes)
    count = sn.window_count(len(video), audio.size)
    assert count == 3
    faces = np.stack([crops[i : i + 5] for i in range(count)]).transpose(0, 4, 1, 2, 3)
    cep = np_mfcc(mfcc_mod.to_int16_scale(audio)).T
    mels = np.stack([cep[:, 4 * i : 4 * i + 20] for i in range(count)])[:, None]
    net = random_net(calibrate=(torch.tensor(faces).float(), torch.tensor(mels).float()))
    # 2. The module, end to end.
    got = sn.SyncNetScorer(net).score(video, boxes, audio)
    # 3. The reference, in float64, against the module's network in float64.
    p = {k: v.double().numpy() for k, v in net.state_dict().items()}
    ref_video, ref_audio = np_lips(faces.astype(np.float64), p), np_audio(mels, p)
    assert np.abs(ref_video).mean() > 0.1 and np.abs(ref_audio).mean() > 0.1  # not degenerate
    net64 = copy.deepcopy(net).double()
    with torch.no_grad():
        video64 = net64.embed_lips(torch.from_numpy(faces.astype(np.float64)))
        audio64 = net64.embed_audio(torch.from_numpy(mels.astype(np.float64)))
    np.testing.assert_allclose(video64.numpy(), ref_video, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(audio64.numpy(), ref_audio, rtol=1e-4, atol=1e-4)
    # 4. The module end to end (its crops, MFCC and windows, in float32) against the same
    # float32 network on the reference's windows: float32 kernels against float64 ones
    # differ by CPU (3e-4 seen on an AMD EPYC), so each precision is compared with itself.
    mine_video, mine_audio = sn.embed_clip(net, video, boxes, audio)
    with torch.no_grad():
        video32 = net.embed_lips(torch.from_numpy(faces).float())
        audio32 = net.embed_audio(torch.from_numpy(mels).float())
    np.testing.assert_allclose(mine_video.numpy(), video32.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(mine_audio.numpy(), audio32.numpy(), rtol=1e-4, atol=1e-4)
    # 5. The offset search on the module's embeddings; the reference's offset agrees.
    conf, dist, offset = np_offset_search(
        mine_video.double().numpy(), mine_audio.double().numpy(), sn.VSHIFT
    )
    assert got["sync_c"] == pytest.approx(conf, abs=1e-4)
    assert got["sync_d"] == pytest.approx(dist, abs=1e-4)
    assert got["sync_offset"] == offset == np_offset_search(ref_video, ref_audio, sn.VSHIFT)[2]


def test_offset_search_matches_the_loops():
    rng = np.random.default_rng(1)
    video, audio = rng.standard_normal((40, 16)), rng.standard_normal((40, 16))
    audio[5:] = 0.3 * audio[5:] + video[:-5]  # video i goes with audio i + 5 (and noise)
    got = sn.offset_search(torch.tensor(video).float(), torch.tensor(audio).float())
    conf, dist, offset = np_offset_search(video, audio, sn.VSHIFT)
    assert (got.confidence, got.distance) == pytest.approx((conf, dist), abs=1e-4)
    assert got.offset == offset == -5
    assert got.mean_distance.shape == (2 * sn.VSHIFT + 1,)


def test_offset_search_sign():
    """Video frame i showing what audio window i - 3 says (the video 3 frames late): offset
    +3; early: -3. The distance is that of the 3 unmatched ends alone (padding)."""
    rng = np.random.default_rng(2)
    base = torch.tensor(rng.standard_normal((33, 8))).float()
    late = sn.offset_search(base[:30], base[3:])  # video_i = audio_(i - 3)
    early = sn.offset_search(base[3:], base[:30])  # video_i = audio_(i + 3)
    assert late.offset == 3 and early.offset == -3
    ends = float(base[:3].norm(dim=1).sum() / 30)
    assert late.distance == pytest.approx(ends, abs=1e-4) and late.confidence > 2


def test_short_clip_has_no_score():
    net = random_net()
    video, boxes, audio = clip_inputs(frames=5)
    assert sn.SyncNetScorer(net).score(video, boxes, audio) == {
        "sync_c": None, "sync_d": None, "sync_offset": None,
    }  # fmt: skip


# --- Preprocessing ------------------------------------------------------------------------


def test_mfcc_matches_the_textbook_recipe():
    audio = mfcc_mod.to_int16_scale(speechlike(1.0))
    got, ref = mfcc_mod.mfcc(audio), np_mfcc(audio)
    assert got.shape == ref.shape == (1 + math.ceil((16_000 - 400) / 160), 13)
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-9)
    assert got[0, 0] == pytest.approx(np.log(np.finfo(float).eps))  # silent start: log(eps)


def test_mfcc_of_a_tone_knows_its_level():
    """c0 is the log of the frame's power on the one-sided spectrum, sum |X_k|^2 / 512 over
    k = 0..256: half of Parseval's 512 * sum x^2 / 512, for a tone of amplitude A' (after
    pre-emphasis) over 400 samples 400 * A'^2 / 4."""
    amplitude = 10_000.0
    t = np.arange(16_000) / 16_000
    got = mfcc_mod.mfcc(amplitude * np.sin(2 * np.pi * 1000 * t))
    gain = np.abs(1 - 0.97 * np.exp(-2j * np.pi * 1000 / 16_000))  # of the pre-emphasis
    expected = np.log(400 * (amplitude * gain) ** 2 / 4)
    assert np.median(got[1:-2, 0]) == pytest.approx(expected, abs=0.02)


def test_median_filter_is_medfilts():
    """scipy.signal.medfilt(values, 13): zeros stand in for the frames beyond both ends."""
    values = np.random.default_rng(3).uniform(10, 20, 30)
    ref = [
        np.median([values[j] if 0 <= j < len(values) else 0.0 for j in range(i - 6, i + 7)])
        for i in range(len(values))
    ]
    np.testing.assert_allclose(sn.median_filter(values), ref)


def test_face_crop_geometry():
    """A 48 px red face box: the crop (2.8 half-sizes square, top at the box's top, 0.4 s
    of context each side) holds it at rows 0..160 and columns 32..192 of 224, in BGR."""
    frame = np.zeros((128, 128, 3), np.uint8)
    frame[30:78, 40:88] = (255, 0, 0)
    crop = sn.face_crop(frame, 24.0, 54.0, 64.0)
    assert crop.shape == (224, 224, 3)
    assert tuple(crop[80, 112]) == (0, 0, 255)  # BGR
    assert tuple(crop[200, 112]) == (0, 0, 0) and tuple(crop[80, 10]) == (0, 0, 0)
    red = crop[:, :, 2] > 127
    rows, cols = np.flatnonzero(red.any(axis=1)), np.flatnonzero(red.any(axis=0))
    assert abs(rows[0]) <= 1 and abs(rows[-1] - 160) <= 2
    assert abs(cols[0] - 32) <= 2 and abs(cols[-1] - 192) <= 2
    corner = sn.face_crop(frame, 24.0, 10.0, 10.0)  # box past the frame's corner: grey pad
    assert tuple(corner[5, 5]) == (110, 110, 110)


# --- Loading --------------------------------------------------------------------------------


def test_saved_state_dict_loads(tmp_path):
    net = random_net(seed=4)
    state = net.state_dict()
    path = tmp_path / "syncnet_v2.model"
    save_state(path, {k: v for k, v in state.items() if "num_batches" not in k})  # old files
    loaded = sn.load_syncnet(path)
    assert not loaded.training
    for key, value in loaded.state_dict().items():
        if "num_batches" not in key:
            assert torch.equal(value, state[key]), key


@pytest.mark.parametrize("problem", ["missing", "unexpected", "shape", "text", "list", "absent"])
def test_wrong_file_is_one_line(tmp_path, problem):
    state = sn.SyncNet().state_dict()
    path = tmp_path / "bad.model"
    if problem == "missing":
        del state["netfclip.3.bias"]
    elif problem == "unexpected":
        state["module.extra"] = torch.zeros(1)
    elif problem == "shape":
        state["netcnnaud.0.weight"] = torch.zeros(64, 1, 5, 5)
    if problem == "text":
        path.write_text("not a model\n")
    elif problem == "list":
        save_state(path, [torch.zeros(1)])
    elif problem != "absent":
        save_state(path, state)
    with pytest.raises(UserInputError) as error:
        sn.load_syncnet(path)
    message = str(error.value)
    assert "\n" not in message and str(path) in message
    expected = {"missing": "netfclip.3.bias", "unexpected": "module.extra",
                "shape": "netcnnaud.0.weight", "absent": "no such file"}  # fmt: skip
    assert expected.get(problem, "") in message


# --- tmrender eval --syncnet ------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory):
    """One 1 s test clip (25 frames: 20 SyncNet windows)."""
    from tmrender.data.corpus import ClipSpec, make_clip, write_clip, write_index

    root = tmp_path_factory.mktemp("synccorpus")
    clip = make_clip(ClipSpec("test", 0, 0, 1.0))
    write_clip(clip, root / "test" / clip.meta["id"], "npy")
    write_index(root / "test", [{"id": clip.meta["id"]}])
    return root


def run_cli(*args: str) -> int:
    from tmrender.cli import main

    with pytest.raises(SystemExit) as stop:
        main(list(args))
    return stop.value.code


@pytest.mark.slow
def test_eval_with_a_wrong_syncnet_file_exits_2(tiny_corpus, tmp_path, capsys):
    bad = tmp_path / "bad.model"
    bad.write_text("nope\n")
    out = tmp_path / "out"
    code = run_cli("eval", "--data", str(tiny_corpus), "--out", str(out), "--model", "still",
                   "--syncnet", str(bad))  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "--syncnet" in err
    assert len([line for line in err.splitlines() if line.strip()]) == 1
    assert not (out / "report.json").exists()


@pytest.mark.slow
def test_eval_with_syncnet_reports_the_figures(tiny_corpus, tmp_path):
    weights = tmp_path / "syncnet_v2.model"
    save_state(weights, random_net(seed=5).state_dict())
    out = tmp_path / "out"
    code = run_cli("eval", "--data", str(tiny_corpus), "--out", str(out), "--model", "gt",
                   "--model", "still", "--plots", "1", "--syncnet", str(weights))  # fmt: skip
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["syncnet"]["path"] == str(weights) and len(report["syncnet"]["sha256"]) == 64
    for source in ("gt", "still"):
        (row,) = report["sources"][source]["clips"]
        figures = row["all"]
        assert figures["sync_d"] > 0 and figures["sync_c"] >= 0
        assert abs(figures["sync_offset"]) <= sn.VSHIFT
        summary = report["sources"][source]["summary"]
        assert summary["sync_c"] == figures["sync_c"] and summary["sync_d"] == figures["sync_d"]
        assert summary["sync_offset_zero_share"] in (0.0, 1.0)
    page = (out / "index.html").read_text()
    assert "Sync-C (LSE-C)" in page and "Sync-D (LSE-D)" in page
    assert "SyncNet, clip by clip" in page and "still Sync-C / Sync-D / offset" in page


def test_syncnet_columns_only_when_measured():
    from tmrender.eval.report import summary_table, syncnet_clip_table

    results = {"gt": {"summary": {"sync_r": 1.0}}}
    header, _ = summary_table(results)
    assert not any("Sync-C" in h for h in header)
    assert syncnet_clip_table(results) is None
    figures = {"sync_c": 7.0, "sync_d": 6.5, "sync_offset": 1}
    results = {
        "gt": {"summary": {"sync_r": 1.0, **figures}, "clips": [{"id": "a", "all": figures}]}
    }
    header, _ = summary_table(results)
    assert "Sync-C (LSE-C)" in header
    assert syncnet_clip_table(results) == (
        ["clip", "gt Sync-C / Sync-D / offset"],
        [["a", "7.000 / 6.500 / 1"]],
    )
