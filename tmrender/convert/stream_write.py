"""Write one safetensors file tensor by tensor, so a model never sits in memory whole.

The safetensors format is an 8-byte little-endian header length, a JSON header (name ->
dtype, shape, byte range; plus `__metadata__`) padded with spaces to 8 bytes, then the raw
little-endian tensor bytes. Names, shapes and dtypes are planned first (`PlannedTensor`),
so the header is written before any data; then each `TensorGroup` opens its source once
(one shard, one `.pth`, one small in-memory network), hands out its tensors one at a time,
and is closed before the next group opens: at most one source is mapped at any time.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

# torch dtype <-> safetensors dtype code
DTYPE_CODES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
CODE_DTYPES: dict[str, torch.dtype] = {v: k for k, v in DTYPE_CODES.items()}
HEADER_ALIGN = 8

Getter = Callable[[str], Tensor]  # planned name -> tensor (in any dtype; cast on write)
ProgressFn = Callable[[int, int], None]  # (bytes written, bytes in all)


@dataclass(frozen=True)
class PlannedTensor:
    """One tensor of the output: its name, shape and stored dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty((), dtype=self.dtype).element_size()


@dataclass(frozen=True)
class TensorGroup:
    """Tensors read from one source; `open()` is a context manager yielding a getter."""

    label: str
    tensors: tuple[PlannedTensor, ...]
    open: Callable[[], AbstractContextManager[Getter]]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


def _header(groups: list[TensorGroup], metadata: dict[str, str]) -> bytes:
    entries: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for group in groups:
        for t in group.tensors:
            assert t.name not in entries, f"tensor {t.name} planned twice"
            entries[t.name] = {
                "dtype": DTYPE_CODES[t.dtype],
                "shape": list(t.shape),
                "data_offsets": [offset, offset + t.nbytes],
            }
            offset += t.nbytes
    text = json.dumps(entries, separators=(",", ":")).encode()
    return text + b" " * (-len(text) % HEADER_ALIGN)


def _tensor_bytes(t: Tensor, planned: PlannedTensor) -> memoryview:
    assert tuple(t.shape) == planned.shape, (
        f"{planned.name}: planned {planned.shape}, source gave {tuple(t.shape)}"
    )
    t = t.detach().to(device="cpu", dtype=planned.dtype).contiguous().reshape(-1)
    return memoryview(t.view(torch.uint8).numpy())


def write_streaming(
    path: Path | str,
    groups: list[TensorGroup],
    metadata: dict[str, str],
    on_progress: ProgressFn | None = None,
) -> int:
    """Write the planned tensors of `groups`, in order, to the safetensors file `path`.

    Holds one group's source open and one tensor in memory at a time. Returns the bytes of
    tensor data written."""
    header = _header(groups, metadata)
    total = sum(g.nbytes for g in groups)
    done = 0
    with open(path, "wb") as f:
        f.write(len(header).to_bytes(8, "little"))
        f.write(header)
        for group in groups:
            with group.open() as get:
                for planned in group.tensors:
                    data = _tensor_bytes(get(planned.name), planned)
                    f.write(data)
                    done += planned.nbytes
                    del data
                    if on_progress is not None:
                        on_progress(done, total)
    return done


def dict_getter(tensors: dict[str, Tensor]) -> Callable[[], AbstractContextManager[Getter]]:
    """An `open` for tensors already in memory: each is dropped once handed out."""
    from contextlib import contextmanager

    @contextmanager
    def opened() -> Iterator[Getter]:
        yield tensors.pop

    return opened
