"""The Q target's max runs over actions that can be taken: never padding or OOV, only allowed items where a
catalogue restricts them; in our double-Q heads (every Q variant) and in the d3rlpy bridge's algorithms.

Q values are set by hand (zero weights, a chosen bias per action: Q(s, a) = bias[a] in every state) so that the
padding row would win an unrestricted max, and every target is computed by hand:
reward + gamma * (1 - done) * Q_other(s', argmax over allowed a of Q_learner(s', a)).
"""

import numpy as np
import pytest
import torch
from seqrec.datasets.schema import FIRST_ITEM, OOV, PAD
from seqrec.rl.d3rlpy_bridge.bridge import D3rlpyLearner, d3rlpy, mini_batch, ranking_scores
from seqrec.rl.d3rlpy_bridge.config import D3RLPY_ALGORITHMS, D3rlpyConfig
from seqrec.rl.qlearning.learner import Learner, double_q_value
from seqrec.rl.qlearning.losses import HeadConfig

from seqrec.models.encoders import EncoderConfig

N_ITEMS = 13  # 11 products + padding + OOV, as the campaign catalogue
GAMMA = 0.5
# the learning network: padding and OOV highest, then item 5, then item 7
LEARNER_Q = [9.0, 8.0, 0.0, 0.0, 0.0, 3.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
# the valuing copy: padding and OOV highest, its own best real item is 7 (DQN's target takes that one)
OTHER_Q = [100.0, 50.0, 0.0, 0.0, 0.0, 2.0, 0.0, 7.0, 0.0, 0.0, 0.0, 0.0, 0.0]


def _set_bias(linear: torch.nn.Linear, bias: list[float]) -> None:
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.copy_(torch.tensor(bias))


def _batch(n: int = 8, w: int = 5) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    state = torch.randint(FIRST_ITEM, N_ITEMS, (n, w), generator=g)
    action = torch.randint(FIRST_ITEM, N_ITEMS, (n,), generator=g)
    next_state = torch.cat([state[:, 1:], action[:, None]], dim=1)
    return {"state": state, "action": action, "next_state": next_state,
            "reward": torch.arange(n, dtype=torch.float32) / 10, "done": torch.tensor([False] * (n - 1) + [True])}


def _target(batch: dict[str, torch.Tensor], future: float | torch.Tensor) -> torch.Tensor:
    """By hand: r + gamma * (1 - done) * future."""
    return batch["reward"] + GAMMA * (1.0 - batch["done"].float()) * future


def _learner(variant: str = "sqn", allowed: torch.Tensor | None = None) -> Learner:
    torch.manual_seed(0)
    kwargs = {} if allowed is None else {"allowed": allowed}  # the old code had no `allowed`
    return Learner(EncoderConfig(kind="sasrec", num_items=N_ITEMS, max_len=5, dim=8),
                   HeadConfig(variant=variant, gamma=GAMMA, negatives=3), lr=0.01, **kwargs)


def _allowed(*items: int) -> torch.Tensor:
    mask = torch.zeros(N_ITEMS, dtype=torch.bool)
    mask[list(items)] = True
    return mask


# --------------------------------------------------------------------------- our double-Q heads


def test_double_q_value_takes_the_best_real_item_not_padding():
    """The learner's Q puts padding (9) and OOV (8) above every real item; its best real item is 5, which the
    other copy values at 2. The old target took padding and its value 100."""
    learner = _learner()
    net, other = learner.nets[0].eval(), learner.nets[1].eval()
    _set_bias(net.q, LEARNER_Q)
    _set_bias(other.q, OTHER_Q)
    assert double_q_value(net, other, _batch()["next_state"]).tolist() == [2.0] * 8


@pytest.mark.parametrize("variant", ["sqn", "sac", "snqn", "sa2c"])
def test_every_q_variant_trains_towards_the_hand_computed_target(variant):
    """Both copies hold the same hand-set Q, so whichever learns, the target is r + gamma * Q(s', 5) = r + 1.5
    (not r + 4.5 from padding); a negative's target is gamma * Q(s, 5) = 1.5 (not 4.5)."""
    learner = _learner(variant)
    for net in learner.nets:
        _set_bias(net.q, LEARNER_Q)
    b = _batch()
    stats = learner.update(b, step=0, seed=0)
    assert stats["q/target_mean"] == pytest.approx(_target(b, 3.0).mean().item())
    if variant in ("snqn", "sa2c"):
        # TD loss = mean (Q(s, a) - target)^2 over the positives + the same over the negatives (target 1.5)
        q_pos = torch.tensor(LEARNER_Q)[b["action"]]
        td_pos = ((q_pos - _target(b, 3.0)) ** 2).mean()
        assert stats["loss/td"] == pytest.approx(td_pos.item() + _negatives_td(b, learner, variant), rel=1e-5)


def _negatives_td(b: dict[str, torch.Tensor], learner: Learner, variant: str) -> float:
    """The negatives' TD loss by hand: their Q values (hand-set) against gamma * Q(s, best real item 5)."""
    from seqrec.rl.qlearning.learner import sample_negatives, step_generator

    g = step_generator(0, 0)
    torch.randint(0, 2, (1,), generator=g)  # the coin drawn first
    neg = sample_negatives(b["action"], 3, N_ITEMS, g)  # (B, 3)
    return ((torch.tensor(LEARNER_Q)[neg] - GAMMA * 3.0) ** 2).mean().item()


def test_a_restricted_catalogue_maximises_over_its_allowed_items_only():
    """Items 3, 7 and 9 allowed (and padding, which the mask cannot allow): the learner's best allowed item is 7,
    valued 7 by the other copy; per state, a (B, I) mask narrows it further."""
    from seqrec.rl.qlearning.actions import action_mask

    allowed = _allowed(PAD, 3, 7, 9)
    learner = _learner(allowed=allowed)
    assert learner.allowed.tolist() == action_mask(N_ITEMS, _allowed(3, 7, 9)).tolist()  # padding never allowed
    net, other = learner.nets[0].eval(), learner.nets[1].eval()
    _set_bias(net.q, LEARNER_Q)
    _set_bias(other.q, OTHER_Q)
    b = _batch(n=2)
    assert double_q_value(net, other, b["next_state"], allowed=allowed).tolist() == [7.0, 7.0]
    per_state = torch.stack([_allowed(3, 9), _allowed(5, 9)])  # (B, I): row 0 -> 3 (first of ties), row 1 -> 5
    assert double_q_value(net, other, b["next_state"], allowed=per_state).tolist() == [0.0, 2.0]

    for net in learner.nets:  # same Q in both copies: the target is r + gamma * Q(s', 7) = r + 0.5
        _set_bias(net.q, LEARNER_Q)
    b = _batch()
    assert learner.update(b, step=0, seed=0)["q/target_mean"] == pytest.approx(_target(b, 1.0).mean().item())
    # a batch's per-state mask for the next states meets the learner's: row 0 may take only 3, the rest 7 or 9
    b["next_allowed"] = torch.ones(8, N_ITEMS, dtype=torch.bool)
    b["next_allowed"][0, [7, 9]] = False
    for net in learner.nets:  # the first update moved one copy's weights: hand-set again
        _set_bias(net.q, LEARNER_Q)
    want = _target(b, torch.tensor([0.0] + [1.0] * 7))
    assert learner.update(b, step=1, seed=0)["q/target_mean"] == pytest.approx(want.mean().item())


def test_negatives_come_from_the_allowed_items_other_than_the_positive():
    from seqrec.rl.qlearning.learner import sample_negatives, step_generator

    action = torch.tensor([3, 7])
    neg = sample_negatives(action, 300, N_ITEMS, step_generator(0, 0), _allowed(OOV, 3, 7, 9))
    assert set(neg[0].tolist()) == {7, 9} and set(neg[1].tolist()) == {3, 9}
    per_state = torch.stack([_allowed(3, 4), _allowed(7, 8, 9)])
    neg = sample_negatives(action, 300, N_ITEMS, step_generator(0, 0), per_state)
    assert set(neg[0].tolist()) == {4} and set(neg[1].tolist()) == {8, 9}
    with pytest.raises(ValueError, match="no action but its positive"):
        only_positive = torch.stack([_allowed(3), _allowed(3, 7)])  # row 0 allows its positive alone
        sample_negatives(torch.tensor([3, 7]), 3, N_ITEMS, step_generator(0, 0), only_positive)


def test_masks_that_allow_nothing_or_have_the_wrong_shape_are_refused():
    from seqrec.rl.qlearning.actions import action_mask

    with pytest.raises(ValueError, match="no real item"):
        action_mask(N_ITEMS, _allowed(PAD, OOV))
    with pytest.raises(ValueError, match=r"no real item \(row 1\)"):
        action_mask(N_ITEMS, torch.stack([_allowed(4), _allowed(OOV)]))
    with pytest.raises(ValueError, match="bool mask of shape"):
        action_mask(N_ITEMS, torch.ones(N_ITEMS))
    with pytest.raises(ValueError, match="bool mask of shape"):
        action_mask(N_ITEMS, torch.ones(N_ITEMS + 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="one \\(I,\\) mask"):
        _learner(allowed=torch.ones(2, N_ITEMS, dtype=torch.bool))


@pytest.mark.parametrize("how", ["real", "one", "per_state"])
def test_masked_argmax_equals_the_plain_masked_argmax_on_a_catalogue_of_many_blocks(how):
    """The blockwise arg-max (scores_argmax) over the allowed rows picks what argmax over the whole (B, I) Q
    matrix with the excluded actions at -inf picks, ties included (the first item)."""
    from seqrec.rl.qlearning.actions import action_mask, masked_argmax

    from seqrec.models.catalogue import ARGMAX_BLOCK, scores

    n = ARGMAX_BLOCK + 700
    g = torch.Generator().manual_seed(3)
    state, table, bias = torch.randn(40, 16, generator=g), torch.randn(n, 16, generator=g), torch.randn(n, generator=g)
    table[PAD], table[OOV] = table[PAD] * 100, table[OOV] * 100  # padding and OOV win most rows unmasked
    table[[900, ARGMAX_BLOCK + 5]] = table[10] * 50  # a tie across blocks
    bias[[900, ARGMAX_BLOCK + 5]] = bias[10].item()
    allowed = {"real": None, "one": torch.rand(n, generator=g) > 0.3,
               "per_state": torch.rand(40, n, generator=g) > 0.3}[how]
    want = scores(state, table, bias).masked_fill(~action_mask(n, allowed), -torch.inf).argmax(dim=1)
    got = masked_argmax(state, table, bias, allowed)
    assert torch.equal(got, want)
    assert (scores(state, table, bias).argmax(dim=1) < FIRST_ITEM).any()  # unmasked, padding/OOV would win


# --------------------------------------------------------------------------- the d3rlpy bridge


def _d3rlpy_learner(algorithm: str, **kwargs) -> D3rlpyLearner:
    torch.manual_seed(0)
    learner = D3rlpyLearner(algorithm, EncoderConfig(kind="sasrec", num_items=N_ITEMS, max_len=5, dim=8),
                            D3rlpyConfig(), batch_size=8, lr=0.01, gamma=GAMMA, **kwargs)
    for q in learner.nets["q_funcs"]:
        _set_bias(q._fc, LEARNER_Q)
    for q in learner.nets["targ_q_funcs"]:
        _set_bias(q._fc, OTHER_Q)
    if "imitator" in learner.nets:  # BCQ: an imitator that would let padding alone through its filter
        _set_bias(learner.nets["imitator"]._fc, [20.0] + [0.0] * (N_ITEMS - 1))
    return learner


def _d3rlpy_target(learner: D3rlpyLearner, b: dict[str, torch.Tensor]) -> torch.Tensor:
    """d3rlpy's own bootstrap value Q_target(s', chosen a') of a batch (B,)."""
    batch = d3rlpy.torch_utility.TorchMiniBatch.from_batch(mini_batch(b), gamma=GAMMA, compute_returns_to_go=False,
                                                           device="cpu")
    return learner.algo.impl.compute_target(batch).squeeze(1)


@pytest.mark.parametrize("algorithm", D3RLPY_ALGORITHMS)
def test_d3rlpy_targets_never_choose_padding_or_oov(algorithm):
    """DQN takes the target network's best real item (7, valued 7); Double DQN, CQL and BCQ the online network's
    (5), valued by the target network at 2. Unmasked, all would take padding (value 100)."""
    learner = _d3rlpy_learner(algorithm)
    b = _batch()
    want = 7.0 if algorithm == "d3rlpy.dqn" else 2.0
    assert _d3rlpy_target(learner, b).tolist() == [want] * 8
    # the TD loss d3rlpy reports: Huber of Q(s, a) - (r + gamma * (1 - done) * want), by hand
    diff = torch.tensor(LEARNER_Q)[b["action"]] - _target(b, want)
    huber = torch.where(diff.abs() < 1, 0.5 * diff**2, diff.abs() - 0.5).mean()
    assert learner.update(b, step=1, seed=0)["loss/td"] == pytest.approx(huber.item(), rel=1e-5)


@pytest.mark.parametrize("algorithm", D3RLPY_ALGORITHMS)
def test_d3rlpy_restricted_catalogue_and_policy(algorithm):
    """Items 3 and 7 allowed: every target takes 7 (both networks rank it first of the two), valued 7; the
    policy's choice and its ranking put the allowed items first."""
    learner = _d3rlpy_learner(algorithm, allowed=_allowed(3, 7))
    b = _batch()
    assert _d3rlpy_target(learner, b).tolist() == [7.0] * 8
    obs = b["state"].numpy().astype(np.float32)
    assert set(learner.algo.predict(obs).tolist()) == {7}
    top2 = ranking_scores(learner.algo, b["state"]).topk(2, dim=1).indices.sort(dim=1).values
    assert (top2 == torch.tensor([3, 7])).all()
    with pytest.raises(ValueError, match="per-state masks"):
        _d3rlpy_learner(algorithm, allowed=torch.ones(2, N_ITEMS, dtype=torch.bool))


def test_d3rlpy_cql_conservative_term_sums_over_real_items_only():
    """CQL's logsumexp over the current state's actions leaves padding and OOV out (to e^-50):
    logsumexp(Q over the 11 real items) - Q(s, a), by hand."""
    learner = _d3rlpy_learner("d3rlpy.discrete_cql")
    b = _batch()
    out = learner.update(b, step=1, seed=0)
    q = torch.tensor(LEARNER_Q)
    want = (torch.logsumexp(q[FIRST_ITEM:], dim=0) - q[b["action"]]).mean()
    assert out["loss/conservative"] == pytest.approx(want.item(), rel=1e-5)


def test_d3rlpys_own_file_keeps_the_mask(tmp_path):
    """best.d3 carries the masked actions in d3rlpy's config: the loaded BCQ (imitator masked again) chooses as the
    trained one, never padding, though its imitator and Q rank padding first."""
    from seqrec.rl.d3rlpy_bridge.bridge import load_learnable
    from seqrec.rl.d3rlpy_bridge.masking import blocked_actions

    learner = _d3rlpy_learner("d3rlpy.discrete_bcq", allowed=_allowed(3, 5, 7))
    learner.save_d3rlpy(str(tmp_path / "best.d3"))
    algo = load_learnable(str(tmp_path / "best.d3"))
    assert blocked_actions(algo).tolist() == [i not in (3, 5, 7) for i in range(N_ITEMS)]
    obs = _batch()["state"].numpy().astype(np.float32)
    assert set(algo.predict(obs).tolist()) == {5}
