from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from distill.teacher_cache import TeacherCache, teacher_fingerprint


class TinyTeacher(nn.Module):
    """Two convs with a feature tap, so the cache stores more than one output per row."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Conv2d(4, 6, 3, padding=1)
        self.head = nn.Conv2d(6, 3, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feat = torch.relu(self.body(x))
        return {"out": torch.sigmoid(self.head(feat)), "body": feat}


class Counting:
    """Wraps the teacher so a test sees how often and on how many rows the cache ran it."""

    def __init__(self, teacher: nn.Module) -> None:
        self.teacher = teacher
        self.calls = 0
        self.rows = 0

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.calls += 1
        self.rows += x.shape[0]
        return self.teacher(x)


def _teacher(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return TinyTeacher().eval()


def _inputs(n: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], exact: bool = True) -> None:
    """exact=False where the teacher ran on a different batch composition: CPU conv kernels differ by
    an ulp between batch sizes, so only a cached value vs the value it cached is bit-identical."""
    assert set(a) == set(b)
    for name in a:
        assert a[name].dtype == torch.float32
        assert not a[name].requires_grad
        tol = 0.0 if exact else 1e-6
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=tol)


def test_first_call_misses_second_hits_without_running_the_teacher(tmp_path: Path) -> None:
    teacher, x = _teacher(), _inputs()
    with torch.no_grad():
        direct = teacher(x)
    cache = TeacherCache(tmp_path, teacher, tags=("out", "body"))
    compute = Counting(teacher)

    first = cache(x, compute)
    assert (cache.misses, cache.hits, compute.calls, compute.rows) == (4, 0, 1, 4)
    _assert_same(first, direct)

    second = cache(x, compute)
    assert (cache.misses, cache.hits, compute.calls) == (4, 4, 1)
    _assert_same(second, direct)
    files = sorted(cache.dir.rglob("*.pt"))
    assert len(files) == 4
    assert all(f.parent.name == f.stem[:2] and f.parent.parent.name == cache.fingerprint[:16] for f in files)
    assert not list(cache.dir.rglob("*.tmp"))


def test_a_later_run_on_the_same_root_hits(tmp_path: Path) -> None:
    x = _inputs()
    TeacherCache(tmp_path, _teacher())(x, Counting(_teacher()))
    later = TeacherCache(tmp_path, _teacher())  # same weights rebuilt from the same seed
    compute = Counting(_teacher())
    later(x, compute)
    assert (later.hits, later.misses, compute.calls) == (4, 0, 0)


def test_changing_one_weight_changes_the_fingerprint_and_misses(tmp_path: Path) -> None:
    x = _inputs()
    teacher = _teacher()
    cache = TeacherCache(tmp_path, teacher)
    cache(x, Counting(teacher))

    with torch.no_grad():
        teacher.head.weight[0, 0, 0, 0] += 1e-3
    changed = TeacherCache(tmp_path, teacher)
    assert changed.fingerprint != cache.fingerprint
    compute = Counting(teacher)
    result = changed(x, compute)
    assert (changed.misses, changed.hits, compute.rows) == (4, 0, 4)
    with torch.no_grad():
        _assert_same(result, teacher(x))


def test_fingerprint_depends_on_tags_and_class_not_on_object_identity() -> None:
    teacher = _teacher()
    assert teacher_fingerprint(teacher) == teacher_fingerprint(_teacher())
    assert teacher_fingerprint(teacher, ["out"]) != teacher_fingerprint(teacher)
    assert teacher_fingerprint(teacher, ["out"]) != teacher_fingerprint(teacher, ["body"])
    assert teacher_fingerprint(teacher, ["a", "b"]) != teacher_fingerprint(teacher, ["ab"])  # no concat clash

    class OtherTeacher(TinyTeacher):
        pass

    other = OtherTeacher()
    other.load_state_dict(teacher.state_dict())
    assert teacher_fingerprint(other) != teacher_fingerprint(teacher)


def test_tags_give_separate_folders(tmp_path: Path) -> None:
    teacher, x = _teacher(), _inputs()
    TeacherCache(tmp_path, teacher, tags=("out",))(x, Counting(teacher))
    other = TeacherCache(tmp_path, teacher, tags=("body",))
    compute = Counting(teacher)
    other(x, compute)
    assert (other.misses, compute.rows) == (4, 4)
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 2


def test_changing_one_input_row_misses_only_that_row(tmp_path: Path) -> None:
    teacher, x = _teacher(), _inputs()
    cache = TeacherCache(tmp_path, teacher)
    cache(x, Counting(teacher))

    y = x.clone()
    y[2, 1, 3, 3] += 0.5
    compute = Counting(teacher)
    result = cache(y, compute)
    assert (cache.hits, cache.misses, compute.calls, compute.rows) == (3, 5, 1, 1)
    with torch.no_grad():
        _assert_same(result, teacher(y), exact=False)


def test_rows_hit_regardless_of_batch_order_and_composition(tmp_path: Path) -> None:
    teacher, x = _teacher(), _inputs()
    cache = TeacherCache(tmp_path, teacher)
    first = cache(x, Counting(teacher))

    compute = Counting(teacher)
    for order in ([3, 0], [2, 1]):
        result = cache(x[order], compute)
        _assert_same(result, {name: value[order] for name, value in first.items()})
    assert (cache.hits, compute.calls) == (4, 0)

    # A mixed batch: two cached rows around a new one, returned in input order, teacher run on 1 row.
    new = _inputs(1, seed=7)
    mixed = torch.cat([x[1:2], new, x[0:1]])
    result = cache(mixed, compute)
    assert (compute.calls, compute.rows) == (1, 1)
    with torch.no_grad():
        _assert_same(result, teacher(mixed), exact=False)


def test_non_contiguous_rows_hash_like_their_contiguous_copy(tmp_path: Path) -> None:
    teacher = _teacher()
    x = _inputs().permute(0, 1, 3, 2)  # same values layout-wise transposed: non-contiguous
    cache = TeacherCache(tmp_path, teacher)
    cache(x, Counting(teacher))
    compute = Counting(teacher)
    cache(x.contiguous(), compute)
    assert compute.calls == 0


def test_corrupt_file_warns_and_is_recomputed(tmp_path: Path) -> None:
    teacher, x = _teacher(), _inputs()
    cache = TeacherCache(tmp_path, teacher)
    cache(x, Counting(teacher))
    victim = sorted(cache.dir.rglob("*.pt"))[0]
    victim.write_bytes(victim.read_bytes()[:20])  # truncated, as a full disk might leave it

    compute = Counting(teacher)
    with pytest.warns(UserWarning, match=victim.name):
        result = cache(x, compute)
    assert (compute.calls, compute.rows) == (1, 1)
    with torch.no_grad():
        _assert_same(result, teacher(x), exact=False)

    again = Counting(teacher)
    cache(x, again)  # rewritten: now a clean hit
    assert again.calls == 0


def test_file_holding_something_else_is_a_miss(tmp_path: Path) -> None:
    teacher, x = _teacher(), _inputs(1)
    cache = TeacherCache(tmp_path, teacher)
    cache(x, Counting(teacher))
    victim = next(cache.dir.rglob("*.pt"))
    torch.save([1, 2, 3], victim)
    compute = Counting(teacher)
    with pytest.warns(UserWarning, match="dict of tensors"):
        cache(x, compute)
    assert compute.rows == 1


def test_compute_with_wrong_row_count_names_the_key(tmp_path: Path) -> None:
    teacher, x = _teacher(), _inputs()
    cache = TeacherCache(tmp_path, teacher)

    def bad(batch: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": teacher(batch)["out"], "pooled": teacher(batch)["body"].mean(dim=0)}

    with pytest.raises(ValueError, match="'pooled'"):
        cache(x, bad)
    assert not list(tmp_path.rglob("*.pt"))  # nothing half-stored


def test_duplicate_rows_are_computed_once_and_outputs_are_float32(tmp_path: Path) -> None:
    teacher = _teacher()
    x = _inputs(2)
    batch = torch.cat([x, x[:1]])
    cache = TeacherCache(tmp_path, teacher)
    compute = Counting(teacher)

    def half(b: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: v.half() for k, v in compute(b).items()}

    result = cache(batch, half)
    assert (compute.rows, cache.misses) == (2, 3)
    assert result["out"].dtype == torch.float32
    torch.testing.assert_close(result["out"][2], result["out"][0], rtol=0, atol=0)
    assert len(list(cache.dir.rglob("*.pt"))) == 2


def test_stored_rows_do_not_carry_the_whole_batch(tmp_path: Path) -> None:
    teacher, x = _teacher(), _inputs(8)
    cache = TeacherCache(tmp_path, teacher)
    cache(x, Counting(teacher))
    one = TeacherCache(tmp_path / "single", teacher)
    one(x[:1], Counting(teacher))
    batch_file = max(p.stat().st_size for p in cache.dir.rglob("*.pt"))
    single_file = next(one.dir.rglob("*.pt")).stat().st_size
    assert batch_file < 1.5 * single_file  # a saved view would hold all 8 rows' storage


def test_fingerprint_handles_every_state_dtype() -> None:
    teacher = _teacher()
    teacher.register_buffer("mask", torch.tensor([True, False]))
    teacher.register_buffer("scale", torch.ones(3, dtype=torch.bfloat16))
    teacher.register_buffer("step", torch.tensor(7))
    base = teacher_fingerprint(teacher)
    teacher.mask[1] = True
    flipped = teacher_fingerprint(teacher)
    teacher.scale[0] = 2.0
    assert len({base, flipped, teacher_fingerprint(teacher)}) == 3
