import math

import pytest
import torch

from grok.data.splits import SplitError, load_split, make_split, save_split
from grok.data.tasks import build_task


def pair_sets(task, split):
    as_pairs = lambda idx: {(int(a), int(b)) for a, b in task.pairs[idx]}  # noqa: E731
    return as_pairs(split.train_idx), as_pairs(split.test_idx)


def brute_mirror_leak(train, test):
    return sum((b, a) in train for a, b in test) / len(test)


CASES = [("random", "block", 0.5), ("random", "block", 0.3), ("structured", "block", 0.5),
         ("structured", "stripe", 0.5), ("structured", "stripe", 0.7), ("conflict", "block", 1.0),
         ("conflict", "block", 0.5)]


@pytest.mark.parametrize("name,pattern,frac", CASES)
@pytest.mark.parametrize("op", ["add", "sub", "x3_xy"])
def test_disjoint_covering_deterministic_and_leak(name, pattern, frac, op):
    task = build_task(op, 13)
    split = make_split(task, name, frac, seed=3, pattern=pattern)
    again = make_split(task, name, frac, seed=3, pattern=pattern)
    assert torch.equal(split.train_idx, again.train_idx)
    assert torch.equal(split.test_idx, again.test_idx)
    train, test = pair_sets(task, split)
    assert not train & test
    if not (name == "conflict" and frac < 1):
        assert len(train) + len(test) == task.n
    assert split.mirror_leak == pytest.approx(brute_mirror_leak(train, test))


def test_seed_changes_the_split():
    task = build_task("add", 13)
    a, b = make_split(task, "random", 0.5, seed=0), make_split(task, "random", 0.5, seed=1)
    assert not torch.equal(a.train_idx, b.train_idx)


def test_random_split_size():
    task = build_task("mul", 13)
    split = make_split(task, "random", 0.3, seed=0)
    assert len(split.train_idx) == round(0.3 * 169)


@pytest.mark.parametrize("p,frac", [(13, 0.5), (17, 0.75), (23, 0.4)])
def test_block_is_a_x_a(p, frac):
    task = build_task("add", p)
    split = make_split(task, "structured", frac, seed=1, pattern="block")
    train, test = pair_sets(task, split)
    residues = {a for a, _ in test}
    assert len(residues) == round(math.sqrt(1 - frac) * p)
    # Pair by pair: a pair is tested exactly when both of its residues are in A.
    for a in range(p):
        for b in range(p):
            assert ((a, b) in test) == (a in residues and b in residues)
    assert split.mirror_leak == 0.0  # A x A is symmetric: no mirror can be in training


def test_stripe_has_the_documented_size_for_every_p_and_fraction():
    """|D| = round((1 - train_frac) * p) exactly; where that is p, nothing is left to train on."""
    for p in range(3, 31):
        task = build_task("add", p)
        for frac in (0.005, 0.1, 0.25, 0.3, 0.5, 0.7, 0.9, 0.97):
            target = round((1 - frac) * p)
            if target in (0, p):
                with pytest.raises(SplitError, match="leaves"):
                    make_split(task, "structured", frac, seed=1, pattern="stripe")
                continue
            split = make_split(task, "structured", frac, seed=1, pattern="stripe")
            diffs = {(a - b) % p for a, b in pair_sets(task, split)[1]}
            assert len(diffs) == target, (p, frac)


@pytest.mark.parametrize("p,frac", [(13, 0.5), (17, 0.8), (23, 0.3), (12, 0.5)])
def test_stripe_is_a_symmetric_difference_set(p, frac):
    task = build_task("sub", p)
    split = make_split(task, "structured", frac, seed=2, pattern="stripe")
    train, test = pair_sets(task, split)
    diffs = {(a - b) % p for a, b in test}
    assert diffs == {(-d) % p for d in diffs}
    assert len(diffs) == round((1 - frac) * p)
    for a in range(p):
        for b in range(p):
            assert ((a, b) in test) == ((a - b) % p in diffs)
    assert split.mirror_leak == 0.0


INTEGER = {"add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
           "x2_plus_y2": lambda a, b: a * a + b * b, "x2_xy_y2": lambda a, b: a * a + a * b + b * b,
           "x3_xy": lambda a, b: a**3 + a * b}


@pytest.mark.parametrize("op", sorted(INTEGER))
def test_conflict_trains_on_no_wrap_and_tests_on_wrap(op):
    p = 11
    task = build_task(op, p)
    split = make_split(task, "conflict", 1.0, seed=0)
    train, test = pair_sets(task, split)
    label = {(int(a), int(b)): int(c) for (a, b), c in zip(task.pairs, task.labels)}
    for a in range(p):
        for b in range(p):
            value = INTEGER[op](a, b)
            wraps = not 0 <= value < p
            assert ((a, b) in test) == wraps and ((a, b) in train) == (not wraps)
            # The shortcut (the plain integer) is right on every training pair, wrong on every
            # test pair.
            assert (label[a, b] == value) == (not wraps)


def test_conflict_subsample_is_a_subset_of_no_wrap():
    task = build_task("add", 13)
    full = pair_sets(task, make_split(task, "conflict", 1.0, seed=0))[0]
    half, test = pair_sets(task, make_split(task, "conflict", 0.5, seed=0))
    assert half < full and len(half) == round(0.5 * len(full))
    assert all(a + b >= 13 for a, b in test)


def test_conflict_for_div_is_a_clear_error():
    with pytest.raises(SplitError, match="not defined for div"):
        make_split(build_task("div", 7), "conflict", 1.0, seed=0)


def test_empty_side_is_a_clear_error():
    with pytest.raises(SplitError, match="leaves"):
        make_split(build_task("add", 5), "structured", 0.999, seed=0, pattern="block")


def test_save_load_roundtrip_and_checksum(tmp_path):
    task = build_task("add", 13)
    split = make_split(task, "structured", 0.5, seed=0, pattern="stripe")
    path = tmp_path / "split.pt"
    save_split(split, path)
    loaded = load_split(path, task)
    assert torch.equal(loaded.train_idx, split.train_idx) and loaded.params == split.params
    assert loaded.checksum == split.checksum

    data = torch.load(path, weights_only=True)
    data["test_idx"] = data["test_idx"][1:]
    torch.save(data, path)
    with pytest.raises(SplitError, match="checksum"):
        load_split(path, task)


def test_load_rejects_another_task(tmp_path):
    split = make_split(build_task("add", 13), "random", 0.5, seed=0)
    save_split(split, tmp_path / "split.pt")
    with pytest.raises(SplitError, match="belongs to add mod 13"):
        load_split(tmp_path / "split.pt", build_task("sub", 13))


@pytest.mark.parametrize("content,message", [
    ("truncated", r"cannot read .*split.pt \(RuntimeError: PytorchStreamReader failed reading "
                  r"zip archive: failed finding central directory\): the file is damaged"),
    ({"step": 0, "model_state": {}}, r"split.pt is not a split file \(KeyError: 'name'\)"),
    ([1, 2], r"split.pt is not a split file \(TypeError: list indices must be integers"),
])
def test_a_damaged_or_foreign_split_file_is_one_short_error(tmp_path, content, message):
    """A foreign file (say a checkpoint copied over split.pt) raised KeyError with a traceback,
    and a damaged one carried torch's whole paragraph of advice into the line."""
    path = tmp_path / "split.pt"
    if content == "truncated":
        save_split(make_split(build_task("add", 13), "random", 0.5, seed=0), path)
        path.write_bytes(path.read_bytes()[:100])
    else:
        torch.save(content, path)
    with pytest.raises(SplitError, match=message) as err:
        load_split(path)
    assert len(str(err.value)) < 250 and "\n" not in str(err.value)
