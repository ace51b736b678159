import pytest
import torch

from grok.data.tasks import COMMUTATIVE, OPERATIONS, build_task, is_prime

BRUTE = {
    "add": lambda a, b, p: (a + b) % p,
    "sub": lambda a, b, p: (a - b) % p,
    "mul": lambda a, b, p: (a * b) % p,
    "div": lambda a, b, p: next(c for c in range(p) if (c * b) % p == a),
    "x2_plus_y2": lambda a, b, p: (a * a + b * b) % p,
    "x2_xy_y2": lambda a, b, p: (a * a + a * b + b * b) % p,
    "x3_xy": lambda a, b, p: (a**3 + a * b) % p,
}


@pytest.mark.parametrize("op", OPERATIONS)
@pytest.mark.parametrize("p", [7, 11])
def test_table_equals_brute_force(op, p):
    task = build_task(op, p)
    expected = {(a, b): BRUTE[op](a, b, p) for a in range(p) for b in range(p)
                if not (op == "div" and b == 0)}
    got = {(int(a), int(b)): int(c) for (a, b), c in zip(task.pairs, task.labels)}
    assert got == expected


def test_tokens_end_with_equals_and_vocab_is_p_plus_one():
    task = build_task("add", 7)
    tokens = task.tokens()
    assert tokens.shape == (49, 3)
    assert torch.equal(tokens[:, :2], task.pairs)
    assert (tokens[:, 2] == 7).all() and task.vocab_size == 8 and task.n_classes == 7


def test_commutative_flags_match_the_tables():
    for op in OPERATIONS:
        if op == "div":
            continue
        task = build_task(op, 7)
        table = {(int(a), int(b)): int(c) for (a, b), c in zip(task.pairs, task.labels)}
        symmetric = all(table[a, b] == table[b, a] for a, b in table)
        assert symmetric == (op in COMMUTATIVE), op


def test_div_needs_a_prime():
    assert [n for n in range(20) if is_prime(n)] == [2, 3, 5, 7, 11, 13, 17, 19]
    with pytest.raises(ValueError, match="prime"):
        build_task("div", 9)
