"""Data-parallel training (tmrender.train.distributed): the teacher stage on 2 ranks (gloo,
CPU, spawned processes) against one process, on the tiny model and corpus. The 2-rank
loss curve is the 1-process one, and a run cut short resumes on the other number of ranks
(2 -> 1 and 1 -> 2) to the uninterrupted run's weights. Batch splitting, the renaming of
a one-process optimizer state and the DiT-only rule are checked on their own."""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from tmrender.errors import UserInputError
from tmrender.train import distributed as D
from tmrender.train import teacher as T
from tmrender.train.loop import SHARDED, LoopOptions, run_stage

# the mouth-weighted loss is a mean over samples, so 2 ranks x 2 rows average to exactly
# the 4-row loss
OPTS = T.TeacherOptions(batch=4, chunks=2, val_clips=1, val_windows=2, sample_every=0,
                        mouth_weight=4.0)  # fmt: skip
LOOP = LoopOptions(steps=6, lr=3e-3, warmup=2, log_every=1, val_every=0, checkpoint_every=3,
                   threads=1)  # fmt: skip
CUT_AFTER = 4  # batches drawn before the cut run dies: after the checkpoint at step 3


class Interrupted(Exception):
    pass


@dataclass(frozen=True)
class Inputs:
    corpus: Path
    init: Path
    root: Path

    def stage(self, name: str) -> T.TeacherStage:
        out = self.root / name
        return T.TeacherStage(self.corpus, out, self.init, OPTS, cache_path=self.root / "cache.pt")

    def run(self, name: str, resume: bool = False, **loop) -> None:
        """A run to the end; asserts that each loss saw B / world rows."""
        stage, opts = self.stage(name), LoopOptions(**{**LOOP.__dict__, **loop})
        real_loss, rows = stage.loss, set()

        def counting_loss(opt_name, batch):
            rows.add(batch.t.shape[0])
            return real_loss(opt_name, batch)

        stage.loss = counting_loss
        run_stage(stage, self.root / name, opts, resume=resume, on_log=None)
        assert rows == {OPTS.batch // int(os.environ.get("WORLD_SIZE", "1"))}

    def cut(self, name: str) -> None:
        """A run that dies after its first checkpoint."""
        stage = self.stage(name)
        real_batch, calls = stage.batch, []

        def dying_batch(gen, device):
            if len(calls) == CUT_AFTER:
                raise Interrupted
            calls.append(1)
            return real_batch(gen, device)

        stage.batch = dying_batch
        with pytest.raises(Interrupted):
            run_stage(stage, self.root / name, LOOP, on_log=None)


def two_ranks(rank: int, inputs: Inputs, port: int) -> None:
    """Rank `rank` of 2: a whole run (activations recomputed), a cut run, and the resume of
    a 1-process cut run."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # fmt: skip
    torch.set_num_threads(1)
    inputs.run("two", checkpoint_blocks=True)
    inputs.cut("two-cut")
    inputs.run("one-cut", resume=True)
    assert D.leave() == (rank == 0)  # rank 0 reports the run


def losses(run: Path) -> list[float]:
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def assert_same_weights(a: Path, b: Path) -> None:
    x, y = load_file(a / "export.safetensors"), load_file(b / "export.safetensors")
    assert x.keys() == y.keys()
    for key in x:
        torch.testing.assert_close(x[key], y[key], rtol=1e-4, atol=1e-5, msg=key)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_ranks_equal_one_process_and_resume_on_either(tmp_path, tiny_corpus, tiny_init):
    torch.set_num_threads(1)
    inputs = Inputs(tiny_corpus, tiny_init, tmp_path)
    inputs.run("one")
    inputs.cut("one-cut")
    mp.spawn(two_ranks, args=(inputs, free_port()), nprocs=2)
    assert (tmp_path / "two-cut" / SHARDED / ".metadata").exists()
    assert not (tmp_path / "one-cut" / "checkpoint.pt").exists()  # replaced by the sharded one
    inputs.run("two-cut", resume=True)
    assert (tmp_path / "two-cut" / "checkpoint.pt").exists()
    assert not (tmp_path / "two-cut" / SHARDED).exists()

    one = losses(tmp_path / "one")
    assert len(one) == LOOP.steps and one[-1] < one[0]
    for run in ("two", "two-cut", "one-cut"):
        assert losses(tmp_path / run) == pytest.approx(one, rel=1e-5), run
        assert_same_weights(tmp_path / "one", tmp_path / run)


# ---- the parts, in one process -------------------------------------------------------------


@dataclass(frozen=True)
class Rows:
    x: torch.Tensor
    nested: dict
    count: int


def test_ranks_split_every_batch_sized_tensor_and_together_make_the_batch():
    batch = Rows(torch.arange(8).view(4, 2), {"t": torch.arange(4.0), "table": torch.ones(3)}, 7)
    parts = [D.Parallel(rank=r, world=2).split(batch) for r in (0, 1)]
    assert torch.equal(torch.cat([p.x for p in parts]), batch.x)
    assert torch.equal(torch.cat([p.nested["t"] for p in parts]), batch.nested["t"])
    assert all(p.nested["table"].shape == (3,) and p.count == 7 for p in parts)
    assert D.Parallel().split(batch) is batch
    with pytest.raises(UserInputError, match="multiple of the 3 ranks"):
        D.Parallel(rank=0, world=3).split(batch)


def test_one_process_optimizer_state_is_renamed_by_parameter():
    net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    opt = torch.optim.AdamW([{"params": [net[1].weight]}, {"params": [net[0].weight]}])
    net(torch.ones(1, 2)).sum().backward()
    opt.step()
    renamed = D._optimizer_state_by_name(opt.state_dict(), opt, D._parameter_names({"n": net}))
    assert [g["params"] for g in renamed["param_groups"]] == [["n.1.weight"], ["n.0.weight"]]
    exp_avg = renamed["state"]["n.0.weight"]["exp_avg"]
    assert torch.equal(exp_avg, opt.state[net[0].weight]["exp_avg"])


def test_one_process_reports_its_run_and_resolves_device_auto():
    assert D.leave()
    assert D.rank_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert D.rank_device("cpu") == "cpu"
    with pytest.raises(UserInputError, match="unknown device"):
        D.rank_device("tpu:x")


def test_several_ranks_need_a_dit_to_shard():
    net = torch.nn.Linear(2, 2)
    with pytest.raises(UserInputError, match="DiT stages"):
        D.Parallel(rank=0, world=2).parallelize({"net": net}, {id(net.weight)}, False)
