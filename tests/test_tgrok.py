"""t_grok detection on synthetic accuracy curves with known answers."""

import numpy as np
import pytest

from grok.analysis.tgrok import detect_t_grok, first_step_reaching

STEPS = np.arange(0, 5001, 50)  # evaluation every 50 steps


def sigmoid(centre, width):
    return 0.01 + 0.99 / (1 + np.exp(-(STEPS - centre) / width))


def test_sharp_rise_at_a_known_step():
    acc = np.where(STEPS >= 2000, 1.0, 0.02)
    tg = detect_t_grok(STEPS, acc)
    # the jump happens between 1950 and 2000; 2000 is the first evaluation that shows it
    assert tg.t_grok == 2000 and tg.detected == 2000 and tg.method == "sharpest_rise"
    assert tg.max_rise == pytest.approx(0.98)
    assert tg.window_steps == (1800, 2000)  # the earliest 5-point window with the full rise
    assert tg.step_95 == 2000 and tg.step_99 == 2000 and tg.warning is None


def test_two_step_jump_reports_the_larger_single_increase():
    acc = np.full(len(STEPS), 0.0)
    acc[STEPS >= 1000] = 0.3
    acc[STEPS >= 1100] = 1.0  # +0.3 at 1000, +0.7 at 1100: both inside one window
    assert detect_t_grok(STEPS, acc).t_grok == 1100


@pytest.mark.parametrize("centre", [1234, 2500, 3777])
def test_steep_sigmoid_is_found_at_its_centre(centre):
    tg = detect_t_grok(STEPS, sigmoid(centre, 40))
    # the largest single increase straddles the centre; t_grok is the evaluation ending it
    assert centre <= tg.t_grok < centre + 50
    assert tg.step_95 == first_step_reaching(STEPS, sigmoid(centre, 40), 0.95)
    assert tg.step_95 <= tg.step_99


def test_gradual_rise_over_many_evaluations():
    # a sigmoid 600 steps wide still rises >= 0.15 within 5 evaluation points (200 steps)
    tg = detect_t_grok(STEPS, sigmoid(3000, 150))
    assert abs(tg.t_grok - 3000) <= 50 and tg.max_rise > 0.15
    # a linear ramp from 0 to 1 over all 5000 steps rises only 0.04 per window: not detected
    ramp = STEPS / STEPS[-1]
    slow = detect_t_grok(STEPS, ramp)
    assert slow.t_grok is None and slow.max_rise == pytest.approx(0.04)
    assert "maximum accuracy increase below threshold" in slow.warning
    assert "0.0400" in slow.warning
    assert slow.step_95 == 4750 and slow.step_99 == 4950  # recorded even without t_grok
    # a wider window (20 points: 0.19) or a lower threshold detects the same ramp
    assert detect_t_grok(STEPS, ramp, window=20).t_grok is not None
    assert detect_t_grok(STEPS, ramp, threshold=0.03).t_grok is not None


def test_no_rise():
    tg = detect_t_grok(STEPS, np.full(len(STEPS), 0.05))
    assert tg.t_grok is None and tg.max_rise == 0.0
    assert tg.step_95 is None and tg.step_99 is None
    assert "maximum accuracy increase below threshold (0.0000 < 0.15" in tg.warning


def test_forced_t_grok_keeps_the_detection_alongside():
    acc = np.where(STEPS >= 2000, 1.0, 0.02)
    tg = detect_t_grok(STEPS, acc, forced=1500)
    assert tg.t_grok == 1500 and tg.method == "forced" and tg.detected == 2000
    flat = detect_t_grok(STEPS, np.zeros(len(STEPS)), forced=100)
    assert flat.t_grok == 100 and flat.detected is None and flat.warning is None


def test_short_and_unsorted_series():
    tg = detect_t_grok([20, 0, 10], [1.0, 0.0, 0.1])  # fewer points than the window
    assert tg.t_grok == 20 and tg.window_steps == (0, 20) and tg.max_rise == 1.0
    one = detect_t_grok([0], [0.5])
    assert one.t_grok is None and "only 1 evaluation point" in one.warning
    with pytest.raises(ValueError, match="window"):
        detect_t_grok(STEPS, STEPS * 0, window=1)


def test_recovery_from_a_loss_spike_is_not_grokking():
    acc = np.where(STEPS >= 1000, 1.0, 0.02)
    acc[(STEPS >= 3000) & (STEPS < 3100)] = 0.05  # collapse and recovery long after grokking
    tg = detect_t_grok(STEPS, acc)
    assert tg.monotone and tg.t_grok == 1000 and tg.max_rise == pytest.approx(0.98)
    # on the raw curve the recovery (0.05 -> 1.0) outdoes the real rise (0.1 -> 1.0)
    acc[STEPS < 1000] = 0.1
    raw = detect_t_grok(STEPS, acc, monotone=False)
    assert raw.t_grok == 3100 and raw.max_rise == pytest.approx(0.95)
    assert detect_t_grok(STEPS, acc).t_grok == 1000


def test_a_rise_of_exactly_the_threshold_counts_despite_float_rounding():
    acc = [0.2, 0.2, 0.2, 0.3, 0.35]  # 0.35 - 0.2 is 0.14999999999999997 in floats
    assert acc[-1] - acc[0] < 0.15
    assert detect_t_grok([0, 1, 2, 3, 4], acc).t_grok == 3
    assert detect_t_grok([0, 1, 2, 3, 4], [0.2, 0.2, 0.2, 0.3, 0.3499]).t_grok is None


def test_a_run_stopped_mid_rise_is_flagged():
    acc = sigmoid(5100, 100)  # the rise is centred past the last evaluation (5000)
    tg = detect_t_grok(STEPS, acc)
    assert tg.t_grok == 5000 and tg.max_rise > 0.15
    assert tg.warning.startswith(f"t_grok 5000 is the last evaluation and test accuracy there is "
                                 f"only {acc[-1]:.3f}")
    # a rise that completes at the last evaluation is grokking, not a run cut short
    done = np.where(STEPS >= 5000, 1.0, 0.02)
    assert detect_t_grok(STEPS, done).t_grok == 5000
    assert detect_t_grok(STEPS, done).warning is None
    # forcing t_grok answers the warning
    assert detect_t_grok(STEPS, acc, forced=4000).warning is None
