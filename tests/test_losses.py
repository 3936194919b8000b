"""TD targets and actor weights against numbers computed by hand."""

import pytest
import torch
from seqrec.rl.losses import HeadConfig, advantage, td_loss, td_target, weighted_ce


def test_td_target_stops_at_session_end():
    y = td_target(torch.tensor([0.2, 1.0]), torch.tensor([False, True]), torch.tensor([2.0, 4.0]), gamma=0.5)
    assert torch.allclose(y, torch.tensor([1.2, 1.0]))  # 0.2 + 0.5 * 2.0; session end: no future value
    assert not y.requires_grad


def test_td_loss_is_mean_squared_error_and_does_not_move_the_target():
    q = torch.tensor([1.0, 2.0], requires_grad=True)
    target = torch.tensor([0.0, 4.0], requires_grad=True)
    loss = td_loss(q, target)
    assert loss.item() == pytest.approx((1.0 + 4.0) / 2)
    loss.backward()
    assert target.grad is None and torch.allclose(q.grad, torch.tensor([1.0, -2.0]))


def test_advantage_subtracts_the_mean_over_positive_and_negatives_and_clips():
    q_pos = torch.tensor([4.0, 0.0, 30.0])
    q_neg = torch.tensor([[1.0, 1.0], [3.0, 3.0], [0.0, 0.0]])
    # means: (4+1+1)/3 = 2 -> A = 2; (0+3+3)/3 = 2 -> -2 clipped to 0; 30 - 10 = 20 clipped to 10
    assert torch.allclose(advantage(q_pos, q_neg, 0.0, 10.0), torch.tensor([2.0, 0.0, 10.0]))


def test_weighted_cross_entropy():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]))
    action = torch.tensor([0, 2])
    ce = torch.tensor([-torch.log(torch.tensor(0.5)), -torch.log(torch.tensor(0.8))])
    assert weighted_ce(logits, action).item() == pytest.approx(ce.mean().item(), rel=1e-6)
    w = torch.tensor([2.0, 0.0])
    assert weighted_ce(logits, action, w).item() == pytest.approx((2 * ce[0] / 2).item(), rel=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    ({"variant": "dqn"}, "variant"),
    ({"gamma": 1.0}, "gamma"),
    ({"negatives": 0}, "negatives"),
    ({"warmup_steps": -1}, "warmup_steps"),
    ({"advantage_min": 2.0, "advantage_max": 1.0}, "advantage_min"),
])
def test_head_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        HeadConfig(**kwargs)
