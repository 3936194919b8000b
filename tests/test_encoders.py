"""Sequence encoders: shapes, causality, padding, finite empty windows, scoring, validation, a learning check."""

from __future__ import annotations

import pytest
import torch

from seqrec.models.encoders import PAD, EncoderConfig, GRU4Rec, SASRec, SequenceEncoder, build_encoder

# (id, config overrides): every encoder variant the invariants must hold for.
VARIANTS = {
    "sasrec": dict(kind="sasrec"),
    "sasrec-2x2": dict(kind="sasrec", blocks=2, heads=2),
    "sasrec-left": dict(kind="sasrec", positions="left"),
    "sasrec-norm8": dict(kind="sasrec", item_init_norm=8.0),
    "gru": dict(kind="gru"),
    "gru-residual": dict(kind="gru", gru_residual=True),
}
NUM_ITEMS = 50


def make(variant: str, seed: int = 0, train: bool = False, **overrides: object) -> SequenceEncoder:
    """A small seeded encoder of `variant`, in eval mode unless `train`."""
    torch.manual_seed(seed)
    fields = {"num_items": NUM_ITEMS, "max_len": 10, "dim": 16, **VARIANTS[variant], **overrides}
    model = build_encoder(EncoderConfig(**fields))  # type: ignore[arg-type]
    return model.train(train)


def windows(b: int, t: int, seed: int = 1, min_len: int = 1) -> torch.Tensor:
    """(B, T) left-padded windows of random real items with random lengths in [min_len, T]."""
    g = torch.Generator().manual_seed(seed)
    items = torch.randint(2, NUM_ITEMS, (b, t), generator=g)  # (B, T)
    lengths = torch.randint(min_len, t + 1, (b, 1), generator=g)  # (B, 1)
    return torch.where(torch.arange(t) >= t - lengths, items, PAD)  # (B, T)


def left_pad(items: torch.Tensor, t: int) -> torch.Tensor:
    """Left-pad (B, T') windows with PAD to (B, t)."""
    return torch.nn.functional.pad(items, (t - items.shape[1], 0), value=PAD)


@pytest.mark.parametrize("variant", VARIANTS)
def test_shapes(variant: str) -> None:
    model = make(variant)
    x = windows(4, 10)
    state = model.encode(x)
    assert state.shape == (4, 16) and state.dtype == torch.float32
    assert model.encode_all(x).shape == (4, 10, 16)
    assert model(x).shape == (4, 16)
    assert model.score(state, torch.randint(0, NUM_ITEMS, (4, 7))).shape == (4, 7)
    assert model.score_all(state).shape == (4, NUM_ITEMS)
    assert model.encode(windows(3, 6)).shape == (3, 16)  # shorter windows than max_len are fine


def test_build_encoder_kinds_and_tied_default() -> None:
    assert isinstance(make("sasrec"), SASRec) and isinstance(make("gru"), GRU4Rec)
    tied = make("sasrec")
    assert tied.output_weight is tied.item_emb.weight
    untied = make("sasrec", tied=False)
    assert untied.output_weight is not untied.item_emb.weight
    assert untied.output_weight.shape == (NUM_ITEMS, 16)


@pytest.mark.parametrize("variant", VARIANTS)
def test_encode_is_last_state_of_encode_all(variant: str) -> None:
    """SASRec's encode runs its last block for the last position only: equal up to rounding, empty windows
    included, and in training mode (dropout off, so the masks cannot differ) with the same gradients."""
    model = make(variant)
    x = torch.cat([windows(8, 10), torch.full((2, 10), PAD)])  # (10, 10) two empty windows last
    torch.testing.assert_close(model.encode(x), model.encode_all(x)[:, -1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.encode(x[8:]), model.empty_state.expand(2, -1), rtol=0, atol=0)
    model = make(variant, train=True, dropout=0.0)
    w = torch.randn(10, 16)
    grads = []
    for state in (model.encode(x), model.encode_all(x)[:, -1]):
        model.zero_grad()
        (state * w).sum().backward()
        grads.append([p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("variant", ["sasrec", "sasrec-2x2"])
def test_training_encode_applies_dropout_to_the_last_block(variant: str) -> None:
    """With dropout, training-mode states vary with the seed and average (over masks) to about the eval state."""
    model = make(variant, train=True, dropout=0.2, blocks=1)
    model.emb_dropout.cut = 0  # embeddings kept whole: any variation comes from the (only, so last) block
    x = windows(4, 10)
    draws = torch.stack([model.encode(x) for _ in range(2000)])  # (2000, B, D)
    assert draws.std(0).mean() > 0.05  # masks really are drawn in the last block
    model.eval()
    # dropout rescales kept values, so the mean state is close to (not equal to: layer norms) the eval state
    assert (draws.mean(0) - model.encode(x)).abs().mean() < 0.25 * model.encode(x).abs().mean()


@pytest.mark.parametrize("variant", VARIANTS)
def test_causal_later_items_never_change_earlier_states(variant: str) -> None:
    model = make(variant)
    x = windows(16, 10, min_len=10)
    before = model.encode_all(x)
    for t in range(9):
        y = x.clone()
        y[:, t + 1:] = torch.randint(2, NUM_ITEMS, (16, 9 - t))  # change every item after t
        after = model.encode_all(y)
        torch.testing.assert_close(after[:, : t + 1], before[:, : t + 1], rtol=0, atol=1e-6)
        assert not torch.allclose(after[:, t + 1:], before[:, t + 1:])


@pytest.mark.parametrize("variant", VARIANTS)
def test_state_does_not_depend_on_how_many_pads_precede(variant: str) -> None:
    """At a fixed T, two windows with the same items cannot differ in their pad count, so vary T instead.

    One model with max_len=20 encodes [0]*7 + [a, b, c] (T=10) and [0]*17 + [a, b, c] (T=20): the same
    weights, the only difference being 10 more pads. With positions counted from the newest item ("right")
    or from the oldest real one ("left"), a, b, c use the same positional rows in both windows, so every
    state after a real item must agree. This is the same statement as copying a max_len=10 model's
    positional table into rows 0..9 of a max_len=20 model: rows 10..19 are never read here.
    """
    model = make(variant, max_len=20)
    real = torch.tensor([[5, 17, 3], [9, 9, 42]])
    short, long = model.encode_all(left_pad(real, 10)), model.encode_all(left_pad(real, 20))
    torch.testing.assert_close(short[:, -3:], long[:, -3:], rtol=0, atol=1e-5)
    torch.testing.assert_close(short[:, :-3], long[:, :7])  # the empty-history state at every pad


@pytest.mark.parametrize("variant", VARIANTS)
def test_pad_embedding_row_is_never_read(variant: str) -> None:
    """Tied scoring gives the pad row gradients (score_all has a pad column), so it may drift from zero."""
    model = make(variant)
    x = windows(8, 10)
    before = model.encode_all(x)
    with torch.no_grad():
        model.item_emb.weight[PAD] = torch.randn(16) * 10
    torch.testing.assert_close(model.encode_all(x), before, rtol=0, atol=0)


@pytest.mark.parametrize("variant", ["gru", "sasrec-left"])
def test_encode_all_prefix_equals_encode_of_that_window(variant: str) -> None:
    """GRU4Rec and SASRec with "left" positions: the state after column t is the state of the window ending at t.

    Not so for "right" positions (the default): there the item at column t sits at position T-1-t.
    """
    model = make(variant)
    x = windows(8, 10)
    states = model.encode_all(x)
    for t in range(10):
        torch.testing.assert_close(states[:, t], model.encode(left_pad(x[:, : t + 1], 10)), atol=1e-5, rtol=0)


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_all_padding_rows_are_finite_with_finite_gradients(variant: str, train: bool) -> None:
    model = make(variant, train=train, dropout=0.5)
    x = windows(4, 10)
    x[1] = PAD  # one empty history among real ones, as d3rlpy's probe sends
    states = model.encode_all(x)
    scores = model.score_all(model.encode(x))
    assert torch.isfinite(states).all() and torch.isfinite(scores).all()
    assert torch.isfinite(model.encode(torch.zeros(3, 10, dtype=torch.long))).all()
    torch.testing.assert_close(states[1], model.empty_state.expand(10, -1))
    scores.logsumexp(dim=1).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_float_ids_are_read_as_ids() -> None:
    """d3rlpy casts observations to float32; ids below 2**24 survive the round trip."""
    model = make("sasrec")
    x = windows(4, 10)
    torch.testing.assert_close(model.encode(x.float()), model.encode(x), rtol=0, atol=0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_score_equals_score_all_gathered(variant: str) -> None:
    model = make(variant)
    state = model.encode(windows(6, 10))
    ids = torch.randint(0, NUM_ITEMS, (6, 9))
    expected = model.score_all(state).gather(1, ids)
    torch.testing.assert_close(model.score(state, ids), expected, atol=1e-5, rtol=1e-5)


def test_deterministic_given_seed_even_with_dropout() -> None:
    x = windows(8, 10)
    outs = []
    for _ in range(2):
        model = make("sasrec", seed=3, train=True, dropout=0.3)
        outs.append(model.score_all(model.encode(x)))  # dropout masks drawn from the same seed
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


def test_rejects_bad_windows() -> None:
    model = make("sasrec")
    with pytest.raises(ValueError, match="max_len"):
        model.encode(windows(2, 11))
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        model.encode(torch.ones(10, dtype=torch.long))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("kind", "lstm"),
        ("num_items", 0),
        ("num_items", 2),
        ("num_items", 2**24 + 1),
        ("num_items", 3.0),
        ("max_len", 0),
        ("dim", 0),
        ("blocks", 0),
        ("heads", 0),
        ("heads", 3),  # does not divide dim=64
        ("dropout", -0.1),
        ("dropout", 1.0),
        ("positions", "middle"),
        ("tied", 1),
        ("item_init_norm", 0.0),
        ("item_init_norm", float("inf")),
        ("item_init_norm", True),
        ("gru_residual", 1),
    ],
)
def test_config_validation(field: str, value: object) -> None:
    fields = {"num_items": 100, field: value}
    with pytest.raises(ValueError, match=field):
        EncoderConfig(**fields)  # type: ignore[arg-type]


def test_config_defaults_are_the_papers() -> None:
    cfg = EncoderConfig(num_items=100)
    assert (cfg.kind, cfg.max_len, cfg.dim, cfg.blocks, cfg.heads, cfg.dropout) == ("sasrec", 10, 64, 1, 1, 0.1)
    assert cfg.positions == "right" and cfg.tied and cfg.item_init_norm == 1.0 and not cfg.gru_residual


def test_gru_residual_is_for_gru_only() -> None:
    with pytest.raises(ValueError, match="gru_residual"):
        EncoderConfig(num_items=100, kind="sasrec", gru_residual=True)


@pytest.mark.parametrize("norm", [1.0, 8.0])
@pytest.mark.parametrize("tied", [True, False])
def test_item_rows_start_at_the_configured_norm(norm: float, tied: bool) -> None:
    model = make("sasrec", num_items=2000, dim=64, tied=tied, item_init_norm=norm)
    for table in (model.item_emb.weight, model.output_weight):
        rows = table.detach()[1:].norm(dim=1)  # (I - 1,) every row but PAD
        assert abs(rows.mean().item() / norm - 1.0) < 0.05
        assert table.detach()[PAD].abs().sum() == 0


def test_sasrec_initial_logits_keep_their_scale_whatever_the_item_norm() -> None:
    """The final layer norm's gain starts at 1 / norm, so bigger item rows do not blow up the first logits."""
    x = windows(256, 10)
    spread = {}
    for norm in (1.0, 8.0):
        model = make("sasrec", num_items=2000, dim=64, item_init_norm=norm)
        with torch.no_grad():
            spread[norm] = model.score_all(model.encode(x)).std().item()
    assert 0.7 < spread[8.0] / spread[1.0] < 1.4, spread


def test_gru_residual_adds_the_newest_item_embedding_to_the_state() -> None:
    plain, residual = make("gru"), make("gru", gru_residual=True)  # same seed: the flag adds no parameter
    x = windows(6, 10)
    with torch.no_grad():
        extra = residual.encode(x) - plain.encode(x)  # (B, D)
        torch.testing.assert_close(extra, residual.item_emb(x[:, -1]))
        x[0] = PAD  # an empty window keeps the learned empty state
        torch.testing.assert_close(residual.encode(x)[0], residual.empty_state)


@pytest.mark.parametrize("variant", ["sasrec", "gru"])
def test_learns_next_item_is_previous_plus_one(variant: str) -> None:
    """A few hundred Adam steps of full-catalogue cross-entropy on every prefix learn item -> item + 1."""
    real = 20  # real items 2..21 in a cycle
    model = make(variant, train=True, num_items=real + 2, dim=32)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(0)

    def batch(b: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = torch.randint(0, real, (b, 1), generator=g)  # (B, 1)
        cycle = 2 + (start + torch.arange(11)) % real  # (B, T + 1) consecutive items
        lengths = torch.randint(1, 11, (b, 1), generator=g)  # (B, 1)
        x = torch.where(torch.arange(10) >= 10 - lengths, cycle[:, :10], PAD)  # (B, T)
        return x, torch.where(x != PAD, cycle[:, 1:], -100)  # (B, T) targets, pads ignored

    for _ in range(200):
        x, y = batch(64)
        logits = model.score_all(model.encode_all(x).reshape(-1, 32))  # (B*T, I)
        loss = torch.nn.functional.cross_entropy(logits, y.reshape(-1), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    x, y = batch(512)
    accuracy = (model.score_all(model.encode(x)).argmax(1) == y[:, -1]).float().mean().item()
    assert accuracy > 0.9, f"{variant}: next-item accuracy {accuracy:.3f}"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("variant", VARIANTS)
def test_cuda_matches_cpu(variant: str) -> None:
    model = make(variant)
    x = windows(8, 10)
    x[0] = PAD
    cpu = model.score_all(model.encode(x))
    gpu = model.cuda().score_all(model.encode(x.cuda()))
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=1e-4)
