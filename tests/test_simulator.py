"""Campaign simulator: config errors, calibration, exact probabilities against sampling, propensities, the log."""

from __future__ import annotations

import dataclasses
import json
import tomllib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from seqrec.datasets.synthetic import NUDGE_FAMILIES
from seqrec.rl.bandits.policies import BanditConfig
from uci_fake import fake_uci  # tests/uci_fake.py (pytest puts tests/ on sys.path)

from seqrec.campaign.config import CUSTOMER_COLUMNS, SimConfigError, load_sim_config, sim_config_from_dict
from seqrec.campaign.policies import BanditNudgePolicy, RandomPolicy, RulePolicy
from seqrec.campaign.population import READ_COLUMNS, CalibrationError, read_uci
from seqrec.campaign.records import Contacts, Decisions, PolicyError
from seqrec.campaign.simulator import Simulator
from seqrec.cli.main import main

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "experiments" / "configs" / "campaign_sim.toml"


@pytest.fixture(scope="module")
def uci_file(tmp_path_factory) -> Path:
    return fake_uci(tmp_path_factory.mktemp("uci") / "bank-additional-full.csv")


def shipped_dict() -> dict:
    return tomllib.loads(SHIPPED.read_text())


def make_sim(uci_file: Path, size: int = 2000, seed: int = 0, edit=None) -> Simulator:
    """The shipped config on the fake file, with `size` customers; `edit(d)` may change the parsed TOML first."""
    d = shipped_dict()
    d["population"].update(size=size, seed=seed, calibration=str(uci_file))
    if edit is not None:
        edit(d)
    return Simulator(sim_config_from_dict(d, "test.toml"))


@pytest.fixture(scope="module")
def sim(uci_file) -> Simulator:
    return make_sim(uci_file)


# --------------------------------------------------------------------------------------------- config


def test_shipped_config_loads_and_states_every_number():
    cfg = load_sim_config(SHIPPED)
    assert len(cfg.products) >= 5 and cfg.population.reference_product in cfg.product_ids
    assert set(cfg.segment_names) == {r.segment for r in cfg.rules}
    assert len(cfg.nudges.family_odds_ratio) == len(NUDGE_FAMILIES)
    # every assignment line carrying a number has a comment, or the comment block just above it explains it
    lines = SHIPPED.read_text().splitlines()
    for i, line in enumerate(lines):
        code = line.split("#")[0]
        if "=" in code and any(ch.isdigit() for ch in code.split("=", 1)[1]):
            assert "#" in line or lines[i - 1].lstrip().startswith("#"), f"line {i + 1} has no comment: {line}"


def _set(path: str, value):
    def edit(d: dict) -> None:
        node = d
        keys = path.split(".")
        for k in keys[:-1]:
            node = node[int(k)] if isinstance(node, list) else node[k]
        if value is _DELETE:
            del node[keys[-1]]
        else:
            node[keys[-1]] = value
    return edit


_DELETE = object()


@pytest.mark.parametrize("path, value, message", [
    ("population.sizee", 3, "population.sizee: unknown key"),
    ("population.size", 0, "population.size: must be an int >= 1, got 0"),
    ("population.response_features", ["age_band", "duration"], "population.response_features[1]: unknown feature"),
    ("population.age_bands", [30, 25], "population.age_bands: must increase"),
    ("population.reference_product", "gold_bars", "population.reference_product: 'gold_bars' is not a product id"),
    ("products.2.odds_ratio", {"student": 1.0}, "products[2] ('credit_card').odds_ratio: is missing segment"),
    ("products.2.odds_ratio", {"student": 1.0, "martian": 2.0}, "products[2] ('credit_card').odds_ratio.martian"),
    ("products.1.odds_ratio.retiree", -1,
     "products[1] ('savings_account').odds_ratio.retiree: must be a number in (0, 1000], got -1"),
    ("products.0.odds_ratio", 1.5, "products[0] ('term_deposit').odds_ratio: the reference product"),
    ("products.3.held_if", "car", "products[3] ('personal_loan').held_if: must be one of"),
    ("products.1.colour", "red", "products[1].colour: unknown key"),
    ("nudges.odds_ratio.magic", 2.0, "nudges.odds_ratio.magic: unknown family"),
    ("nudges.odds_ratio.social_appeal", _DELETE, "nudges.odds_ratio: is missing family 'social_appeal'"),
    ("nudges.repeat_decay", 1.5, "nudges.repeat_decay: must be a number in [0, 1], got"),
    ("nudges.forbid.boats", ["urgency"], "nudges.forbid.boats: unknown product category"),
    ("funnel.like_if_purchase", 2.0, "funnel.like_if_purchase: must be a number in [0, 1], got"),
    ("funnel.gap_seconds", "soon", "funnel.gap_seconds: must be float"),
    ("campaign.policy", "psychic", "campaign.policy: must be one of random, rules"),
    ("campaign.contact_odds_ratio", 0, "campaign.contact_odds_ratio: must be a number in (0, 10], got 0"),
    ("rules.student", _DELETE, "rules: is missing segment 'student'"),
    ("rules.student.products", ["gold_bars"], "rules.student.products[0]: unknown product 'gold_bars'"),
    ("segments.5.jobs", ["student"], "segments[5]: the last rule must match everyone"),
    ("segments.0.colour", "red", "segments[0].colour: unknown key"),
])
def test_config_errors_name_the_key(path, value, message):
    d = shipped_dict()
    _set(path, value)(d)
    with pytest.raises(SimConfigError) as e:
        sim_config_from_dict(d, "bad.toml")
    assert str(e.value).startswith("bad.toml: ") and message in str(e.value)


@pytest.mark.parametrize("path, value, message", [
    ("nudges.arm_odds_ratio.telepathy", 1.2, "nudges.arm_odds_ratio.telepathy: unknown arm"),
    ("nudges.forbid.loan", ["telepathy"], "nudges.forbid.loan[0]: unknown arm 'telepathy'"),
    ("rules.student.nudge", "telepathy", "rules.student.nudge: unknown arm 'telepathy'"),
    ("rules.young_professional.products", ["personal_loan"], "rules.young_professional: nudge 'social_proof'"),
])
def test_config_errors_against_the_catalogue_name_the_key(uci_file, path, value, message):
    edit = _set(path, value)
    if path.startswith("rules.young_professional"):
        def edit(d):   # social proof is fine with a loan; forbid it to provoke the rule check
            d["nudges"]["forbid"]["loan"] = ["social_proof"]
            d["rules"]["young_professional"]["products"] = value
    with pytest.raises(SimConfigError, match="test.toml: ") as e:
        make_sim(uci_file, edit=edit)
    assert message in str(e.value)


def test_toml_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "broken.toml"
    bad.write_text("[population\nsize = 3\n")
    with pytest.raises(SimConfigError, match="broken.toml: not valid TOML"):
        load_sim_config(bad)
    with pytest.raises(SimConfigError, match="no such config file"):
        load_sim_config(tmp_path / "absent.toml")


# ------------------------------------------------------------------------------------------ calibration


def test_duration_is_never_read(tmp_path):
    assert "duration" not in READ_COLUMNS and "duration" not in CUSTOMER_COLUMNS
    assert READ_COLUMNS == (*CUSTOMER_COLUMNS, "y")
    leak = read_uci(fake_uci(tmp_path / "leak.csv", duration="leak"))
    assert set(leak.columns) == set(CUSTOMER_COLUMNS)
    # the same rows with duration leaking the label, shuffled, unparsable or absent: identical simulators
    sims = [make_sim(fake_uci(tmp_path / f"{kind}-{present}.csv", duration=kind, with_duration=present), size=500)
            for kind, present in (("leak", True), ("shuffle", True), ("text", True), ("leak", False))]
    for other in sims[1:]:
        assert np.array_equal(other.population.base_logit, sims[0].population.base_logit)
        assert other.customers().equals(sims[0].customers())


def test_fit_reproduces_every_level_rate(uci_file):
    """The additive logit's score equations: with a negligible ridge, fitted rates equal observed per level."""
    s = make_sim(uci_file, size=500, edit=_set("population.ridge", 1e-8))
    rows = s.calibration()
    assert {r.feature for r in rows} == {"overall", "age_band", "job", "poutcome", "month"}
    for r in rows:
        assert r.model_rate == pytest.approx(r.uci_rate, abs=1e-6), (r.feature, r.level)


def test_taste_offset_keeps_the_calibrated_rate(uci_file):
    """With tastes, each customer's expected base probability (over tastes) is still the fitted one."""
    from seqrec.campaign.population import sigmoid, taste_offset

    x = np.linspace(-5, 3, 9)
    d = taste_offset(x, 1.0)
    z = np.random.default_rng(0).standard_normal(400_000)
    for xi, di in zip(x, d):
        assert sigmoid(xi + di + z).mean() == pytest.approx(sigmoid(xi), abs=3e-3)


def test_calibration_reproduces_uci_rates(shared_file):
    """On the real file: overall, age band, job, poutcome and month rates, UCI against the simulated customers."""
    path = shared_file("uci_bank_marketing", "bank-additional-full.csv")
    d = shipped_dict()
    d["population"].update(calibration=str(path))
    s = Simulator(sim_config_from_dict(d, "shipped"))
    assert s.population.size == 41188
    rows = s.calibration()
    overall = rows[0]
    assert overall.uci_rate == pytest.approx(0.1127, abs=5e-4)
    assert overall.simulated_rate == pytest.approx(overall.uci_rate, abs=2e-3)
    for r in rows[1:]:
        # ridge shrinkage (<= 0.5 point) plus 4 standard errors of the tastes' noise (sd <= taste_sd / 4 a customer)
        tol = 0.005 + 4 * (s.config.population.taste_sd / 4) / np.sqrt(r.customers)
        assert abs(r.model_rate - r.uci_rate) <= 0.005, (r.feature, r.level)
        assert abs(r.simulated_rate - r.uci_rate) <= tol, (r.feature, r.level, r.simulated_rate, r.uci_rate)


def test_missing_calibration_file_is_one_clear_error(tmp_path):
    d = shipped_dict()
    d["population"]["calibration"] = str(tmp_path / "nowhere.csv")
    with pytest.raises(CalibrationError, match="nowhere.csv: calibration file not found"):
        Simulator(sim_config_from_dict(d))
    bad = tmp_path / "bad.csv"
    bad.write_text('"age";"job"\n30;"admin."\n')
    with pytest.raises(CalibrationError, match="lacks column"):
        read_uci(bad)


# ------------------------------------------------------------------------------------ response model


def _contacts(sim: Simulator, n: int, seed: int = 0) -> Contacts:
    """n contacts of random customers in varied states: held products, earlier nudges and contacts."""
    rng = np.random.default_rng(seed)
    base = sim.initial_contacts(rng.integers(0, sim.population.size, n))
    return Contacts(base.customer, rng.integers(0, 3, n), base.time_us, rng.random(base.held.shape) < 0.2,
                    rng.integers(0, 3, base.shown.shape), base.history)


def test_exact_purchase_probability_matches_monte_carlo(sim):
    contacts = _contacts(sim, 12)
    rng = np.random.default_rng(1)
    product = rng.integers(0, sim.n_products, 12)
    nudge = np.array([rng.choice(np.flatnonzero(sim.nudge_mask[p])) for p in product])
    nudge[:3] = -1                                                        # some without a nudge
    q = sim.purchase_probability(contacts, product, nudge)
    reps = 4000
    rows = np.repeat(np.arange(12), reps)
    res = sim.respond(contacts.take(rows), Decisions.fixed(product[rows], nudge[rows]), np.random.default_rng(2))
    freq = res.purchased.reshape(12, reps).mean(axis=1)
    se = np.sqrt(np.maximum(q * (1 - q), 1e-4) / reps)
    assert np.all(np.abs(freq - q) <= 4 * se), (freq, q)
    assert np.all(freq[np.asarray(contacts.held[np.arange(12), product])] == 0)   # held products are never bought
    # expected_rewards is the same function on every (product, nudge) cell
    full = sim.expected_rewards(contacts)
    assert np.allclose(full[np.arange(12)[3:], product[3:], nudge[3:]], q[3:])


def test_nudge_effects_follow_the_config(sim):
    """First showing: the logit moves by exactly log(family OR x arm OR) of the segment; repeats decay it."""
    cfg = sim.config
    contacts = sim.initial_contacts(np.arange(sim.population.size))
    contacts = dataclasses.replace(contacts, held=np.zeros_like(contacts.held))
    n, ref = len(contacts), sim.reference
    none = sim.purchase_probability(contacts, np.full(n, ref), np.full(n, -1))
    seg = sim.population.segment
    arm_or = dict(cfg.nudges.arm_odds_ratio)
    for a, arm in enumerate(sim.arms):
        q = sim.purchase_probability(contacts, np.full(n, ref), np.full(n, a))
        family = NUDGE_FAMILIES.index(sim.catalogue.family_of(arm))
        odds_ratio = np.array(cfg.nudges.family_odds_ratio[family])[seg] * arm_or.get(arm, 1.0)
        got = (q / (1 - q)) / (none / (1 - none))
        assert np.allclose(got, odds_ratio), arm
        assert np.all(np.sign(q - none) == np.sign(odds_ratio - 1))
        shown = contacts.shown.copy()
        shown[:, family] = 2
        q2 = sim.purchase_probability(dataclasses.replace(contacts, shown=shown), np.full(n, ref), np.full(n, a))
        assert np.allclose((q2 / (1 - q2)) / (none / (1 - none)), odds_ratio ** (cfg.nudges.repeat_decay ** 2))


def test_nudge_lifts_change_sampled_purchase_rates(uci_file):
    """A family with odds ratio 3 raises the sampled purchase rate, one with 1/3 lowers it (same customers)."""
    def edit(d):
        d["nudges"]["odds_ratio"]["social_appeal"] = 3.0
        d["nudges"]["odds_ratio"]["decision_information"] = 1 / 3
        d["nudges"]["arm_odds_ratio"] = {}
    s = make_sim(uci_file, size=3000, edit=edit)
    contacts = s.initial_contacts(np.arange(3000))
    p = np.full(3000, s.reference)
    rates = {}
    for name, arm in (("none", None), ("social", "social_proof"), ("framing", "gain_framing")):
        res = s.respond(contacts, Decisions.fixed(p, np.repeat(s.nudge_index(arm), 3000)), np.random.default_rng(5))
        rates[name] = res.purchased.mean()
    assert rates["social"] > rates["none"] + 0.05 and rates["framing"] < rates["none"] - 0.03, rates


def test_products_held_and_fatigue(sim):
    contacts = sim.initial_contacts(np.arange(200))
    n = len(contacts)
    p = np.full(n, sim.reference)
    first = sim.purchase_probability(contacts, p, np.full(n, -1))
    later = sim.purchase_probability(dataclasses.replace(contacts, previous_contacts=np.full(n, 2)), p, np.full(n, -1))
    ratio = (later / (1 - later)) / (first / (1 - first))
    assert np.allclose(ratio, sim.config.campaign.contact_odds_ratio ** 2)
    mortgage = sim.product_index("mortgage")[0]
    holds = sim.population.columns["housing"][:200] == "yes"
    q = sim.purchase_probability(contacts, np.full(n, mortgage), np.full(n, -1))
    assert holds.any() and np.all(q[holds] == 0) and np.all(q[~holds] > 0)


# -------------------------------------------------------------------------------------------- campaigns


def test_deterministic_per_seed(uci_file):
    a, b, c = make_sim(uci_file, 800), make_sim(uci_file, 800), make_sim(uci_file, 800, seed=1)
    assert a.customers().equals(b.customers()) and not a.customers().equals(c.customers())
    log_a = a.run_policy(RandomPolicy(a), 1200, np.random.default_rng(3))
    log_b = b.run_policy(RandomPolicy(b), 1200, np.random.default_rng(3))
    log_c = a.run_policy(RandomPolicy(a), 1200, np.random.default_rng(4))
    assert log_a.events.equals(log_b.events) and not log_a.events.equals(log_c.events)


def test_policies_share_schedule_and_random_numbers(sim):
    """Same seed, different policies: the same customers at the same times (common random numbers)."""
    rand = sim.run_policy(RandomPolicy(sim), 1500, np.random.default_rng(7))
    rules = sim.run_policy(RulePolicy(sim), 1500, np.random.default_rng(7))
    assert np.array_equal(rand.contacts.customer, rules.contacts.customer)
    assert np.array_equal(rand.contacts.time_us, rules.contacts.time_us)


def test_logged_propensities_are_the_policys_probabilities(sim):
    for policy in (RandomPolicy(sim), RulePolicy(sim, epsilon=0.3), RulePolicy(sim)):
        log = sim.run_policy(policy, 1000, np.random.default_rng(0), batch_size=128)
        pi = policy.probabilities(log.contacts)                        # stateless policies: same probabilities
        rows = np.arange(len(pi))
        d = log.decisions
        assert np.all(pi[rows, d.product, d.nudge] > 0)
        assert np.allclose(d.product_propensity, pi[rows, d.product].sum(axis=1))
        assert np.allclose(d.propensity, pi[rows, d.product, d.nudge] / d.product_propensity)
        offers = log.events.filter(pa.compute.equal(log.events["nudge_id"].is_valid(), True))
        assert offers.num_rows == len(d.product)
        logged = offers.sort_by("session_id")
        assert np.allclose(logged["propensity"].to_numpy(), d.propensity)
        assert logged["nudge_id"].to_pylist() == [sim.arms[a] for a in d.nudge]
        assert logged["item_id"].to_pylist() == [sim.product_ids[p] for p in d.product]
        assert sim.nudge_mask[d.product, d.nudge].all()                 # forbidden nudges never shown
    assert np.all(log.decisions.propensity == 1.0)                     # the deterministic rules


class _Recording:
    """Wraps a policy and keeps the probabilities it gave at every decision (for an adaptive policy)."""

    def __init__(self, inner):
        self.inner, self.seen = inner, []

    def probabilities(self, contacts):
        p = self.inner.probabilities(contacts)
        self.seen.append(p)
        return p

    def update(self, contacts, decisions, purchased):
        self.inner.update(contacts, decisions, purchased)


@pytest.mark.parametrize("kind", ["epsilon_greedy", "linucb"])
def test_bandit_nudge_policy_learns_online_and_logs_its_propensities(sim, kind):
    dim = len(sim.context_feature_names())
    bandit = BanditConfig(kind=kind, epsilon=0.2, seed=0).create(sim.arms, dim=dim)
    policy = _Recording(BanditNudgePolicy(sim, RulePolicy(sim), bandit))
    log = sim.run_policy(policy, 1500, np.random.default_rng(0), batch_size=250)
    assert bandit.updates == 1500
    pi = np.concatenate(policy.seen)
    rows, d = np.arange(1500), log.decisions
    assert np.allclose(d.propensity, pi[rows, d.product, d.nudge] / pi[rows, d.product].sum(axis=1))
    assert sim.context_features(log.contacts).shape == (1500, dim)


def test_true_value_is_the_expected_purchase_rate(sim):
    policy = RandomPolicy(sim)
    log = sim.run_policy(policy, 2000, np.random.default_rng(11))
    truth = sim.true_value(policy, log.contacts)
    assert truth == pytest.approx(log.probability.mean(), abs=0.01)   # the draws' exact mean is near the value
    se = np.sqrt(truth * (1 - truth) / 2000)
    assert abs(log.purchased.mean() - truth) < 4 * se
    rules = RulePolicy(sim)                                             # deterministic: the value of its one offer
    flat = np.argmax(rules.probabilities(log.contacts).reshape(2000, -1), axis=1)
    q = sim.expected_rewards(log.contacts)[np.arange(2000), flat // sim.n_arms, flat % sim.n_arms]
    assert sim.true_value(rules, log.contacts) == pytest.approx(q.mean())


def test_campaign_state_waves_and_sessions(sim):
    n = sim.population.size
    log = sim.run_policy(RandomPolicy(sim), 2 * n + 100, np.random.default_rng(0))
    c = log.contacts
    assert np.bincount(c.previous_contacts).tolist() == [n, n, 100]
    years = c.time_us.astype("datetime64[us]").astype("datetime64[Y]").astype(int) + 1970
    months = c.time_us.astype("datetime64[us]").astype("datetime64[M]").astype(int) % 12 + 1
    assert np.array_equal(years - sim.config.campaign.start_year, c.previous_contacts)
    assert np.array_equal(months, sim.population.month[c.customer])
    assert np.all(np.diff(c.time_us) >= 0)                              # decisions in time order
    # nobody buys what they hold: after a purchase the product is held at the customer's later contacts
    rows = np.arange(len(c))
    assert not (log.purchased & c.held[rows, log.decisions.product]).any()
    for i in np.flatnonzero(log.purchased)[:100]:
        later = (c.customer == c.customer[i]) & (rows > i)
        assert np.all(c.held[later, log.decisions.product[i]])
    ev = log.events.to_pandas()
    assert ev.groupby("session_id").user_id.nunique().max() == 1
    assert ev.session_id.nunique() == len(c)
    first = ev.groupby("session_id").head(1)
    assert first.nudge_id.notna().all() and (first.event_type == "view").all()
    assert ev.nudge_id.notna().sum() == len(c)
    purchases = ev[ev.event_type == "purchase"]
    assert len(purchases) == log.purchased.sum()
    carts = ev[ev.event_type == "cart"].set_index("session_id").item_id
    assert (purchases.set_index("session_id").item_id == carts.reindex(purchases.session_id)).all()
    assert ev.duplicated(["user_id", "item_id", "event_type", "timestamp"]).sum() == 0
    with pytest.raises(ValueError, match="contact budget must be an integer in"):
        sim.schedule(6 * n, np.random.default_rng(0))


def test_policy_errors_name_the_policy(sim):
    class Wrong:
        def probabilities(self, contacts):
            return np.ones((len(contacts), 2))

    class Forbidden:
        def probabilities(self, contacts):
            pi = np.zeros((len(contacts), sim.n_products, sim.n_arms))
            loan = sim.product_index("personal_loan")[0]
            pi[:, loan, sim.arms.index("urgency")] = 1.0                 # forbidden on loans in the shipped config
            return pi

    with pytest.raises(PolicyError, match="Wrong.probabilities returned shape"):
        sim.run_policy(Wrong(), 10, np.random.default_rng(0))
    with pytest.raises(PolicyError, match="Forbidden.probabilities: mass on a nudge not allowed"):
        sim.run_policy(Forbidden(), 10, np.random.default_rng(0))


def test_simulate_command_writes_a_log_prepare_reads_unchanged(uci_file, tmp_path, capsys):
    cfg = tmp_path / "sim.toml"
    cfg.write_text(SHIPPED.read_text().replace("size = 41188", "size = 600"))
    out = tmp_path / "sim.parquet"
    assert main(["simulate", "--config", str(cfg), "--out", str(out), "--calibration", str(uci_file),
                 "--policy", "rules", "--epsilon", "0.2", "--contacts", "900", "--calibration-table"]) == 0
    printed = capsys.readouterr().out
    assert "simulated 900 contacts of 600 customers (policy rules)" in printed and "| overall | all |" in printed
    table = pq.read_table(out)
    meta = json.loads(table.schema.metadata[b"seqrec_simulator"])
    assert meta["policy"] == "rules" and meta["config"]["population"]["size"] == 600
    assert {"user_id", "session_id", "item_id", "event_type", "timestamp", "nudge_id", "propensity", "value",
            "segment", "age_band", "job"} <= set(table.column_names)
    assert main(["prepare", "--input", str(out), "--out", str(tmp_path / "prep"), "--min-session-length", "1"]) == 0
    manifest = json.loads((tmp_path / "prep" / "manifest.json").read_text())
    assert manifest["rows_quarantined"] == 0
    assert manifest["rows_kept"] == manifest["rows_read"] == table.num_rows
    assert manifest["sessions"]["after_filter"] == 900
    assert main(["simulate", "--config", str(cfg), "--out", str(tmp_path / "x.csv")]) == 2
    assert main(["simulate", "--config", str(cfg), "--out", str(out), "--calibration",
                 str(tmp_path / "missing.csv")]) == 2
    assert "calibration file not found" in capsys.readouterr().err


def test_same_config_same_output_file(uci_file, tmp_path):
    cfg = tmp_path / "sim.toml"
    cfg.write_text(SHIPPED.read_text().replace("size = 41188", "size = 300"))
    outs = []
    for i in range(2):
        out = tmp_path / f"s{i}.parquet"
        main(["simulate", "--config", str(cfg), "--out", str(out), "--calibration", str(uci_file), "--seed", "4"])
        outs.append(pq.read_table(out))
    assert outs[0].equals(outs[1])


def test_nudge_log_feeds_off_policy_evaluation_with_a_known_truth(sim):
    """IPS on a random logger's nudge decisions lands near the exact value of always showing social proof."""
    from seqrec.rl.ope.estimators import IPS, OpeConfig

    log = sim.run_policy(RandomPolicy(sim), sim.population.size, np.random.default_rng(2))
    bandit_log = sim.nudge_log(log, context=True)
    assert bandit_log.n == len(log.purchased) and bandit_log.context.shape[1] == len(sim.context_feature_names())
    arm = sim.arms.index("social_proof")                               # allowed with every product
    target = np.zeros((bandit_log.n, sim.n_arms))
    target[:, arm] = 1.0
    truth = sim.nudge_rewards(log.contacts, log.decisions.product)[:, arm].mean()
    est = IPS(config=OpeConfig(resamples=300, seed=0)).estimate(bandit_log, target)
    assert abs(est.value - truth) < 4 * est.std_error, (est.value, truth, est.std_error)


def test_population_size_is_validated(uci_file, tmp_path, capsys):
    cfg = tmp_path / "sim.toml"
    cfg.write_text(SHIPPED.read_text().replace("size = 41188", "size = 300"))
    assert main(["simulate", "--config", str(cfg), "--out", str(tmp_path / "a.parquet"), "--calibration",
                 str(uci_file), "--customers", "0"]) == 2
    assert "population.size: must be an int >= 1, got 0" in capsys.readouterr().err
