import pytest
import torch

from cellseg.model.ema import ema_decay_at, make_ema


def test_decay_ramps_up_to_its_value():
    assert ema_decay_at(0.999, 1) == pytest.approx(2 / 11)
    assert ema_decay_at(0.9, 80) == pytest.approx(0.9)


def test_average_follows_the_ramped_decay_and_resumes_exactly():
    model = torch.nn.Sequential(torch.nn.Linear(2, 1), torch.nn.BatchNorm1d(1))
    ema = make_ema(model, decay=0.5)
    values = []
    for step in range(4):
        with torch.no_grad():
            model[0].weight.fill_(float(step + 1))
        model[1].num_batches_tracked += 1
        ema.update_parameters(model)
        values.append(ema.module[0].weight[0, 0].item())
    # the first update copies (1); then decays 2/11, 3/12 -> 0.25, min(0.5, 4/13) = 4/13
    first = 1.0
    second = 2 / 11 * first + 9 / 11 * 2
    third = 0.25 * second + 0.75 * 3
    fourth = 4 / 13 * third + 9 / 13 * 4
    assert values == pytest.approx([first, second, third, fourth])
    assert ema.module[1].num_batches_tracked.item() == 4  # integer buffers are copied
    resumed = make_ema(model, decay=0.5)
    resumed.load_state_dict(ema.state_dict())
    for averaged in (ema, resumed):
        averaged.update_parameters(model)
    assert torch.equal(ema.module[0].weight, resumed.module[0].weight)
