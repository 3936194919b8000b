"""The learner: every variant takes finite steps, double Q trains one network per batch, steps repeat exactly."""

import pytest
import torch
from seqrec.datasets.schema import FIRST_ITEM
from seqrec.rl.qlearning.learner import Learner, double_q_value, sample_negatives, step_generator
from seqrec.rl.qlearning.losses import VARIANTS, HeadConfig

from seqrec.models.encoders import EncoderConfig


def _batch(n=8, items=30, w=5):
    g = torch.Generator().manual_seed(0)
    state = torch.randint(0, items, (n, w), generator=g)
    action = torch.randint(2, items, (n,), generator=g)
    next_state = torch.cat([state[:, 1:], action[:, None]], dim=1)
    return {"state": state, "action": action, "next_state": next_state,
            "reward": torch.full((n,), 0.2), "done": torch.tensor([False] * (n - 1) + [True])}


def _learner(variant, seed=0, weights="raw"):
    torch.manual_seed(seed)
    return Learner(EncoderConfig(kind="sasrec", num_items=30, max_len=5, dim=16),
                   HeadConfig(variant=variant, negatives=4, warmup_steps=1, actor_weights=weights), lr=0.01)


@pytest.mark.parametrize("weights", ["raw", "mean"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_steps_with_finite_losses(variant, weights):
    learner = _learner(variant, weights=weights)
    for step in range(3):  # step 0 is warm-up for sac/sa2c, later steps use the weighted actor loss
        stats = learner.update(_batch(), step=step, seed=0)
        assert all(torch.isfinite(torch.tensor(v)) for v in stats.values()), stats
    assert "loss/ce" in stats and ("loss/td" in stats) == (variant != "ce")


def test_mean_actor_weights_change_only_the_actor_loss_after_warm_up():
    """Same seed, same batches: during warm-up raw and mean weights train identically; after it the SAC
    actor loss differs by the scale of the Q weights (mean weights are 1 on average, raw ones near 0)."""
    raw, mean = _learner("sac", weights="raw"), _learner("sac", weights="mean")
    a, b = raw.update(_batch(), step=0, seed=0), mean.update(_batch(), step=0, seed=0)
    assert a == b
    a, b = raw.update(_batch(), step=1, seed=0), mean.update(_batch(), step=1, seed=0)
    assert a["loss/td"] == pytest.approx(b["loss/td"]) and a["loss/ce"] != pytest.approx(b["loss/ce"])


def test_double_q_updates_only_the_network_that_learns():
    learner = _learner("sqn")
    before = [[p.detach().clone() for p in net.parameters()] for net in learner.nets]
    learner.update(_batch(), step=0, seed=0)
    changed = [any(not torch.equal(p, q) for p, q in zip(net.parameters(), old))
               for net, old in zip(learner.nets, before)]
    assert sorted(changed) == [False, True]


def test_steps_depend_only_on_seed_and_step():
    a, b = _learner("sa2c"), _learner("sa2c")
    for step in range(3):
        sa = a.update(_batch(), step=step, seed=7)
        sb = b.update(_batch(), step=step, seed=7)
        assert sa == sb
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_negatives_are_real_items_other_than_the_positive():
    action = torch.tensor([2, 5, 29])
    neg = sample_negatives(action, 200, 30, step_generator(0, 0))
    assert neg.min() >= 2 and neg.max() <= 29
    assert not (neg == action[:, None]).any()
    assert set(neg[0].tolist()) == set(range(3, 30))  # uniform over every other real item


def test_q_at_equals_the_full_q_head_gathered():
    """The learner values only the rows it needs; they must equal the full (B, I) Q head's entries."""
    net = _learner("sqn").nets[0].eval()
    b = _batch()
    ids = torch.randint(2, 30, (8, 5))
    with torch.no_grad():
        full = net.q_values(b["state"])
        assert torch.allclose(net.q_at(net.encoder.encode(b["state"]), ids), full.gather(1, ids), atol=1e-6)


def _bias_only(net, bias):
    """Q(x, a) = bias[a] whatever the state: hand-computable Q values."""
    with torch.no_grad():
        net.q.weight.zero_()
        net.q.bias.copy_(torch.tensor(bias))


def test_double_q_value_takes_the_arg_max_of_the_learner_and_the_value_of_the_other_copy():
    learner = _learner("sqn")
    net, other = learner.nets[0].eval(), learner.nets[1].eval()
    items = _batch()["next_state"][:2]
    _bias_only(net, [0.0, 0.0, 0.0, 3.0, 1.0] + [0.0] * 25)     # learner's arg-max: item 3
    _bias_only(other, [0.0, 0.0, 9.0, 2.0, 7.0] + [0.0] * 25)   # other's value of item 3: 2.0 (not its max 9)
    assert double_q_value(net, other, items).tolist() == [2.0, 2.0]
    # a negative's target values the unchanged state with reward 0: gamma * Q'(s, argmax Q(s, .)) = 0.5 * 2
    state = net.encoder.encode(items)
    assert (0.5 * double_q_value(net, other, items, state)).tolist() == [1.0, 1.0]


@pytest.mark.parametrize("with_state", [False, True])
def test_double_q_value_equals_the_plain_formulation_over_a_catalogue_of_several_chunks(with_state):
    """The arg-max is taken blockwise without the (B, I) Q matrix (scores_argmax); it must pick what
    argmax over net.q_values' real items (never padding or OOV) picks, ties included (the first item), and value
    it with the other copy."""
    torch.manual_seed(1)
    learner = Learner(EncoderConfig(kind="sasrec", num_items=700, max_len=5, dim=16),
                      HeadConfig(variant="sqn"), lr=0.01)
    net, other = learner.nets[0].eval(), learner.nets[1].eval()
    items = torch.randint(2, 700, (33, 5), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        net.q.weight[130] *= 50
        net.q.weight[[131, 650, 699]] = net.q.weight[130].clone()  # one far-best item, tied in its chunk and in others
        net.q.bias[[131, 650, 699]] = net.q.bias[130].clone()
        state = net.encoder.encode(items)
        want_best = net.q_values(items)[:, FIRST_ITEM:].argmax(dim=1, keepdim=True) + FIRST_ITEM  # (B, 1)
        want = other.q_at(other.encoder.encode(items), want_best).squeeze(1)
        got = double_q_value(net, other, items, state if with_state else None)
    tied = (state @ net.q.weight[130] > 0).nonzero().squeeze(1)
    assert len(tied) > 0 and (want_best[tied, 0] == 130).all()  # the ties are really exercised
    assert torch.equal(got, want)


# --------------------------------------------------------------------------- the seam callers use (not `nets`)


@pytest.mark.parametrize("variant", ["ce", "sqn"])
def test_the_learner_seam_is_the_first_networks(variant):
    learner = _learner(variant).eval()
    net = learner.nets[0]
    items, ids = _batch()["state"], torch.tensor([[2, 5, 29]] * 8)
    with torch.no_grad():
        state = net.encoder.encode(items)
        assert torch.equal(learner.encode(items), state)
        assert torch.equal(learner.supervised_at(state, ids), net.encoder.score(state, ids))
        full = learner.padded_supervised(state)  # (B, I') row-padded
        torch.testing.assert_close(full[:, :30], learner.scores(items))
        assert bool((full[:, 30:] == -torch.inf).all())
        assert learner.has_q_head == (variant != "ce")
        if variant == "ce":
            with pytest.raises(ValueError, match="no Q head"):
                learner.q_at(state, ids)
            assert learner.candidate_scores(items, ids)[1] is None
        else:
            assert torch.equal(learner.q_at(state, ids), net.q_at(state, ids))
            torch.testing.assert_close(learner.candidate_scores(items, ids)[1], learner.q_values(items).gather(1, ids))
        torch.testing.assert_close(learner.candidate_scores(items, ids)[0], learner.scores(items).gather(1, ids))
    enc = learner.encoder_state_dict()
    assert enc.keys() == net.encoder.state_dict().keys()
    assert all(torch.equal(v, net.encoder.state_dict()[k]) for k, v in enc.items())


def test_no_module_outside_rl_reaches_into_the_learners_networks():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    offenders = [str(p.relative_to(root)) for d in ("seqrec", "experiments") for p in (root / d).rglob("*.py")
                 if ".nets" in p.read_text()]
    assert offenders == []
