import math

import pytest
import torch

from sparsity_exp.errors import ConfigError
from sparsity_exp.optim import build_optimizer, build_schedule, lr_factor


def test_schedules(compose):
    cfg = compose("optim.schedule.name=cosine", "optim.schedule.warmup_steps=10", "optim.schedule.warmup_start=0.1")
    s = cfg.optim.schedule
    assert lr_factor(s, 0, 110) == pytest.approx(0.1)
    assert lr_factor(s, 5, 110) == pytest.approx(0.55)
    assert lr_factor(s, 10, 110) == pytest.approx(1.0)
    assert lr_factor(s, 60, 110) == pytest.approx(0.5)
    assert lr_factor(s, 110, 110) == pytest.approx(0.0, abs=1e-12)
    lin = compose("optim.schedule.name=linear", "optim.schedule.min_factor=0.2").optim.schedule
    assert lr_factor(lin, 50, 100) == pytest.approx(0.6)
    const = compose().optim.schedule
    assert lr_factor(const, 77, 100) == 1.0


@pytest.mark.parametrize("name,cls", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)])
def test_optimizers_and_scheduler_drive_lr(compose, name, cls):
    cfg = compose(f"optim={name}", "optim.lr=0.5", "optim.schedule.name=cosine")
    p = torch.nn.Parameter(torch.zeros(2))
    opt = build_optimizer(cfg.optim, [p])
    assert isinstance(opt, cls)
    sched = build_schedule(cfg.optim.schedule, opt, total_steps=4)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.5 * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)])


def test_unknown_schedule_fails_early(compose):
    cfg = compose("optim.schedule.name=wiggly")
    with pytest.raises(ConfigError, match="constant"):
        build_schedule(cfg.optim.schedule, torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1), 10)
