"""Count the eager ATen ops and the host reads of a piece of PyTorch code (benchmarks, regression tests).

:class:`OpCounter` is a context manager combining a ``TorchDispatchMode`` (every ATen op that
reaches the dispatcher below autograd, backward included: on a GPU each is about one kernel
launch) with a ``TorchFunctionMode`` (the Python-level calls that move data to the host). What it
calls *host reads* are the places where a GPU step would wait for the device:

- ``scalar``: ``aten._local_scalar_dense`` (``.item()``, ``int(t)``, ``float(t)``, ``bool(t)``,
  ``if t:``);
- ``data_dependent``: ops whose output shape depends on values (``nonzero``, ``masked_select``,
  ``unique``..., boolean-mask indexing), which copy a count to the host on CUDA;
- ``to_host``: ``.cpu()``, ``.numpy()``, ``.tolist()``, ``__array__`` of a tensor that is not
  already a host tensor (``.to(device)`` is not counted: on a CPU run ``.to("cpu")`` and
  ``.to(device)`` cannot be told apart).

On the CPU every tensor lives on the host, so "already a host tensor" is tracked: the results of
``.cpu()``/``.numpy()``, tensors built from Python or NumPy data without a ``device`` argument,
and whatever ops compute from such tensors only, are host tensors; reading them again is free.
Each read is recorded with the innermost ``detrkit`` (or caller) source line, so a test can name
the one it allows (the matcher's cost-matrix copy).
"""

from __future__ import annotations

import sys
import weakref
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["OpCounter", "OpCounts"]

_DATA_DEPENDENT = frozenset(
    {"nonzero", "nonzero_static", "masked_select", "unique", "_unique", "_unique2", "unique_consecutive",
     "unique_dim", "repeat_interleave", "argwhere", "_assert_async", "equal", "is_nonzero"}
)  # fmt: skip
_TO_HOST = frozenset({"cpu", "numpy", "tolist", "__array__"})
_FACTORIES = frozenset(
    {"tensor", "as_tensor", "from_numpy", "asarray", "arange", "zeros", "ones", "full", "empty"}
)


@dataclass
class OpCounts:
    """What :class:`OpCounter` saw.

    Attributes:
        ops: number of ATen ops dispatched.
        by_op: count per op name (``"aten.mm.default"``...).
        reads: ``(kind, where)`` of every host read, ``kind`` in ``scalar``, ``data_dependent``,
            ``to_host``; ``where`` is ``file:function:line`` of the innermost frame outside torch.
    """

    ops: int = 0
    by_op: Counter[str] = field(default_factory=Counter)
    reads: list[tuple[str, str]] = field(default_factory=list)

    @property
    def host_reads(self) -> int:
        """Number of host reads (syncs on a GPU)."""
        return len(self.reads)

    def top(self, n: int = 20) -> list[tuple[str, int]]:
        """The ``n`` most frequent ops."""
        return self.by_op.most_common(n)


def _caller() -> str:
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if "/torch/" not in name and name != __file__:
            return f"{name.split('/src/')[-1]}:{frame.f_code.co_name}:{frame.f_lineno}"
        frame = frame.f_back
    return "?"


class _Host:
    """Weak set of host tensors (by identity)."""

    def __init__(self) -> None:
        self._ids: dict[int, weakref.ref[torch.Tensor]] = {}

    def add(self, value: Any) -> None:
        for t in tree_flatten(value)[0]:
            if isinstance(t, torch.Tensor):
                self._ids[id(t)] = weakref.ref(t)

    def __contains__(self, t: object) -> bool:
        ref = self._ids.get(id(t))
        return ref is not None and ref() is t


class _Dispatch(TorchDispatchMode):
    def __init__(self, counts: OpCounts, host: _Host) -> None:
        super().__init__()
        self.counts, self.host = counts, host

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func.overloadpacket.__name__
        self.counts.ops += 1
        self.counts.by_op[str(func)] += 1
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        on_host = bool(inputs) and all(t in self.host for t in inputs)
        if on_host:
            self.host.add(out)
        elif name == "_local_scalar_dense":
            self.counts.reads.append(("scalar", _caller()))
        elif name in _DATA_DEPENDENT or (
            name == "index" and any(t is not None and t.dtype == torch.bool for t in args[1])
        ):
            self.counts.reads.append(("data_dependent", _caller()))
        return out


class _Function(TorchFunctionMode):
    def __init__(self, counts: OpCounts, host: _Host) -> None:
        super().__init__()
        self.counts, self.host = counts, host

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in _TO_HOST:
            if args and isinstance(args[0], torch.Tensor) and args[0] not in self.host:
                self.counts.reads.append(("to_host", _caller()))
            out = func(*args, **kwargs)
            self.host.add(out)
            return out
        out = func(*args, **kwargs)
        if name in _FACTORIES and kwargs.get("device") is None:
            self.host.add(out)
        return out


class OpCounter:
    """``with OpCounter() as c: step()`` then ``c.counts`` (:class:`OpCounts`).

    Tensors passed to :meth:`mark_host` (e.g. a batch's targets read on the host by design) count
    as host tensors from the start.
    """

    def __init__(self) -> None:
        self.counts = OpCounts()
        self._host = _Host()
        self._modes: list[Any] = []

    def mark_host(self, *values: Any) -> None:
        """Treat the tensors in ``values`` (any nesting of lists/dicts) as host tensors."""
        for v in values:
            self._host.add(v)

    def __enter__(self) -> OpCounter:
        self._modes = [_Function(self.counts, self._host), _Dispatch(self.counts, self._host)]
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self.counts.reads)
