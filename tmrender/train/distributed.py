"""Data-parallel training of the DiT stages (teacher, ode, dmd) under torchrun, with
PyTorch's own stack: FSDP2 (`fully_shard`), activation checkpointing and sharded
checkpoints (`torch.distributed.checkpoint`). Parallelism is applied from outside the
models (torchtitan's `parallelize_llama` style): the model files know nothing of ranks.

    torchrun --standalone --nproc-per-node 2 -m tmrender train teacher --data D --init I ...
    torchrun --nproc-per-node 8 $(which tmrender) train dmd ... --device cuda

`run_stage` asks `parallel(device)` for this process's `Parallel`; outside torchrun (or
with one process) it is world size 1 and every method below is the identity (activation
checkpointing aside, which also serves one process), so a single-process run is exactly
what it was. With N ranks:

- process group: nccl on CUDA (each rank on the GPU of its LOCAL_RANK: `--device cuda`),
  gloo on the CPU; joined once per process.
- sharding (`Parallel.parallelize`): every trained network is FSDP2-sharded, one unit per
  DiT block (`WanBlock`; its K/V projections, which the DiT also calls outside the block,
  are small units of their own: `FORWARD_METHODS`) then the network as the root (bf16
  parameters and fp32 gradient reduction on CUDA, fp32 on the CPU); frozen networks (the
  VAE, dmd's teacher) stay replicated. The reduce-scatter averages the gradients.
- batches (`Parallel.split`): every rank draws the same global batch from the loop's
  shared generator and keeps its rows (rank r of N: rows r B/N .. (r+1) B/N - 1 of every
  tensor whose first dimension is the batch size B), so the ranks' batches together are
  exactly the one-process batch and the averaged gradient is its gradient, for losses that
  are means over samples (the mouth-weighted `teacher.weighted_mse` is normalised per
  sample for this reason).
- figures: logged losses are averaged over the ranks; logging, the loss curve and the
  export happen on rank 0; validation runs on every rank (the sharded DiT needs them all).
- checkpoints: a DCP folder `checkpoint.sharded/` written by every rank (networks and
  optimizer states by parameter name, the loop's generator, step and options), read back
  on any number of ranks, one included; a one-process `checkpoint.pt` is read onto N ranks
  too. Each kind of checkpoint removes the other when written, so a run folder holds one.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import functools
import os
import shutil
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import (
    FSDPModule,
    MixedPrecisionPolicy,
    fully_shard,
    register_fsdp_forward_method,
)
from torch.utils.checkpoint import checkpoint

from tmrender.devices import resolve_device
from tmrender.errors import UserInputError
from tmrender.models.attention import AudioCrossAttention, CrossAttention
from tmrender.models.audio import SilenceEmbedding
from tmrender.models.dit import WanBlock, WanDiT

# FSDP2 gathers a unit's parameters around its forward only. The models also call a few
# methods outside forward: the DiT's streaming API; the audio / text K/V of every block,
# projected before the blocks run; and a cache refresh (`start_stream`, `commit_chunk`),
# which stops at the last block's self-attention K/V (`WanBlock.attn_input`, then
# `SelfAttention.project_kv`). Each module below is its own unit with these methods
# registered as forward methods. `project_kv` is also called inside the attention's
# forward, so rather than the attention, its K/V projections are units (`_kv_units`).
FORWARD_METHODS: dict[type, tuple[str, ...]] = {
    WanDiT: ("start_stream", "forward_chunk", "commit_chunk"),
    WanBlock: ("attn_input",),
    AudioCrossAttention: ("kv",),
    CrossAttention: ("kv",),
    SilenceEmbedding: ("mix",),
}

# FSDP2 warns that a unit returns a view (an in-place op on it would skip the gather); the
# models return K/V views but never write into a tensor in place.
warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")


@dataclass(frozen=True)
class Parallel:
    """This process's place among the ranks (world 1: a single process, no group)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: logs, plots and exports."""
        return self.rank == 0

    # -- networks

    def parallelize(
        self, nets: dict[str, nn.Module], trained: set[int], checkpoint_blocks: bool
    ) -> None:
        """Shard the networks holding a trained parameter (ids in `trained`) with FSDP2 (on
        several ranks), recomputing each DiT block's activations in the backward pass when
        `checkpoint_blocks` (on any number of ranks). Call before building the optimizers:
        sharding replaces the parameters."""
        trained_nets = [n for n in nets.values() if any(id(p) in trained for p in n.parameters())]
        if checkpoint_blocks:
            for net in trained_nets:
                for block in _blocks(net):
                    checkpoint_activations(block)
        if self.world == 1:
            return
        if not any(_blocks(net) for net in trained_nets):
            raise UserInputError("only the DiT stages (teacher, ode, dmd) train on several ranks")
        mesh = init_device_mesh(_device_type(nets), (self.world,))
        for net in trained_nets:
            shard_network(net, mesh, precision_policy(mesh.device_type))

    @contextlib.contextmanager
    def full_state_dicts(self, nets: dict[str, nn.Module]) -> Iterator[None]:
        """Within the block, `state_dict()` of a sharded network gives its full tensors (on
        the CPU) on rank 0, for `Stage.export`. Gathers on every rank."""
        handles = []
        for net in nets.values():
            if isinstance(net, FSDPModule):
                options = StateDictOptions(full_state_dict=True, cpu_offload=True)
                full = get_model_state_dict(net, options=options)
                if self.main:
                    handles.append(net.register_state_dict_post_hook(_put(full)))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    # -- batches and figures

    def split(self, batch: Any) -> Any:
        """This rank's rows of a global batch (see the module docstring)."""
        if self.world == 1:
            return batch
        size = _batch_size(batch)
        if size is None or size % self.world:
            raise UserInputError(f"--batch {size} must be a multiple of the {self.world} ranks")
        share = size // self.world
        return _take_rows(batch, size, slice(self.rank * share, (self.rank + 1) * share))

    def mean(self, values: list[float]) -> list[float]:
        """Each value averaged over the ranks."""
        if self.world == 1:
            return values
        total = torch.tensor(values, dtype=torch.float64, device=_collective_device())
        dist.all_reduce(total)
        return (total / self.world).tolist()

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on one (so that all stop together)."""
        if self.world == 1:
            return flag
        value = torch.tensor([float(flag)], device=_collective_device())
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def on_main(self, fn: Callable[[], Any]) -> Any:
        """fn() on rank 0, its result handed to every rank (which wait for it)."""
        if self.world == 1:
            return fn()
        box = [fn() if self.main else None]
        dist.broadcast_object_list(box, src=0, device=_collective_device())
        return box[0]

    # -- checkpoints

    def save(
        self,
        folder: Path,
        nets: dict[str, nn.Module],
        optimizers: dict[str, torch.optim.Optimizer],
        extra: dict[str, Any],
    ) -> None:
        """Write the DCP checkpoint `folder` (every rank its shards): networks, optimizers
        and the `extra` entries (step, generator state, ...); the old folder is replaced
        once the new one is complete."""
        partial = folder.with_name(f".{folder.name}.partial")
        if self.main:
            shutil.rmtree(partial, ignore_errors=True)
        self.barrier()
        state = {**training_state(nets, optimizers), **extra}
        with _quiet_single_process():
            dcp.save(state, checkpoint_id=partial)
        self.barrier()
        if self.main:
            _replace_folder(partial, folder)
        self.barrier()

    def barrier(self) -> None:
        """Wait for every rank."""
        if self.world > 1:
            dist.barrier()


# -- joining the ranks -------------------------------------------------------------------------

_JOINED: Parallel | None = None


def parallel(device: str) -> Parallel:
    """This process's `Parallel`. Under torchrun (RANK, WORLD_SIZE, LOCAL_RANK set, world
    size above 1) the first call joins the process group (nccl for a CUDA `device`, gloo
    for the CPU) and makes the rank's GPU the current device; later calls return the same."""
    global _JOINED
    if _JOINED is not None:
        return _JOINED
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Parallel()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    on_cuda = torch.device(device).type == "cuda"
    if on_cuda:
        index = torch.device(device).index
        if index is not None and index != local_rank:
            raise UserInputError(
                f"--device {device} under torchrun: give --device cuda, each rank takes the "
                "GPU of its LOCAL_RANK"
            )
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if on_cuda else "gloo")
        atexit.register(_close_group)  # after a failure; `leave` ends a run that went well
    _JOINED = Parallel(rank=rank, world=world, local_rank=local_rank)
    return _JOINED


def leave() -> bool:
    """The end of a run: wait for every rank, then close the process group (a later
    `parallel` call joins again); without a process group, nothing. Returns whether this
    process reports the run (rank 0, or the only process)."""
    global _JOINED
    main = _JOINED is None or _JOINED.main
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    _JOINED = None
    return main


def _close_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def rank_device(device: str) -> str:
    """`--device` for this process, resolved once before a stage loads: `auto` is CUDA when
    present, else the CPU; under torchrun `cuda` is the GPU of its LOCAL_RANK (the process
    group is joined here, before a stage puts anything on a GPU)."""
    device = str(resolve_device(device))
    par = parallel(device)
    if par.world > 1 and torch.device(device).type == "cuda":
        return f"cuda:{par.local_rank}"
    return device


def _collective_device() -> torch.device:
    """Where small tensors of collectives live: the current GPU under nccl, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _device_type(nets: dict[str, nn.Module]) -> str:
    return next(p for net in nets.values() for p in net.parameters()).device.type


# -- sharding --------------------------------------------------------------------------------


def precision_policy(device_type: str) -> MixedPrecisionPolicy:
    """bf16 parameters in forward and backward, fp32 gradient reduction on CUDA; fp32 on
    the CPU. Inputs are left as they are (the models cast them; timesteps stay fp32)."""
    if device_type == "cuda":
        return MixedPrecisionPolicy(
            param_dtype=torch.bfloat16, reduce_dtype=torch.float32, cast_forward_inputs=False
        )
    return MixedPrecisionPolicy(cast_forward_inputs=False)


def shard_network(net: nn.Module, mesh: DeviceMesh, policy: MixedPrecisionPolicy) -> None:
    """FSDP2 units from the leaves up: in each DiT block the modules that the DiT calls
    outside the block's forward (`FORWARD_METHODS`, `_kv_units`), then the block, then the
    network itself (the root); then the methods of `FORWARD_METHODS` are registered."""
    shard = functools.partial(fully_shard, mesh=mesh, mp_policy=policy)
    for block in _blocks(net):
        for unit in _kv_units(block):
            shard(unit)
        shard(block)
    shard(net)
    for module in net.modules():
        for kind, methods in FORWARD_METHODS.items():
            if isinstance(module, kind):
                assert isinstance(module, FSDPModule), f"{kind.__name__} must be its own unit"
                for method in methods:
                    register_fsdp_forward_method(module, method)


def _blocks(net: nn.Module) -> list[WanBlock]:
    return [m for m in net.modules() if isinstance(m, WanBlock)]


def _kv_units(block: WanBlock) -> list[nn.Module]:
    """A block's modules with methods called from outside its forward (with parameters)."""
    attn = block.self_attn
    units = [attn.k, attn.v, attn.norm_k]
    units += [getattr(block, name, None) for name in ("audio_cross_attn", "cross_attn")]
    return [u for u in units if u is not None and any(True for _ in u.parameters())]


def checkpoint_activations(block: nn.Module) -> None:
    """Recompute `block`'s activations in the backward pass instead of keeping them
    (`torch.utils.checkpoint`, non-reentrant); its parameters and names are unchanged."""
    block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)


def _put(full: dict[str, Tensor]) -> Callable:
    """A state-dict post-hook that puts the tensors of `full` in place of the shards."""

    def hook(module, state_dict, prefix, local_metadata) -> None:
        for key, value in full.items():
            state_dict[prefix + key] = value

    return hook


# -- batches ---------------------------------------------------------------------------------


def _batch_size(batch: Any) -> int | None:
    """First dimension of the first tensor in `batch` (depth first), None without one."""
    if isinstance(batch, Tensor):
        return batch.shape[0] if batch.ndim else None
    for part in _parts(batch):
        size = _batch_size(part)
        if size is not None:
            return size
    return None


def _parts(batch: Any) -> list[Any]:
    if dataclasses.is_dataclass(batch):
        return [getattr(batch, f.name) for f in dataclasses.fields(batch)]
    if isinstance(batch, dict):
        return list(batch.values())
    if isinstance(batch, (list, tuple)):
        return list(batch)
    return []


def _take_rows(batch: Any, size: int, rows: slice) -> Any:
    """`batch` with `rows` of every tensor whose first dimension is `size`, recursively
    through dataclasses, dicts, lists and tuples; anything else as it is."""
    if isinstance(batch, Tensor):
        return batch[rows] if batch.ndim and batch.shape[0] == size else batch
    if dataclasses.is_dataclass(batch):
        changes = {
            f.name: _take_rows(getattr(batch, f.name), size, rows)
            for f in dataclasses.fields(batch)
        }
        return dataclasses.replace(batch, **changes)
    if isinstance(batch, dict):
        return {k: _take_rows(v, size, rows) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_take_rows(v, size, rows) for v in batch)
    return batch


# -- checkpoints -----------------------------------------------------------------------------


def training_state(
    nets: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer]
) -> dict[str, Any]:
    """{"networks": {"<net>.<param>": tensor}, "optimizers": {name: state by parameter
    name}}: DTensor shards for sharded networks, plain tensors for the others."""
    modules = nn.ModuleDict(nets)
    return {
        "networks": get_model_state_dict(modules),
        "optimizers": {
            name: get_optimizer_state_dict(modules, opt) for name, opt in optimizers.items()
        },
    }


def load_sharded(
    folder: Path,
    nets: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    extra: dict[str, Any],
) -> dict[str, Any]:
    """Restore networks and optimizers in place from a DCP folder written by
    `Parallel.save`, on any number of ranks (one process without a group included);
    returns the `extra` entries read (the template `extra` names them and their kinds)."""
    _check_networks(folder, _saved_networks(folder), nets)
    state = {**training_state(nets, optimizers), **extra}
    with _quiet_single_process():
        dcp.load(state, checkpoint_id=folder)
    modules = nn.ModuleDict(nets)
    set_model_state_dict(modules, state["networks"])
    for name, opt in optimizers.items():
        set_optimizer_state_dict(modules, opt, state["optimizers"][name])
    return {key: state[key] for key in extra}


def load_full(
    path: Path,
    nets: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    extra: dict[str, Any],
) -> dict[str, Any]:
    """Restore a one-process `checkpoint.pt` (tmrender.train.loop) onto the ranks: its full
    tensors are cut into this rank's shards; returns the `extra` entries read."""
    if not path.exists():
        raise UserInputError(f"nothing to resume: {path} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    _check_networks(path, set(state["networks"]), nets)
    modules = nn.ModuleDict(nets)
    full = StateDictOptions(full_state_dict=True)
    networks = {f"{net}.{k}": v for net, sd in state["networks"].items() for k, v in sd.items()}
    set_model_state_dict(modules, networks, options=full)
    names = _parameter_names(nets)
    for name, opt in optimizers.items():
        by_name = _optimizer_state_by_name(state["optimizers"][name], opt, names)
        set_optimizer_state_dict(modules, opt, by_name, options=full)
    return {key: state[key] for key in extra}


def _optimizer_state_by_name(
    state: dict, opt: torch.optim.Optimizer, names: dict[int, str]
) -> dict:
    """`Optimizer.state_dict()` (parameters numbered in the order of the param groups)
    keyed by parameter names, as `get_optimizer_state_dict` keys it."""
    ordered = [names[id(p)] for group in opt.param_groups for p in group["params"]]
    groups = [{**g, "params": [ordered[i] for i in g["params"]]} for g in state["param_groups"]]
    return {"state": {ordered[i]: s for i, s in state["state"].items()}, "param_groups": groups}


def _parameter_names(nets: dict[str, nn.Module]) -> dict[int, str]:
    """id(parameter) -> "<net>.<name>", the names of `training_state`."""
    names: dict[int, str] = {}
    for net_name, net in nets.items():
        for name, p in net.named_parameters():
            names.setdefault(id(p), f"{net_name}.{name}")
    return names


def _saved_networks(folder: Path) -> set[str]:
    keys = dcp.FileSystemReader(str(folder)).read_metadata().state_dict_metadata
    return {k.split(".")[1] for k in keys if k.startswith("networks.")}


def _check_networks(path: Path, saved: set[str], nets: dict[str, nn.Module]) -> None:
    if saved != set(nets):
        differ = sorted(saved ^ set(nets))
        raise UserInputError(f"{path} belongs to another stage (differs in {differ})")


def _replace_folder(new: Path, final: Path) -> None:
    """Put folder `new` at `final`, the old one kept until the new one is in place."""
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    new.rename(final)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def _quiet_single_process() -> Iterator[None]:
    """DCP warns when it runs without a process group (a one-process resume): intended."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield
