"""Sampler probabilities follow their formulas, draws match them, and everything is seeded."""

from __future__ import annotations

import numpy as np
import pytest

from mtdnn.core.config import SamplerConfig
from mtdnn.data.sampler import TaskSampler, sampler_problems, task_probabilities

SIZES = {"big": 9000, "mid": 900, "small": 100}


def test_proportional_temperature_uniform_formulas():
    n = np.array([9000, 900, 100], dtype=float)
    prop = task_probabilities(SamplerConfig(name="proportional"), SIZES)
    assert list(prop.values()) == pytest.approx(n / n.sum())
    temp = task_probabilities(SamplerConfig(name="temperature", temperature=3.0), SIZES)
    assert list(temp.values()) == pytest.approx(n ** (1 / 3) / (n ** (1 / 3)).sum())
    uni = task_probabilities(SamplerConfig(name="uniform"), SIZES)
    assert list(uni.values()) == pytest.approx([1 / 3] * 3)


def test_annealed_moves_from_proportional_to_end_alpha():
    cfg = SamplerConfig(name="annealed", end_alpha=0.0)
    n = np.array(list(SIZES.values()), dtype=float)
    assert list(task_probabilities(cfg, SIZES, 0.0).values()) == pytest.approx(n / n.sum())
    assert list(task_probabilities(cfg, SIZES, 1.0).values()) == pytest.approx([1 / 3] * 3)
    half = task_probabilities(cfg, SIZES, 0.5)
    assert list(half.values()) == pytest.approx(n**0.5 / (n**0.5).sum())


def test_per_task_weights_multiply_probabilities():
    cfg = SamplerConfig(name="uniform", weights={"small": 2.0})
    assert list(task_probabilities(cfg, SIZES).values()) == pytest.approx([0.25, 0.25, 0.5])


N = np.array([9000, 900, 100], dtype=float)


@pytest.mark.parametrize(
    "cfg, expected",
    [
        # written out here, not asked of task_probabilities
        (
            SamplerConfig(name="proportional"),
            N / N.sum(),
        ),
        (SamplerConfig(name="temperature", temperature=2), N**0.5 / (N**0.5).sum()),
        (SamplerConfig(name="uniform", weights={"big": 0.5}), np.array([0.5, 1, 1]) / 2.5),
    ],
)
def test_draw_frequencies_match_probabilities(cfg, expected):
    draws = 20000
    sampler = TaskSampler(cfg, SIZES, draws, seed=0)
    counts = {t: 0 for t in SIZES}
    for _ in range(draws):
        counts[sampler.next()] += 1
    for task, p in zip(SIZES, expected):
        sd = np.sqrt(p * (1 - p) / draws)
        assert abs(counts[task] / draws - p) < 5 * sd + 1e-9, (task, counts[task] / draws, p)


def test_annealed_draws_shift_towards_small_tasks():
    sampler = TaskSampler(SamplerConfig(name="annealed", end_alpha=0.0), SIZES, 10000, seed=1)
    seq = [sampler.next() for _ in range(10000)]
    early, late = seq[:2000].count("small") / 2000, seq[-2000:].count("small") / 2000
    assert early < 0.05 < 0.2 < late


def test_same_seed_same_sequence_and_resume_continues_exactly():
    cfg = SamplerConfig(name="temperature", temperature=2)
    a = TaskSampler(cfg, SIZES, 100, seed=7)
    b = TaskSampler(cfg, SIZES, 100, seed=7)
    assert [a.next() for _ in range(50)] == [b.next() for _ in range(50)]
    state = a.state_dict()
    rest = [a.next() for _ in range(50)]
    c = TaskSampler(cfg, SIZES, 100, seed=999)
    c.load_state_dict(state)
    assert [c.next() for _ in range(50)] == rest
    other = TaskSampler(cfg, SIZES, 100, seed=8)
    assert [other.next() for _ in range(50)] != [
        TaskSampler(cfg, SIZES, 100, seed=7).next() for _ in range(50)
    ]


def test_sampler_config_problems_are_all_reported():
    problems = sampler_problems(SamplerConfig(name="temprature", temperature=0, weights={"nope": 1.0}), ["a"])
    assert len(problems) == 3
    assert "did you mean 'temperature'" in problems[0]
    assert "sampler.temperature" in problems[1] and "sampler.weights.nope" in problems[2]


def test_a_task_at_weight_zero_is_never_drawn():
    sampler = TaskSampler(SamplerConfig(name="proportional", weights={"big": 0.0}), SIZES, 5000, seed=1)
    drawn = {sampler.next() for _ in range(5000)}
    assert drawn == {"mid", "small"}


def test_annealed_sampler_resumes_mid_schedule_with_the_same_draws():
    """The annealing clock counts micro-batches (grad_accum x steps): a sampler rebuilt from a checkpoint
    halfway continues with exactly the draws, and the probabilities, of the uninterrupted one."""
    cfg = SamplerConfig(name="annealed", end_alpha=0.0)
    total = 4 * 50  # grad_accum 4, 50 steps
    straight = TaskSampler(cfg, SIZES, total, seed=7)
    first_half = [straight.next() for _ in range(total // 2)]
    state = straight.state_dict()
    rest = [straight.next() for _ in range(total // 2)]
    resumed = TaskSampler(cfg, SIZES, total, seed=123)  # the seed is overwritten by the checkpointed state
    resumed.load_state_dict(state)
    assert [resumed.next() for _ in range(total // 2)] == rest
    small_share = (first_half.count("small") / len(first_half), rest.count("small") / len(rest))
    n = np.array(list(SIZES.values()), dtype=float)
    assert small_share[0] < small_share[1]  # annealing towards uniform favours the small task later
    assert small_share[1] == pytest.approx(
        np.mean([(n ** (1 - x))[2] / (n ** (1 - x)).sum() for x in np.arange(100, 200) / 200]), abs=0.1
    )


def test_a_task_smaller_than_one_batch_still_serves_whole_epochs():
    import datasets

    from mtdnn.data.loading import TaskBatches
    from mtdnn.kinds.collate import Collator

    rows = datasets.Dataset.from_dict(
        {"input_ids": [[2, i, 3] for i in range(3)], "attention_mask": [[1] * 3] * 3, "labels": [0, 1, 0]}
    )
    batches = TaskBatches(rows, batch_size=8, seed=0, collate=Collator(0, 1))
    assert len(batches) == 1
    seen = [sorted(batches.next()["input_ids"][:, 1].tolist()) for _ in range(4)]
    assert seen == [[0, 1, 2]] * 4  # every batch is the whole (3-row) task, epoch after epoch
    assert batches.state_dict() == {"epoch": 3, "position": 1}
