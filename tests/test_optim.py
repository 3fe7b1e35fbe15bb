"""Learning-rate schedules: warmup, then constant, linear or cosine decay to zero."""

import numpy as np
import pytest

from kft.training import optim


@pytest.mark.parametrize(
    "kind,mid,end", [("constant", 1.0, 1.0), ("linear", 0.5, 0.0), ("cosine", 0.5, 0.0)]
)
def test_schedule_warms_up_then_decays(kind, mid, end):
    schedule = optim.make_schedule(1.0, total_steps=12, warmup_steps=2, kind=kind)
    values = [float(schedule(step)) for step in range(13)]
    assert values[0] == pytest.approx(0.5) and values[1] == pytest.approx(1.0)
    assert values[7] == pytest.approx(mid, abs=1e-6) and values[12] == pytest.approx(end, abs=1e-6)
    assert np.all(np.diff(values[1:]) <= 1e-7)
