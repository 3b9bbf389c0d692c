"""WSD schedule: values at the phase boundaries, both decay shapes, LambdaLR integration and resumption."""

from __future__ import annotations

import io
import math

import pytest
import torch

from kexaone.train.schedule import WSDSchedule, make_scheduler


def test_linear_wsd_key_steps():
    s = WSDSchedule(max_lr=3e-4, total_steps=100, warmup_steps=10, decay_fraction=0.2, decay_shape="linear")
    assert s.decay_steps == 20 and s.decay_start == 80
    assert s.lr_at(0) == pytest.approx(3e-5)  # (0+1)/10 of max: the first step already learns
    assert s.lr_at(4) == pytest.approx(1.5e-4)
    assert s.lr_at(9) == pytest.approx(3e-4)  # warmup ends at max
    assert s.lr_at(10) == s.lr_at(50) == s.lr_at(79) == pytest.approx(3e-4)
    assert s.lr_at(80) == pytest.approx(3e-4)  # the decay starts from max
    assert s.lr_at(90) == pytest.approx(1.5e-4)  # halfway down
    assert s.lr_at(99) == pytest.approx(3e-4 * 1 / 20)  # the last step still moves
    assert s.lr_at(100) == 0.0 and s.lr_at(1000) == 0.0
    assert [s.phase(i) for i in (0, 9, 10, 79, 80, 99)] == ["warmup", "warmup", "stable", "stable", "decay", "decay"]


def test_one_minus_sqrt_decay_and_floor():
    s = WSDSchedule(max_lr=1.0, total_steps=100, warmup_steps=0, decay_fraction=0.5, decay_shape="1-sqrt",
                    min_lr_ratio=0.1)
    assert s.lr_at(0) == 1.0 and s.lr_at(49) == 1.0
    p = 25 / 50
    assert s.lr_at(75) == pytest.approx(0.1 + 0.9 * (1 - math.sqrt(p)))
    assert s.lr_at(100) == pytest.approx(0.1) and s.lr_at(500) == pytest.approx(0.1)
    # 1-sqrt drops faster early in the decay than linear
    lin = WSDSchedule(max_lr=1.0, total_steps=100, decay_fraction=0.5, min_lr_ratio=0.1)
    assert s.lr_at(60) < lin.lr_at(60)
    # monotone non-increasing after warmup
    values = [s.lr_at(i) for i in range(120)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_degenerate_phases():
    const = WSDSchedule(max_lr=2.0, total_steps=10, warmup_steps=0, decay_fraction=0.0)
    assert [const.lr_at(i) for i in range(12)] == [2.0] * 12
    all_decay = WSDSchedule(max_lr=1.0, total_steps=4, warmup_steps=0, decay_fraction=1.0)
    assert [all_decay.lr_at(i) for i in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]


def test_validation_errors():
    with pytest.raises(ValueError, match="max_lr"):
        WSDSchedule(max_lr=0.0)
    with pytest.raises(ValueError, match="total_steps"):
        WSDSchedule(total_steps=0)
    with pytest.raises(ValueError, match="decay_shape"):
        WSDSchedule(decay_shape="cosine")
    with pytest.raises(ValueError, match="decay_fraction"):
        WSDSchedule(decay_fraction=1.5)
    with pytest.raises(ValueError, match="min_lr_ratio"):
        WSDSchedule(min_lr_ratio=-0.1)
    with pytest.raises(ValueError, match="warmup_steps=90 runs into the decay"):
        WSDSchedule(total_steps=100, warmup_steps=90, decay_fraction=0.2)
    with pytest.raises(ValueError, match="step"):
        WSDSchedule().lr_at(-1)


def _opt(lr=3e-4):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=lr)


def test_scheduler_drives_optimizer_lr():
    s = WSDSchedule(max_lr=3e-4, total_steps=20, warmup_steps=5, decay_fraction=0.25)
    opt = _opt()
    sched = make_scheduler(opt, s)
    seen = []
    for _ in range(22):
        seen.append(opt.param_groups[0]["lr"])  # the LR the step about to run uses
        opt.step()
        sched.step()
    assert seen == pytest.approx([s.lr_at(i) for i in range(22)])


def test_scheduler_resume_by_step_and_by_state_dict():
    s = WSDSchedule(max_lr=1e-3, total_steps=30, warmup_steps=3, decay_fraction=0.5, decay_shape="1-sqrt")
    opt = _opt(1e-3)
    sched = make_scheduler(opt, s)
    for _ in range(17):
        opt.step()
        sched.step()
    lr_next = opt.param_groups[0]["lr"]
    assert lr_next == pytest.approx(s.lr_at(17))

    # the scheduler state loads with weights_only=True (the schedule's fields are plain values)
    buf = io.BytesIO()
    torch.save(sched.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    opt2 = _opt(1e-3)
    sched2 = make_scheduler(opt2, WSDSchedule(max_lr=1e-3, total_steps=30, warmup_steps=3, decay_fraction=0.5,
                                              decay_shape="1-sqrt"))
    sched2.load_state_dict(state)
    opt2.step()
    sched2.step()
    opt.step()
    sched.step()
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"] == pytest.approx(s.lr_at(18))

    # or from the step counter alone: last_step = the last completed step
    opt3 = _opt(1e-3)
    make_scheduler(opt3, s, last_step=16)
    assert opt3.param_groups[0]["lr"] == pytest.approx(lr_next)


def test_scheduler_scales_groups_with_other_lrs():
    s = WSDSchedule(max_lr=1.0, total_steps=10, warmup_steps=2, decay_fraction=0.5)
    p1, p2 = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [p1], "lr": 1.0}, {"params": [p2], "lr": 0.1}])
    sched = make_scheduler(opt, s)
    opt.step()
    sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1.0, 0.1])
    with pytest.raises(ValueError, match="WSDSchedule"):
        make_scheduler(opt, lambda step: 1.0)
