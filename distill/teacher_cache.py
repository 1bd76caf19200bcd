"""On-disk cache of a frozen teacher's outputs, so distillation does not re-run the teacher.

A student run over a fixed dataset asks the same frozen teacher for the same samples every epoch, and a
later run with the same teacher and data asks again; for a PyNET-sized teacher that forward pass costs
more than the student's whole step.  Entries are content-addressed twice over:

* the folder is named by a *fingerprint* of the teacher (class, every state_dict tensor's name, dtype,
  shape and bytes) plus caller tags (tap paths, which input the teacher sees), so changing one weight
  or one tap starts a fresh folder instead of serving stale outputs;
* each file is named by a hash of one input row, so a changed sample misses on its own and the batch
  order or composition does not matter.

Layout: ``root/<fingerprint[:16]>/<key[:2]>/<key>.pt``.  Files are written to a temporary name in the
same folder and ``os.replace``-d into place, so a killed run never leaves a half-written file under a
final name; a file that still fails to load counts as a miss and is rewritten.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

# Bumped when the file layout or what is hashed changes, so old folders are never read by new code.
_FORMAT = b"ispdc-teacher-cache-v1"

ComputeFn = Callable[[torch.Tensor], dict[str, torch.Tensor]]


def _update_field(digest: Any, data: bytes | memoryview) -> None:
    """Length-prefix each field so concatenations of different fields can never collide."""
    digest.update(len(data).to_bytes(8, "little"))
    digest.update(data)


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The tensor's raw bytes without a copy where it is already a contiguous CPU tensor.

    Viewing as uint8 works for every dtype (bfloat16 and bool included, which numpy cannot hold), and
    the numpy view hands hashlib the buffer directly: one pass over the bytes.
    """
    flat = tensor.detach().to("cpu").resolve_conj().resolve_neg().contiguous().reshape(-1)
    if flat.is_quantized:
        flat = flat.int_repr()
    return flat.view(torch.uint8).numpy().data  # the array's memoryview: the same as memoryview(array)


def _hash_tensor_into(digest: Any, tensor: torch.Tensor) -> None:
    _update_field(digest, str(tensor.dtype).encode())
    _update_field(digest, repr(tuple(tensor.shape)).encode())
    _update_field(digest, _tensor_bytes(tensor))


def teacher_fingerprint(teacher: nn.Module, tags: Sequence[str] = ()) -> str:
    """sha256 over the teacher's class, its state_dict (in key order) and the caller's tags."""
    digest = hashlib.sha256()
    _update_field(digest, _FORMAT)
    cls = type(teacher)
    _update_field(digest, f"{cls.__module__}.{cls.__qualname__}".encode())
    state = teacher.state_dict()
    _update_field(digest, str(len(state)).encode())
    for name, value in state.items():
        _update_field(digest, name.encode())
        if isinstance(value, torch.Tensor):
            _hash_tensor_into(digest, value)
        else:  # e.g. a module's get_extra_state(): hash its repr, the best a generic cache can do
            _update_field(digest, repr(value).encode())
    _update_field(digest, str(len(tags)).encode())
    for tag in tags:
        _update_field(digest, str(tag).encode())
    return digest.hexdigest()


def sample_key(row: torch.Tensor) -> str:
    """sha256 of one input row's dtype, shape and contiguous bytes."""
    digest = hashlib.sha256()
    _hash_tensor_into(digest, row)
    return digest.hexdigest()


class TeacherCache:
    """Content-addressed on-disk store of a frozen teacher's outputs per input sample.

    The caller keeps the teacher frozen: the fingerprint is taken once, at construction; a teacher
    whose weights change afterwards needs a new ``TeacherCache``.
    """

    def __init__(self, root: Path, teacher: nn.Module, tags: Sequence[str] = ()) -> None:
        self.root = Path(root)
        self.tags = tuple(str(t) for t in tags)
        self.fingerprint: str = teacher_fingerprint(teacher, self.tags)
        self.dir = self.root / self.fingerprint[:16]
        self.hits: int = 0
        self.misses: int = 0

    def path_for(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.pt"

    def __call__(self, inputs: torch.Tensor, compute: ComputeFn) -> dict[str, torch.Tensor]:
        """inputs (B, ...): per row, load the cached dict if present, else run `compute` ONCE on the
        stacked missing rows, store each row's results, and return the dict with the B rows in input
        order (same keys, tensors stacked on dim 0, on inputs.device, detached, float32)."""
        if inputs.ndim < 1 or inputs.shape[0] == 0:
            raise ValueError(f"expected a non-empty batch (B, ...), got shape {tuple(inputs.shape)}")
        host = inputs.detach().to("cpu")  # one device transfer for hashing, not one per row
        keys = [sample_key(row) for row in host]
        cached: dict[int, dict[str, torch.Tensor]] = {}
        for i, key in enumerate(keys):
            entry = self._load(self.path_for(key))
            if entry is not None:
                cached[i] = entry
        missing = [i for i in range(len(keys)) if i not in cached]
        self.hits += len(cached)
        self.misses += len(missing)

        # A row repeated within the batch is computed once: `slot[key]` is its row in `computed`.
        slot: dict[str, int] = {}
        first_rows: list[int] = []
        for i in missing:
            if keys[i] not in slot:
                slot[keys[i]] = len(first_rows)
                first_rows.append(i)
        computed: dict[str, torch.Tensor] = {}
        if first_rows:
            computed = self._compute(inputs, first_rows, compute)
            on_host = {name: value.to("cpu") for name, value in computed.items()}  # one transfer per key
            for key, j in slot.items():
                self._store(self.path_for(key), {name: value[j] for name, value in on_host.items()})

        names = list(computed) if computed else list(next(iter(cached.values())))
        self._check_keys(names, cached, keys)
        missing_slots = [slot[keys[i]] for i in missing]
        cached_rows = sorted(cached)
        out: dict[str, torch.Tensor] = {}
        for name in names:
            fresh = computed.get(name)
            stored = [cached[i][name] for i in cached_rows]
            shape = fresh.shape[1:] if fresh is not None else stored[0].shape
            for i, row in zip(cached_rows, stored):
                if row.shape != shape:
                    raise ValueError(f"teacher output {name!r} in {self.path_for(keys[i])} has shape "
                                     f"{tuple(row.shape)}, other rows {tuple(shape)}; a stale cache? see `tags`")
            result = torch.empty((len(keys), *shape), dtype=torch.float32, device=inputs.device)
            if fresh is not None:
                index = torch.tensor(missing_slots, device=fresh.device)
                result[missing] = fresh.index_select(0, index).to(inputs.device)
            if stored:  # stacked on the host first: one transfer, not one per row
                result[cached_rows] = torch.stack(stored).to(device=inputs.device, dtype=torch.float32)
            out[name] = result
        return out

    def _compute(self, inputs: torch.Tensor, rows: list[int], compute: ComputeFn) -> dict[str, torch.Tensor]:
        """Run the teacher once on the missing rows and check it returned one result per row."""
        batch = inputs[torch.tensor(rows, device=inputs.device)]
        with torch.no_grad():
            result = compute(batch)
        if not isinstance(result, dict) or not result:
            raise ValueError(f"compute must return a non-empty dict of tensors, got {type(result).__name__}")
        checked: dict[str, torch.Tensor] = {}
        for name, value in result.items():
            if not isinstance(name, str) or not isinstance(value, torch.Tensor):
                raise ValueError(f"compute returned {name!r}: {type(value).__name__}; expected str -> Tensor")
            if value.ndim == 0 or value.shape[0] != len(rows):
                raise ValueError(f"compute returned {name!r} with shape {tuple(value.shape)}: its first dim "
                                 f"must be the {len(rows)} rows it was given")
            checked[name] = value.detach().float()
        return checked

    def _check_keys(self, names: list[str], cached: dict[int, dict[str, torch.Tensor]], keys: list[str]) -> None:
        """Every row must carry the same outputs; a mismatch means the tags missed what selects them."""
        for i, entry in cached.items():
            if set(entry) != set(names):
                raise ValueError(
                    f"cached teacher outputs {sorted(entry)} in {self.path_for(keys[i])} differ from "
                    f"{sorted(names)}; "
                    "pass whatever selects the outputs (tap paths, heads) in `tags` so they get their own folder")

    def _load(self, path: Path) -> dict[str, torch.Tensor] | None:
        """A cached row, or None for a miss; an unreadable or malformed file is a miss with a warning."""
        if not path.is_file():
            return None
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any failure to read means "recompute", never a crash
            warnings.warn(f"teacher cache: unreadable {path} ({type(err).__name__}: {err}); recomputing",
                          stacklevel=3)
            return None
        if not (isinstance(entry, dict) and entry
                and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in entry.items())):
            warnings.warn(f"teacher cache: {path} does not hold a dict of tensors; recomputing", stacklevel=3)
            return None
        return entry

    def _store(self, path: Path, entry: dict[str, torch.Tensor]) -> None:
        """Write atomically (temp file + os.replace); a failed write only warns, the cache is optional."""
        # clone(): a row is a view of the batch and torch.save would otherwise write the whole storage.
        payload = {name: value.to("cpu").contiguous().clone() for name, value in entry.items()}
        tmp_name: str | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem[:16]}.", suffix=".tmp", dir=path.parent)
            with os.fdopen(fd, "wb") as handle:
                torch.save(payload, handle)
            os.replace(tmp_name, path)
            tmp_name = None
        except OSError as err:
            warnings.warn(f"teacher cache: could not write {path} ({err}); continuing without it", stacklevel=3)
        finally:
            if tmp_name is not None:
                try:
                    os.unlink(tmp_name)
                except OSError:
                    pass
