"""TD targets and actor weights against numbers computed by hand."""

import pytest
import torch
import torch.nn.functional as F
from seqrec.rl.qlearning.losses import HeadConfig, actor_weights, advantage, td_loss, td_target, weighted_ce


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


def test_actor_weights_raw_or_clipped_and_mean_normalised():
    w = torch.tensor([-1.0, 1.0, 3.0], requires_grad=True)
    assert torch.equal(actor_weights(w, "raw"), w.detach()) and not actor_weights(w, "raw").requires_grad
    # clipped to [0, 1, 3], mean 4/3 -> [0, 0.75, 2.25]: the mean weight is 1, the CE keeps its scale
    assert torch.allclose(actor_weights(w, "mean"), torch.tensor([0.0, 0.75, 2.25]))
    assert torch.equal(actor_weights(torch.tensor([-2.0, 0.0]), "mean"), torch.zeros(2))  # all zero stays zero
    with pytest.raises(ValueError, match="actor_weights must be one of raw, mean"):
        HeadConfig(variant="sac", actor_weights="scaled")


def test_weighted_cross_entropy():
    # with the identity as item table the states are the logits: CE = -log of the target's probability
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]))
    action = torch.tensor([0, 2])
    ce = torch.tensor([-torch.log(torch.tensor(0.5)), -torch.log(torch.tensor(0.8))])
    assert weighted_ce(logits, torch.eye(3), action).item() == pytest.approx(ce.mean().item(), rel=1e-6)
    w = torch.tensor([2.0, 0.0])
    assert weighted_ce(logits, torch.eye(3), action, w).item() == pytest.approx((2 * ce[0] / 2).item(), rel=1e-6)


@pytest.mark.parametrize("scale", [1.0, 30.0, 1000.0])  # 1000: probabilities underflow to 0
def test_fused_catalogue_ce_matches_the_generic_path(scale: float):
    """Values and both gradients equal F.cross_entropy on state @ table.T, weighted, large logits included."""
    g = torch.Generator().manual_seed(0)
    state = (torch.randn(16, 8, generator=g) * scale).requires_grad_()
    table = torch.randn(50, 8, generator=g).requires_grad_()
    action = torch.randint(0, 50, (16,), generator=g)
    action[0] = (state[0] @ table.T).argmax()  # the target is the arg-max row: the log-sum-exp identity's edge
    weight = torch.rand(16, generator=g)
    fused = weighted_ce(state, table, action, weight)
    fused.backward()
    grads = state.grad.clone(), table.grad.clone()
    state.grad = table.grad = None
    generic = (F.cross_entropy(state @ table.T, action, reduction="none") * weight).mean()
    generic.backward()
    assert fused.item() == pytest.approx(generic.item(), rel=1e-5)
    assert torch.allclose(grads[0], state.grad, rtol=1e-4, atol=1e-6)
    assert torch.allclose(grads[1], table.grad, rtol=1e-4, atol=1e-6)


def test_fused_catalogue_ce_refuses_a_second_backward():
    state, table = torch.randn(2, 4, requires_grad=True), torch.randn(5, 4, requires_grad=True)
    loss = weighted_ce(state, table, torch.tensor([1, 3]))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="twice"):
        loss.backward()


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
