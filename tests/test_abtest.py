"""A/B test: statistics on hand-computed cases, config errors, the phased policy, the OPE check without overlap,
and a tiny end-to-end `seqrec abtest` that writes its report, metrics and plots and repeats itself for a seed."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import tomllib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from uci_fake import fake_uci

from seqrec.abtest.config import abtest_config_from_dict, load_abtest_config
from seqrec.abtest.ope import run_ope_check
from seqrec.abtest.policy import Phased
from seqrec.abtest.report import ope_markdown
from seqrec.abtest.stats import newcombe, paired_difference, rank_agreement, two_proportion_z, wilson, z_value
from seqrec.campaign.config import sim_config_from_dict
from seqrec.campaign.simulator import Simulator
from seqrec.cli.main import main
from seqrec.core.config import ConfigError

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "experiments" / "configs" / "abtest.toml"
SIM = REPO / "experiments" / "configs" / "campaign_sim.toml"
UCI_ROWS = 1500  # rows of the fake UCI file (tests/uci_fake.py)


@pytest.fixture(scope="module")
def uci_file(tmp_path_factory) -> Path:
    return fake_uci(tmp_path_factory.mktemp("uci") / "bank-additional-full.csv", rows=UCI_ROWS)


@pytest.fixture(scope="module")
def sim(uci_file) -> Simulator:
    d = tomllib.loads(SIM.read_text())
    d["population"].update(size=500, calibration=str(uci_file))
    return Simulator(sim_config_from_dict(d, "test.toml"))


# ------------------------------------------------------------------------------------------------ statistics


def test_wilson_interval_hand_computed():
    assert z_value(0.95) == pytest.approx(1.959964, abs=1e-6)
    # 10 of 100: centre (0.1 + z^2/200) / (1 + z^2/100), half-width z/(1 + z^2/100) sqrt(0.0009 + z^2/40000)
    assert wilson(10, 100) == pytest.approx((0.05523, 0.17437), abs=1e-5)
    assert wilson(0, 10) == pytest.approx((0.0, 0.27753), abs=1e-5)        # stays inside [0, 1] at the edge
    assert wilson(10, 10)[1] == 1.0
    low, high = wilson(10, 100, level=0.99)
    assert low < 0.05523 and high > 0.17437                                 # wider at a higher level
    with pytest.raises(ValueError, match="successes <= trials"):
        wilson(5, 3)


def test_two_proportion_test_and_difference_hand_computed():
    # pooled p = 0.15, se = sqrt(0.15 * 0.85 * (1/100 + 1/100)) = 0.050498; z = 0.1 / se
    z, p = two_proportion_z(10, 100, 20, 100)
    assert z == pytest.approx(1.98030, abs=1e-4) and p == pytest.approx(0.04767, abs=1e-4)
    assert two_proportion_z(20, 100, 10, 100)[0] == pytest.approx(-z)     # sign follows B - A
    assert two_proportion_z(0, 50, 0, 80) == (0.0, 1.0)                    # no variance: no evidence
    # Newcombe (1998), example (b): 56/70 against 48/80, difference 0.2000, 95% interval 0.0524 to 0.3339
    assert newcombe(48, 80, 56, 70) == pytest.approx((0.2, 0.05243, 0.33387), abs=1e-4)


def test_paired_difference_hand_computed():
    # differences 1, 0, 0, 0: mean 0.25, sd 0.5, se 0.25, z = 1, p = P(|Z| >= 1) = 0.3173
    d = paired_difference(np.array([0, 0, 1, 1]), np.array([1, 0, 1, 1]))
    assert (d.mean, d.z, d.n) == (0.25, pytest.approx(1.0), 4)
    assert d.p_value == pytest.approx(0.31731, abs=1e-5)
    assert (d.low, d.high) == pytest.approx((0.25 - 1.959964 * 0.25, 0.25 + 1.959964 * 0.25), abs=1e-6)
    same = paired_difference(np.zeros(5), np.ones(5))                     # every customer converts only under B
    assert same.p_value == 0.0 and same.low == same.high == 1.0


def test_rank_agreement():
    truth = np.array([[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]])
    everything = np.ones((2, 4), bool)
    assert rank_agreement(truth, truth, everything) == pytest.approx(1.0)
    assert rank_agreement(-truth, truth, everything) == pytest.approx(-1.0)
    # masked-out entries do not count: only the first three of row 0 are compared, row 1 keeps too few
    mask = np.array([[True, True, True, False], [True, True, False, False]])
    assert rank_agreement(np.array([[1.0, 2.0, 3.0, -9.0], [0, 0, 0, 0]]), truth, mask) == pytest.approx(1.0)
    assert math.isnan(rank_agreement(truth, truth, np.zeros((2, 4), bool)))


# ---------------------------------------------------------------------------------------------------- config


def _shipped() -> dict:
    return tomllib.loads(SHIPPED.read_text())


def _old_form(d: dict) -> dict:
    """An abtest file in the older form: arm B's run tables under [model.*], the bandit under [arm_b.bandit]."""
    d = copy.deepcopy(d)
    d["model"] = {t: d.pop(t) for t in ("encoder", "head", "train", "retrieval", "rerank", "index") if t in d}
    d.setdefault("arm_b", {})["bandit"] = d.pop("bandit")
    return d


def test_old_model_form_gives_the_same_config_as_the_run_tables():
    new = abtest_config_from_dict(_shipped(), "abtest.toml")
    old = abtest_config_from_dict(_old_form(_shipped()), "abtest.toml")
    assert "model" not in _shipped() and "encoder" in _shipped() and "bandit" in _shipped()
    assert old == new and old.to_dict() == new.to_dict()
    assert new.model["train"]["max_steps"] == 1000 and new.model["rerank"]["candidates"] == 5
    assert new.model["train"]["lr"] == 0.005 and new.arm_b.bandit.epsilon == 0.1   # MODEL_DEFAULTS kept under


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["encoder"].update(width=8),
     "unknown key encoder.width; valid keys in [encoder]: blocks, categories, dim"),
    (lambda d: d["encoder"].update(num_items=5), "encoder.num_items comes from the prepared data"),
    (lambda d: d["train"].update(seed=3), "train.seed comes from the top-level seed"),
    (lambda d: d["train"].update(max_step=3), "unknown key train.max_step; valid keys in [train]"),
    (lambda d: d["retrieval"].update(enabled=False), "retrieval.enabled must be true"),
    (lambda d: d["head"].update(variant="ce"), "rerank.w_q needs a Q head: head.variant must not be 'ce'"),
    (lambda d: d["bandit"].update(kind="oracle"), "kind must be one of epsilon_greedy"),
    (lambda d: d["bandit"].update(epsilon_decay=0.5), "unknown key bandit.epsilon_decay; valid keys in [bandit]: "
                                                      "alpha, epsilon, kind"),
    (lambda d: d["bandit"].update(seed=1), "bandit.seed comes from the top-level seed"),
    (lambda d: d.update(model={"head": {"gamma": 0.9}}), "at the top level ([encoder]) or under [model]"),
    (lambda d: d.update(arm_b={"bandit": {"kind": "ucb1"}}), "give the bandit once"),
    (lambda d: d.update(prepare={}), "unknown key prepare; valid top-level keys: simulator, seed"),
])
def test_run_table_errors_name_the_key(edit, message):
    d = _shipped()
    edit(d)
    with pytest.raises(ConfigError, match="abtest.toml: ") as e:
        abtest_config_from_dict(d, "abtest.toml")
    assert message in str(e.value)


def test_shipped_config_loads_and_explains_its_numbers():
    cfg = load_abtest_config(SHIPPED)
    assert cfg.simulator_path.resolve() == SIM.resolve()
    assert cfg.training.policy == "random" and cfg.arm_b.bandit.kind == "epsilon_greedy"
    assert cfg.model["rerank"]["w_q"] > 0 and cfg.model["retrieval"]["enabled"]
    lines = SHIPPED.read_text().splitlines()
    for i, line in enumerate(lines):
        code = line.split("#")[0]
        if "=" in code and any(ch.isdigit() for ch in code.split("=", 1)[1]):
            assert "#" in line or lines[i - 1].lstrip().startswith("#"), f"line {i + 1} has no comment: {line}"


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(budget=5), "unknown key budget; valid top-level keys: simulator, seed"),
    (lambda d: d.pop("simulator"), "missing key simulator"),
    (lambda d: d.update(contacts="all"), "contacts must be an int"),
    (lambda d: d.update(level=1.5), "level must be a number in"),
    (lambda d: d["training"].update(wave=3), "unknown key training.wave; valid keys in [training]: epsilon, policy"),
    (lambda d: d["training"].update(waves=0), "training.waves must be an int >= 1"),
    (lambda d: d["training"].update(policy="psychic"), "training.policy must be one of random, rules"),
    (lambda d: d["training"]["rewards"].pop("purchase"), "training.rewards must give every event type"),
    (lambda d: d["model"]["encoder"].update(width=8), "unknown key model.encoder.width; valid keys in "
                                                      "[model.encoder]: blocks, categories, dim"),
    (lambda d: d["model"]["encoder"].update(num_items=5), "model.encoder.num_items comes from the prepared data"),
    (lambda d: d["model"]["train"].update(seed=3), "model.train.seed comes from the top-level seed"),
    (lambda d: d["model"].update(optimiser={}), "unknown table [model.optimiser]; valid: [model.encoder]"),
    (lambda d: d["model"]["retrieval"].update(enabled=False), "model.retrieval.enabled must be true"),
    (lambda d: d["model"]["head"].update(variant="ce"), "w_q needs a Q head"),
    (lambda d: d["arm_a"].update(rules="mine"), "unknown key arm_a.rules; valid keys in [arm_a]: epsilon"),
    (lambda d: d["arm_b"]["bandit"].update(kind="oracle"), "kind must be one of epsilon_greedy"),
    (lambda d: d["arm_b"]["bandit"].update(seed=1), "arm_b.bandit.seed comes from the top-level seed"),
    (lambda d: d["arm_b"].update(warm=True),
     "unknown key arm_b.warm; valid keys in [arm_b]: bandit, learner, reference_pipeline, warm_start"),
    (lambda d: d.update(offers={"epochs": 0}), "offers.epochs"),
    (lambda d: d.update(offers={"seed": 1}), "offers.seed comes from the top-level seed"),
    (lambda d: d.update(decision={"kind": "psychic"}), "decision"),
    (lambda d: d.update(gate={"estimator": "ips"}), "gate.estimator must be one of snips, dr"),
    (lambda d: d["ope"].update(target="psychic"), "ope.target must be one of random, rules"),
    (lambda d: d["ope"].update(estimators=["ips", "magic"]), "ope.estimators must list some of ips, snips, dm, dr"),
    (lambda d: d["ope"].update(reward_model="forest"), "ope.reward_model must be one of ridge, cell_mean"),
])
def test_config_errors_name_the_key(edit, message):
    d = _old_form(_shipped())
    edit(d)
    with pytest.raises(ConfigError, match="abtest.toml: ") as e:
        abtest_config_from_dict(d, "abtest.toml")
    assert message in str(e.value)


def test_budget_beyond_one_contact_per_customer_is_refused(uci_file, tmp_path, capsys):
    cfg = _tiny_config(tmp_path, uci_file, contacts=10_000)
    assert main(["abtest", "--config", str(cfg), "--out", str(tmp_path / "out")]) == 2
    assert "contacts = 10,000 exceeds the 300 customers" in capsys.readouterr().err


def test_waves_beyond_the_contact_cap_are_refused(uci_file, tmp_path, capsys):
    cfg = _tiny_config(tmp_path, uci_file)
    cfg.write_text(cfg.read_text().replace("waves = 1", "waves = 5"))
    assert main(["abtest", "--config", str(cfg), "--out", str(tmp_path / "out")]) == 2
    assert "training.waves = 5 plus the test wave exceeds" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- policy, OPE check


@pytest.mark.parametrize("kind", ["epsilon_greedy", "linucb"])
def test_bandit_warm_start_learns_from_the_training_log(sim, kind):
    from seqrec.abtest.run import make_bandit
    from seqrec.campaign.policies import BanditNudgePolicy, RandomPolicy

    log = sim.run_policy(RandomPolicy(sim), 400, np.random.default_rng(0), batch_size=100)
    cfg = abtest_config_from_dict({**_shipped(), "arm_b": {"warm_start": True}, "bandit": {"kind": kind}})
    bandit = make_bandit(cfg, sim, log)
    assert bandit.updates == 400 and bandit.dim == (len(sim.context_feature_names()) if kind == "linucb" else 0)
    cold = make_bandit(dataclasses.replace(cfg, arm_b=dataclasses.replace(cfg.arm_b, warm_start=False)), sim, log)
    assert cold.updates == 0
    pi = BanditNudgePolicy(sim, RandomPolicy(sim), bandit).probabilities(log.contacts.take(np.arange(5)))
    assert np.allclose(pi.sum(axis=(1, 2)), 1.0)



class _Fixed:
    """Always product p with the first allowed nudge; records what update saw."""

    def __init__(self, sim: Simulator, p: int) -> None:
        self.sim, self.p, self.seen = sim, p, []

    def probabilities(self, contacts):
        pi = np.zeros((len(contacts), self.sim.n_products, self.sim.n_arms))
        pi[:, self.p, int(np.argmax(self.sim.nudge_mask[self.p]))] = 1.0
        return pi

    def update(self, contacts, decisions, purchased):
        self.seen.append(contacts.previous_contacts.copy())


def test_phased_policy_switches_at_the_wave_and_learns_from_its_own_contacts(sim):
    before, after = _Fixed(sim, 0), _Fixed(sim, 1)
    n = sim.population.size
    log = sim.run_policy(Phased(before, after, waves=1), n + 200, np.random.default_rng(0), batch_size=128)
    first = log.contacts.previous_contacts == 0
    assert (log.decisions.product[first] == 0).all() and (log.decisions.product[~first] == 1).all()
    assert (~first).sum() == 200 and before.seen == []
    assert np.concatenate(after.seen).tolist() == [1] * 200
    # a batch that straddles the switch is split by row
    mixed = sim.initial_contacts(np.arange(4))
    mixed = type(mixed)(mixed.customer, np.array([0, 1, 0, 1]), mixed.time_us, mixed.held, mixed.shown, mixed.history)
    pi = Phased(before, after, waves=1).probabilities(mixed)
    assert pi.sum(axis=2).argmax(axis=1).tolist() == [0, 1, 0, 1]


def test_ope_check_with_a_deterministic_logger_reports_no_overlap(sim):
    from seqrec.abtest.config import OpeCheck

    result = run_ope_check(sim, OpeCheck(logging="rules", logging_epsilon=0.0, target="random", resamples=20),
                           contacts=300, seed=1, batch_size=100, level=0.95)
    assert not result.overlap and result.estimates == []
    assert result.deterministic_share == 1.0 and result.unsupported > 0.5
    assert 0 < result.truth < 1 and result.run_sampled >= 0                 # the truth is still given
    text = "\n".join(ope_markdown(result.as_dict(), "95%"))
    assert "No estimate" in text and "cannot serve as the logging policy" in text
    assert "| IPS |" not in text and "| DR |" not in text


def test_ope_check_with_an_exploring_logger_estimates_against_the_truth(sim):
    """Rules with epsilon 0.5 log 500 contacts; the target is the rules themselves. The logger makes the rules'
    offer with probability 0.5 + 0.5 / k (k <= 99 = 9 products x 11 nudges open to the contact), so the matching
    rows weigh at most 1 / 0.50505 = 1.98 and about half the log counts (ESS ~ 250): every estimate should land
    near the simulator's truth."""
    from seqrec.abtest.config import OpeCheck

    result = run_ope_check(sim, OpeCheck(logging="rules", logging_epsilon=0.5, target="rules", resamples=200,
                                         reward_model="cell_mean"), contacts=500, seed=2, batch_size=100, level=0.95)
    assert result.overlap and [e["estimator"] for e in result.estimates] == ["ips", "snips", "dm", "dr"]
    assert result.unsupported == 0.0 and result.deterministic_share == 0.0 and not result.warnings
    # a first wave: the target run meets exactly the logged contacts, so its expectation is the exact truth,
    # and its sampled conversion is a binomial draw around it (3 standard errors of 500 draws: 0.059)
    assert result.run_expected == pytest.approx(result.truth, rel=1e-12)
    assert abs(result.run_sampled - result.truth) < 3 * np.sqrt(result.truth * (1 - result.truth) / 500)
    for e in result.estimates:
        assert e["max_weight"] == pytest.approx(1 / (0.5 + 0.5 / 99))
        assert 200 < e["ess"] < 300
        # near the truth: inside its own 95% interval, and within 0.06 (about 2 standard errors of a conversion
        # near 0.26 estimated from ~250 effective rows: sqrt(0.26 * 0.74 / 250) = 0.028)
        assert e["low"] <= result.truth <= e["high"] and e["covers_truth"]
        assert abs(e["value"] - result.truth) < 0.06 and abs(e["relative_error"]) < 0.06 / result.truth
    text = "\n".join(ope_markdown(result.as_dict(), "95%"))
    assert "| IPS |" in text and "No estimate" not in text


def test_ope_check_with_a_uniform_logger_warns_of_a_tiny_effective_sample(sim):
    """A uniform logger over up to 99 offers matches a deterministic target in ~1 row of k: an ESS of a few rows
    of 500, which the check reports as a warning rather than trusting its estimates."""
    from seqrec.abtest.config import OpeCheck

    result = run_ope_check(sim, OpeCheck(logging="random", target="rules", resamples=50, reward_model="cell_mean"),
                           contacts=500, seed=2, batch_size=100, level=0.95)
    assert result.overlap and all(e["ess"] < 20 for e in result.estimates)
    # a weight is 1 / (1 / k) = k for a contact with k offers open (at most 99) where the target agrees
    assert all(e["max_weight"] <= 99 and e["max_weight"] == round(e["max_weight"]) for e in result.estimates)
    assert any("effective sample size" in w for w in result.warnings)


# ------------------------------------------------------------------------------------------------ end to end


def _tiny_config(tmp_path: Path, uci_file: Path, contacts: int = 250) -> Path:
    sim_cfg = tmp_path / "sim.toml"
    sim_cfg.write_text(SIM.read_text().replace("size = 41188", "size = 300")
                       .replace('calibration = ""', f'calibration = "{uci_file}"'))
    d = _shipped()
    d.update(simulator=str(sim_cfg), contacts=contacts, batch_size=50)
    d["training"]["waves"] = 1
    d["train"].update(max_steps=12, eval_every=6, batch_size=64)
    d["retrieval"].update(max_steps=6, eval_every=3)
    d["ope"].update(resamples=30)
    d.setdefault("offers", {}).update(epochs=2, history=8)
    d.setdefault("gate", {}).update(resamples=30)
    lines = [f"{k} = {json.dumps(v)}" for k, v in d.items() if not isinstance(v, dict)]
    for table, body in d.items():
        if isinstance(body, dict):
            flat = {k: v for k, v in body.items() if not isinstance(v, dict)}
            lines += [f"[{table}]", *(f"{k} = {_toml(v)}" for k, v in flat.items())]
            for sub, inner in body.items():
                if isinstance(inner, dict) and table != "training":
                    lines += [f"[{table}.{sub}]", *(f"{k} = {_toml(v)}" for k, v in inner.items())]
                elif isinstance(inner, dict):
                    lines.append(f"{sub} = {{ {', '.join(f'{k} = {_toml(v)}' for k, v in inner.items())} }}")
    path = tmp_path / "abtest.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _toml(v) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else json.dumps(v)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, uci_file):
    """Two runs of the tiny test with the same seed, in two folders."""
    tmp = tmp_path_factory.mktemp("abtest")
    cfg = _tiny_config(tmp, uci_file)
    outs = [tmp / "out1", tmp / "out2"]
    for out in outs:
        assert main(["abtest", "--config", str(cfg), "--out", str(out), "--seed", "3", "--no-progress"]) == 0
    return cfg, outs


def test_tiny_abtest_writes_report_metrics_and_plots(tiny):
    _, (out, _) = tiny
    m = json.loads((out / "metrics.json").read_text())
    report = (out / "report.md").read_text()
    for png in ("cumulative_conversion.png", "bandit_arm_shares.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({png})" in report
    a, b = m["arms"]["A"], m["arms"]["B"]
    assert m["customers"] == 300 and a["users"] == b["users"] == a["contacts"] == 250
    for arm in (a, b):
        assert arm["cr"] == arm["purchases"] / arm["users"] and arm["cr_low"] <= arm["cr"] <= arm["cr_high"]
        assert sum(f["shown"] for f in arm["families"].values()) == 250
        assert sum(f["purchases"] for f in arm["families"].values()) == arm["purchases"]
        assert sum(p["offered"] for p in arm["products"].values()) == 250
    c = m["comparison"]
    assert c["difference"] == pytest.approx(b["cr"] - a["cr"])
    assert c["paired"]["difference"] == pytest.approx(b["cr"] - a["cr"]) and c["paired"]["customers"] == 250
    # arm B is the offer learner: its joint decision layer, no online nudge bandit; the gate before the test
    assert m["learner"] == "offers" and m["bandit"]["joint"] and m["bandit"]["updates"] == 0
    g = m["gate"]
    assert {"estimator", "estimate", "low", "high", "decision"} <= set(g) and g["decision"] in ("go", "no-go")
    assert g["low"] <= g["estimate"] <= g["high"] and g["held_out_only"] and 0 < g["contacts"] < 300
    assert (g["decision"] == "go") == (g["difference"]["low"] > 0)
    assert g["difference"]["estimate"] == pytest.approx(g["estimate"] - g["current"]["estimate"])
    assert "## The gate (before the test)" in report and "offer Q (arm B)" in report
    assert set(m["references"]["rank_agreement"]) == {"two_tower", "supervised", "q", "offer_q"}
    assert m["offers"]["offers"] == 300 and 0 <= m["offers"]["best_epoch"] <= m["offers"]["epochs"]   # 0: wide
    assert (out / "training" / "offers" / "offers.json").exists()
    assert m["training"]["contacts"] == 300 and m["config"]["seed"] == 3
    assert m["references"]["oracle_cr"] >= max(a["expected_cr"], b["expected_cr"], m["references"]["random_cr"])
    assert m["ope"]["overlap"] and "| IPS |" in report and "## Nudge uptake per family" in report
    assert "seqrec abtest --config" in report and "--seed 3" in report
    arms = {k: pq.read_table(out / "arms" / f"{k}.parquet").to_pandas() for k in ("A", "B")}
    for k, arm in (("A", a), ("B", b)):
        assert arms[k].session_id.nunique() == 250 and (arms[k].event_type == "purchase").sum() == arm["purchases"]
    assert set(arms["A"].user_id) == set(arms["B"].user_id)                 # the same customers in both arms


def test_tiny_abtest_is_identical_for_the_same_seed(tiny):
    _, (one, two) = tiny
    m1, m2 = (json.loads((o / "metrics.json").read_text()) for o in (one, two))
    for m in (m1, m2):
        m.pop("timings")
        assert m.pop("command").endswith(" --seed 3")                       # the two commands differ by --out
    assert m1 == m2
    assert (one / "report.md").read_text().replace(str(one), "OUT") == \
        (two / "report.md").read_text().replace(str(two), "OUT")
    assert pq.read_table(one / "arms" / "B.parquet").equals(pq.read_table(two / "arms" / "B.parquet"))


def test_arm_b_never_offers_a_product_the_customer_holds(tiny, uci_file):
    cfg, (out, _) = tiny
    from seqrec.abtest.policy import PipelineProducts
    from seqrec.abtest.run import build_simulator
    from seqrec.runs.pipeline import load_pipeline

    s = build_simulator(dataclasses.replace(load_abtest_config(cfg), seed=3), uci_file)
    pipeline, run_cfg = load_pipeline(out / "training" / "run")
    vocab = pq.read_table(out / "training" / "data" / "vocab.parquet").sort_by("index").column("item_id").to_pylist()
    products = PipelineProducts(s, pipeline, vocab, run_cfg.encoder.max_len)
    rng = np.random.default_rng(0)
    ctx = s.initial_contacts(np.arange(s.population.size))
    held = rng.random(ctx.held.shape) < 0.6
    held[0] = True                                                          # holds everything: any product
    ctx = type(ctx)(ctx.customer, ctx.previous_contacts, ctx.time_us, held, ctx.shown, ctx.history)
    chosen = products.choose(ctx)
    some_open = ~held.all(axis=1)
    assert some_open.sum() > 250 and not held[some_open, chosen[some_open]].any()
    pi = products.probabilities(ctx)
    assert np.allclose(pi.sum(axis=(1, 2)), 1.0) and (pi.sum(axis=2).argmax(axis=1) == chosen).all()


def test_out_folder_of_something_else_is_refused(uci_file, tmp_path, capsys):
    cfg = _tiny_config(tmp_path, uci_file)
    out = tmp_path / "busy"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    assert main(["abtest", "--config", str(cfg), "--out", str(out)]) == 2
    assert "is not an abtest output folder" in capsys.readouterr().err and (out / "precious.txt").exists()
