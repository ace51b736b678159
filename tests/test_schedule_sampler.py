import tracemalloc

import pytest
import torch

from grok.train.sampler import BatchSampler
from grok.train.schedule import LONG_RUN_STEPS, checkpoint_count, checkpoint_steps, eval_steps
from grok.train.trainer import build_settings
from tests.conftest import compose_config


def test_log_linear_checkpoints_are_dense_early_and_include_ends():
    steps = checkpoint_steps(400_000, 200, "log+linear")
    assert steps[0] == 0 and steps[-1] == 400_000 and steps == sorted(set(steps))
    assert 150 <= len(steps) <= 201
    early = [s for s in steps if s <= 4000]  # the first 1% of the run
    assert len(early) > 40  # log half puts many there; linear alone would give 1-2


def test_linear_and_log_spacing():
    assert checkpoint_steps(100, 5, "linear") == [0, 25, 50, 75, 100]
    log = checkpoint_steps(10_000, 5, "log")
    assert log == [0, 1, 10, 100, 1000, 10_000]
    assert checkpoint_steps(100, 0, "log") == []


def test_checkpoint_count_auto_grows_for_long_runs_and_a_count_is_kept():
    assert checkpoint_count("auto", 1000) == 12
    assert checkpoint_count("auto", LONG_RUN_STEPS - 1) == 12
    assert checkpoint_count("auto", LONG_RUN_STEPS) == 200
    assert checkpoint_count(7, 400_000) == 7 and checkpoint_count(0, 10) == 0


def test_the_headline_long_run_has_checkpoints_around_its_transition():
    # 12 log+linear checkpoints of a 400k-step run left none between steps 174 and 2297, where
    # the structured run's t_grok (~1100) lies; auto must put several in every decade there.
    cpu = torch.device("cpu")
    headline = compose_config("split=structured", "steps=400000")
    assert headline.train.checkpoints == "auto"
    steps = build_settings(headline, {}, cpu).checkpoint_steps
    assert len(steps) > 150
    for lo, hi in ((100, 1000), (1000, 10_000)):
        assert len([s for s in steps if lo <= s < hi]) >= 10
    # the default 1000-step run keeps its 12 (11 distinct after rounding)
    assert build_settings(compose_config(), {}, cpu).checkpoint_steps == checkpoint_steps(
        1000, 12, "log+linear")


def listed(at, upto: int) -> set[int]:
    """The steps of 0..upto (and a few before and after) that `at` evaluates."""
    return {s for s in range(-3, upto + 4) if s in at}


def test_eval_steps_cover_cadence_and_checkpoints():
    at = eval_steps(100, 30, [7, 55])
    assert listed(at, 100) == {0, 30, 60, 90, 100, 7, 55}


@pytest.mark.parametrize("steps,every,extra", [
    (100, 30, [7, 55, 60]), (100, 1, [3]), (99, 100, []), (0, 5, []), (40_000, "auto", [1, 20_050]),
    (20_000, "auto", [20_000]), (20_499, "auto", [20_499]), (19_999, "auto", []),
])
def test_the_count_of_evaluations_is_the_number_of_steps_that_evaluate(steps, every, extra):
    at = eval_steps(steps, every, extra)
    assert len(at) == len(listed(at, steps))


def test_eval_every_auto_is_every_100_steps_to_step_20k_then_every_500():
    assert LONG_RUN_STEPS == 20_000
    at = eval_steps(400_001, "auto", [3, 20_050, 123_457])
    expected = ({s for s in range(0, 400_002) if s % 100 == 0 and s <= 20_000}
                | {s for s in range(0, 400_002) if s % 500 == 0 and s > 20_000}
                | {3, 20_050, 123_457, 400_001})
    assert listed(at, 400_001) == expected
    assert 20_100 not in at and 20_500 in at
    # below 20k steps it is every 100 steps, as the default runs were evaluated before auto
    assert listed(eval_steps(1000, "auto", [7]), 1000) == listed(eval_steps(1000, 100, [7]), 1000)
    assert (listed(eval_steps(LONG_RUN_STEPS, "auto", []), LONG_RUN_STEPS)
            == listed(eval_steps(LONG_RUN_STEPS, 100, []), LONG_RUN_STEPS))


def test_the_schedule_of_a_very_long_run_takes_no_memory_in_proportion_to_it():
    """It was a set of every evaluated step: 2 * 10^13 of them for steps=10^16 (the kernel
    killed the process), 10^9 for a 10^9-step run evaluated every step."""
    tracemalloc.start()
    eval_steps(10**7, 1, [5])  # was ~500 MB
    assert tracemalloc.get_traced_memory()[1] < 100_000
    tracemalloc.stop()
    at = eval_steps(10**16, 1, [5])
    assert 10**16 - 1 in at and 10**16 in at and 10**16 + 1 not in at and -1 not in at
    late = eval_steps(10**16, "auto", [])
    assert 10**15 in late and 10**15 + 100 not in late
    assert len(late) == 20_000 // 100 + 1 + (10**16 - 20_000) // 500


def test_the_headline_long_run_evaluates_about_a_thousand_times():
    # every 100 steps throughout, the 400k-step structured run would evaluate 4189 times (~4%)
    s = build_settings(compose_config("split=structured", "steps=400000"), {},
                       torch.device("cpu"))
    assert s.eval_every == "auto"
    at = listed(eval_steps(s.steps, s.eval_every, s.checkpoint_steps), s.steps)
    assert 1000 <= len(at) <= 1200
    assert set(range(0, 20_001, 100)) <= at and set(s.checkpoint_steps) <= at


def test_batches_are_a_function_of_the_step():
    a, b = BatchSampler(100, 32, seed=5), BatchSampler(100, 32, seed=5)
    for step in [0, 1, 2, 3, 7, 2, 0]:  # out of order, as after a resume
        assert torch.equal(a.batch(step), BatchSampler(100, 32, seed=5).batch(step))
    assert not torch.equal(b.batch(0), BatchSampler(100, 32, seed=6).batch(0))


def test_each_epoch_visits_rows_without_repeats():
    sampler = BatchSampler(100, 32, seed=0)  # 3 batches an epoch, 4 rows dropped
    for epoch in range(3):
        rows = torch.cat([sampler.batch(epoch * 3 + i) for i in range(3)])
        assert len(rows) == 96 and len(set(rows.tolist())) == 96


def test_full_batch():
    sampler = BatchSampler(10, None, seed=0)
    assert sorted(sampler.batch(3).tolist()) == list(range(10))
    assert BatchSampler(10, 64, seed=0).full_batch
