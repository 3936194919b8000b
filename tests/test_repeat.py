"""The repeat-aware mixture ([head] copy = true): causality, padding, the seam's scores, learning where the answer is a
repeat and where it is not, every head with it, and bit-identical outputs with it off."""

from __future__ import annotations

import pytest
import torch
from seqrec.rl.qlearning.learner import Learner, double_q_value
from seqrec.rl.qlearning.losses import VARIANTS, HeadConfig

from seqrec.models.encoders import PAD, EncoderConfig
from seqrec.models.repeat import CopyMixer, log_mass, mix_all

NUM_ITEMS = 40
ENCODERS = {"sasrec": dict(kind="sasrec"), "gru": dict(kind="gru")}


def learner(kind: str = "sasrec", variant: str = "ce", seed: int = 0, num_items: int = NUM_ITEMS, max_len: int = 8,
            dim: int = 16, lr: float = 0.01, **head: object) -> Learner:
    """A small seeded learner with copy on (unless head says otherwise), in eval mode."""
    torch.manual_seed(seed)
    enc = EncoderConfig(num_items=num_items, max_len=max_len, dim=dim, dropout=0.0, **ENCODERS[kind])  # type: ignore
    cfg = HeadConfig(variant=variant, negatives=4, **{"copy": True, **head})  # type: ignore[arg-type]
    return Learner(enc, cfg, lr=lr).eval()


def windows(b: int, t: int, seed: int = 1, min_len: int = 1, num_items: int = NUM_ITEMS) -> torch.Tensor:
    """(B, T) left-padded windows of random real items with random lengths in [min_len, T]."""
    g = torch.Generator().manual_seed(seed)
    items = torch.randint(2, num_items, (b, t), generator=g)
    lengths = torch.randint(min_len, t + 1, (b, 1), generator=g)
    return torch.where(torch.arange(t) >= t - lengths, items, PAD)


def left_pad(items: torch.Tensor, t: int) -> torch.Tensor:
    return torch.nn.functional.pad(items, (t - items.shape[1], 0), value=PAD)


# ------------------------------------------------------------------------------------------ the mixture itself


def test_mixture_is_a_distribution_and_copies_only_window_items():
    """exp(scores) sums to 1 over the catalogue; an item outside the window gets exactly (1 - g) p_catalogue."""
    torch.manual_seed(0)
    mixer = CopyMixer(8, 6)
    items, state = torch.randn(NUM_ITEMS, 8), torch.randn(3, 8)
    window = torch.tensor([[0, 0, 5, 7, 5, 9], [0, 0, 0, 0, 0, 0], [1, 3, 4, 1, 2, 3]])  # repeats; empty; OOV
    cs = mixer.attend(state, window, items[window])  # the window's rows
    logits = state @ items.T
    mixed = mix_all(cs, logits)
    torch.testing.assert_close(mixed.exp().sum(1), torch.ones(3))
    gate = torch.sigmoid(mixer.gate(state).squeeze(1))
    cat = torch.softmax(logits, 1)
    torch.testing.assert_close(mixed[0, 11].exp(), (1 - gate[0]) * cat[0, 11])
    torch.testing.assert_close(mixed[1], cat[1].log())  # nothing to copy: the catalogue alone
    attn = cs.log_attn.exp()
    assert attn[2, 0] == 0 and attn[2, 3] == 0  # OOV is never copied
    # item 5 sits at two positions: its copy mass is the sum of both
    torch.testing.assert_close(mixed[0, 5].exp(), gate[0] * (attn[0, 2] + attn[0, 4]) + (1 - gate[0]) * cat[0, 5])
    assert log_mass(cs, torch.tensor([[11]] * 3))[0, 0] == -torch.inf


@pytest.mark.parametrize("kind", ENCODERS)
def test_later_items_never_change_the_scores_of_an_earlier_window(kind):
    """Causality: the scores after position t (the window ending at t) do not move when items after t change."""
    model = learner(kind, "sqn")
    x = windows(6, 8, min_len=8)
    for t in range(7):
        prefix = left_pad(x[:, : t + 1], 8)
        before_s, before_q = model.scores(prefix), model.q_values(prefix)
        y = x.clone()
        y[:, t + 1:] = torch.randint(2, NUM_ITEMS, (6, 7 - t))
        after = left_pad(y[:, : t + 1], 8)
        torch.testing.assert_close(model.scores(after), before_s, rtol=0, atol=0)
        torch.testing.assert_close(model.q_values(after), before_q, rtol=0, atol=0)
        assert not torch.allclose(model.scores(y), model.scores(x))  # the full window does see them


@pytest.mark.parametrize("kind", ENCODERS)
def test_scores_do_not_depend_on_the_number_of_pads_or_the_pad_row(kind):
    model = learner(kind, "sqn", max_len=16)
    real = torch.tensor([[5, 17, 3], [9, 9, 22]])
    short, long = left_pad(real, 8), left_pad(real, 16)
    torch.testing.assert_close(model.scores(short), model.scores(long), rtol=0, atol=1e-5)
    torch.testing.assert_close(model.q_values(short), model.q_values(long), rtol=0, atol=1e-5)
    net = model.nets[0]
    before = net.attend(short, net.encoder.encode(short))
    with torch.no_grad():  # the pad row is never read as an input (it scores the pad column, as without copy)
        net.encoder.item_emb.weight[PAD] = 10 * torch.randn(16)
    after = net.attend(short, net.encoder.encode(short))
    torch.testing.assert_close(after.log_attn, before.log_attn, rtol=0, atol=0)
    torch.testing.assert_close(after.log_gate, before.log_gate, rtol=0, atol=0)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("kind", ENCODERS)
def test_candidate_scores_are_the_full_scores_gathered(kind, variant):
    """The seam: candidate_scores, scores and q_values agree (re-ranking, evaluation and scoring rank alike)."""
    model = learner(kind, variant)
    x = windows(5, 8)
    ids = torch.randint(0, NUM_ITEMS, (5, 12))
    sup, q = model.candidate_scores(x, ids)
    torch.testing.assert_close(sup, model.scores(x).gather(1, ids), rtol=1e-5, atol=1e-5)
    if variant == "ce":
        assert q is None
    else:
        torch.testing.assert_close(q, model.q_values(x).gather(1, ids), rtol=1e-5, atol=1e-5)
    assert not model.scores_from_state
    with pytest.raises(ValueError, match="window"):
        model.supervised_at(model.encode(x), ids)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("kind", ENCODERS)
def test_every_head_trains_with_copy_with_finite_losses_and_gradients(kind, variant):
    model = learner(kind, variant, warmup_steps=1).train()
    x = windows(16, 8)
    x[0] = PAD  # an empty history among them
    a = torch.randint(2, NUM_ITEMS, (16,))
    batch = {"state": x, "action": a, "next_state": torch.cat([x[:, 1:], a[:, None]], 1),
             "reward": torch.ones(16), "done": torch.zeros(16, dtype=torch.bool)}
    before = model.nets[0].copy.gate.weight.detach().clone()
    for step in range(3):
        stats = model.update(batch, step, seed=0)
        assert all(torch.isfinite(torch.tensor(v)) for v in stats.values()), stats
    assert any(not torch.equal(net.copy.gate.weight, before) for net in model.nets)  # the gate learns
    if variant != "ce":
        net, other = model.nets
        # the double-Q target's arg-max is over the copy-aware Q values
        with torch.no_grad():
            best = net.mixed_q_all(x, net.encoder.encode(x)).argmax(1, keepdim=True)
            o = other.encoder.encode(x)
            want = other.mixed_q_at(o, other.attend(x, o), best).squeeze(1)
        torch.testing.assert_close(double_q_value(net, other, x), want)


# ------------------------------------------------------------------------------------------ learning checks


def _log(n: int, repeat: bool, num_items: int, t: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows of distinct random items; the target is the item 3 positions back (repeat) or, never in the window,
    a fixed function of the newest item (explore)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.argsort(torch.rand(n, num_items - 2, generator=g), dim=1)[:, :t] + 2  # (n, T) distinct real items
    if repeat:
        return x, x[:, -4]
    target = (x[:, -1] - 2 + 1) % (num_items - 2) + 2  # the next item id after the newest one
    x = torch.where(x == target.unsqueeze(1), (target.unsqueeze(1) - 2 + 2) % (num_items - 2) + 2, x)
    return x, target


def _fit(model: Learner, repeat: bool, num_items: int, steps: int) -> float:
    """Train on the synthetic log; return HR@1 on fresh windows."""
    model.train()
    for step in range(steps):
        x, a = _log(64, repeat, num_items, 8, seed=step)
        model.update({"state": x, "action": a, "next_state": x, "reward": torch.zeros(64),
                      "done": torch.ones(64, dtype=torch.bool)}, step, seed=0)
    model.eval()
    x, a = _log(512, repeat, num_items, 8, seed=10_000)
    with torch.no_grad():
        return (model.scores(x).argmax(1) == a).float().mean().item()


@pytest.mark.parametrize("kind", ENCODERS)
def test_copy_learns_a_log_where_the_answer_is_a_repeat(kind):
    """Target = the item 3 positions back, among 300 items: the copy attention finds it (HR@1 near 1) within 60
    steps. Without copy GRU4Rec stays far from it (SASRec's own attention can learn this one)."""
    assert _fit(learner(kind, num_items=300, dim=32, lr=0.005), True, 300, 60) > 0.97
    if kind == "gru":
        assert _fit(learner(kind, num_items=300, dim=32, lr=0.005, copy=False), True, 300, 60) < 0.5


@pytest.mark.parametrize("kind", ENCODERS)
def test_the_gate_relies_on_the_catalogue_when_the_answer_is_never_a_repeat(kind):
    """Target = the item after the newest one's id, never in the window: the gate falls toward 0 and the catalogue
    head ranks the target first."""
    model = learner(kind, num_items=60, dim=32, lr=0.01)
    hr = _fit(model, False, 60, 150)
    x, _ = _log(512, False, 60, 8, seed=20_000)
    with torch.no_grad():
        net = model.nets[0]
        gate = net.attend(x, net.encoder.encode(x)).log_gate.exp()
    assert gate.mean() < 0.05 and hr > 0.9


# ------------------------------------------------------------------------------------------ copy off: as before

# Loss of three steps per (encoder, variant) and the sum of the first network's scores and Q values after them, by
# the code before the copy option existed (main at 92fa77e, with the arg-max over actions that can be taken;
# tests/test_qlearning.py's batch; seeds 0).
BEFORE = {
    "sasrec-ce": ([4.106379508972168, 3.439084053039551, 3.0926971435546875], -60.83588187210262,
                 None),
    "sasrec-sqn": ([4.508424758911133, 4.344192028045654, 3.7948858737945557], -60.240070064610336,
                  56.39668518840335),
    "sasrec-sac": ([4.508424758911133, 1.4502370357513428, 0.5074165463447571], -66.39220300590387,
                  54.28342248592526),
    "sasrec-snqn": ([4.79990816116333, 4.702935695648193, 4.233946323394775], -62.60268439532956,
                   46.76840127212927),
    "sasrec-sa2c": ([4.79990816116333, 2.1883366107940674, 0.9354504346847534], -61.54287333489356,
                   46.009609976783395),
    "gru-ce": ([3.392575740814209, 3.286510944366455, 3.1946702003479004], 8.612218228037818,
              None),
    "gru-sqn": ([3.437519073486328, 3.5900094509124756, 3.3131306171417236], 9.523973558912985,
               6.056914835236967),
    "gru-sac": ([3.437519073486328, 0.2869578003883362, 0.3186891973018646], 9.754077951438376,
               6.39575789263472),
    "gru-snqn": ([3.4716713428497314, 3.629917621612549, 3.3446266651153564], 9.33217106765369,
                5.7319920575246215),
    "gru-sa2c": ([3.4716713428497314, 0.3552592694759369, 0.38031673431396484], 9.371820184285752,
                5.960599879268557),
}


def _batch(n: int = 8, items: int = 30, w: int = 5) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    state = torch.randint(0, items, (n, w), generator=g)
    action = torch.randint(2, items, (n,), generator=g)
    return {"state": state, "action": action, "next_state": torch.cat([state[:, 1:], action[:, None]], dim=1),
            "reward": torch.full((n,), 0.2), "done": torch.tensor([False] * (n - 1) + [True])}


@pytest.mark.parametrize("name", BEFORE)
def test_with_copy_off_training_and_scores_are_as_before(name):
    kind, variant = name.split("-")
    torch.manual_seed(0)
    model = Learner(EncoderConfig(kind=kind, num_items=30, max_len=5, dim=16),
                    HeadConfig(variant=variant, negatives=4, warmup_steps=1), lr=0.01)
    assert not any("copy" in k for k in model.state_dict()) and model.scores_from_state
    losses = [model.update(_batch(), step=s, seed=0)["loss/total"] for s in range(3)]
    model.eval()
    x = _batch()["state"]
    with torch.no_grad():
        scores = model.scores(x)
        enc = model.nets[0].encoder
        torch.testing.assert_close(scores, enc.score_all(enc.encode(x)), rtol=0, atol=0)
        q = model.q_values(x) if model.has_q_head else None
    want_losses, want_scores, want_q = BEFORE[name]
    assert losses == pytest.approx(want_losses, rel=1e-6)
    assert float(scores.double().sum()) == pytest.approx(want_scores, rel=1e-6)
    assert (q is None) == (want_q is None)
    if q is not None:
        assert float(q.double().sum()) == pytest.approx(want_q, rel=1e-6)


def test_config_json_holds_the_new_keys_only_when_set():
    from seqrec.runs.config import RunConfig

    enc = EncoderConfig(num_items=30, max_len=5)
    plain = RunConfig(data="d", encoder=enc).to_dict()
    assert "copy" not in plain["head"] and "loss" not in plain["head"] and "patience" not in plain["train"]
    set_ = RunConfig(data="d", encoder=enc, head=HeadConfig(copy=True, label_smoothing=0.1)).to_dict()
    assert set_["head"]["copy"] is True and set_["head"]["label_smoothing"] == 0.1 and "loss" not in set_["head"]
