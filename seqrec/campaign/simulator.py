"""Campaign simulator: bank customers, financial products and nudges; SDK-style event logs with propensities.

The world (shapes: C customers, P products, A nudge arms, F nudge families, S segments, B contacts, W window):

- customers are rows of UCI Bank Marketing with a base response fitted on it (seqrec/sim_population.py);
- a contact offers one product with one nudge (or none). The customer buys it with probability
  q = sigmoid(base + offset + log OR_product[segment] + taste[product]
              + (log OR_family[segment] + log OR_arm) * repeat_decay^(earlier showings of the family)
              + earlier contacts * log contact_odds_ratio),
  and q = 0 for a product the customer already holds. `purchase_probability` and `expected_rewards` compute q
  exactly, so a policy's true value is known (`true_value`), not only sampled;
- one contact is one session of events: a view of the offered product carrying the nudge and its propensity,
  maybe a like, then views of other products the customer browses (drawn by segment appeal and own taste, so
  history reveals taste), then a cart (every buyer starts an application; some non-buyers too) and the purchase.

`run_policy` runs a campaign: a contact schedule (each customer in their UCI contact month, one wave per year,
the same for every policy given the seed), decisions drawn from a policy's joint probabilities over (product,
nudge) in batches, responses from the model (the same random numbers for every policy: common random numbers),
the policy's `update` after each batch, and the customers' state (held products, nudges seen, history). The log
it returns passes `seqrec prepare` unchanged.

The records it passes around (Contacts, Decisions, Response, CampaignLog, the Policy protocol) are in
seqrec/campaign/records.py; the built-in policies (random, rules, bandit nudges) in seqrec/campaign/policies.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

import numpy as np
import pyarrow as pa

from seqrec.campaign.config import SimConfig, SimConfigError
from seqrec.campaign.population import (
    CalibrationRow,
    Population,
    ResponseModel,
    UciData,
    age_bands,
    calibration_markdown,
    calibration_path,
    calibration_rows,
    draw_population,
    fit_response_model,
    read_uci,
    sigmoid,
)
from seqrec.campaign.records import CampaignLog, Contacts, Decisions, Policy, PolicyError, Response
from seqrec.datasets.schema import CART, EVENT_TYPES, LIKE, PURCHASE, TIMESTAMP_TYPE, VIEW
from seqrec.datasets.synthetic import NUDGE_FAMILIES
from seqrec.nudging.catalogue import NudgeCatalogue, load_catalogue

US = 1_000_000
DAY_START_S, DAY_LENGTH_S = 8 * 3600, 12 * 3600   # contacts happen between 08:00 and 20:00 UTC
FEATURE_COLUMNS: tuple[str, ...] = ("segment", "age_band", "job", "marital", "education", "housing", "loan",
                                    "poutcome", "month")   # customer features written on every event row
PROBABILITY_TOLERANCE = 1e-6


# ------------------------------------------------------------------------------------------ the simulator


class Simulator:
    """The calibrated population and the response model, with a campaign runner (see the module docstring)."""

    def __init__(self, cfg: SimConfig, calibration: str | Path | None = None,
                 catalogue: NudgeCatalogue | None = None, uci: UciData | None = None) -> None:
        """Build from a config; `calibration` overrides the UCI file path, `uci` gives the rows directly."""
        self.config = cfg
        if catalogue is None:
            path = cfg.nudges.catalogue
            if path and not Path(path).is_absolute():
                path = str(Path(cfg.base_dir) / path)
            catalogue = load_catalogue(path or None)
        self.catalogue = catalogue
        self.segment_names = cfg.segment_names
        self.product_ids = cfg.product_ids
        self.arms = catalogue.ids
        self._check_names()
        self.uci = uci if uci is not None else read_uci(calibration_path(cfg, calibration))
        self.model: ResponseModel = fit_response_model(
            {**self.uci.columns, "age_band": _bands(self.uci, cfg)}, self.uci.label,
            cfg.population.response_features, cfg.population.ridge)
        self.population: Population = draw_population(cfg, self.uci, self.model)
        self.reference = self.product_ids.index(cfg.population.reference_product)
        self.product_category = tuple(p.category for p in cfg.products)
        self.product_log_odds = np.log(np.array([p.odds_ratio for p in cfg.products])).T   # (S, P)
        self.arm_family = np.array([NUDGE_FAMILIES.index(catalogue.family_of(a)) for a in self.arms])  # (A,)
        family = np.log(np.array(cfg.nudges.family_odds_ratio))                                       # (F, S)
        arm_or = dict(cfg.nudges.arm_odds_ratio)
        self.nudge_log_odds = family[self.arm_family].T + np.log([arm_or.get(a, 1.0) for a in self.arms])  # (S, A)
        forbid = dict(cfg.nudges.forbid)
        self.nudge_mask = np.stack([catalogue.mask(p.id, p.category) & ~np.isin(self.arms, forbid.get(p.category, ()))
                                    for p in cfg.products])                                           # (P, A)
        for j, pid in enumerate(self.product_ids):
            if not self.nudge_mask[j].any():
                raise SimConfigError(f"{cfg.source}: nudges.forbid leaves no nudge for product {pid!r}")
        self._check_rules()

    def _check_names(self) -> None:
        """Arm ids named in the config must exist in the catalogue (error naming the key)."""
        src = self.config.source
        for arm, _ in self.config.nudges.arm_odds_ratio:
            if arm not in self.arms:
                raise SimConfigError(f"{src}: nudges.arm_odds_ratio.{arm}: unknown arm; arms: {', '.join(self.arms)}")
        for cat, arms in self.config.nudges.forbid:
            for i, arm in enumerate(arms):
                if arm not in self.arms:
                    raise SimConfigError(f"{src}: nudges.forbid.{cat}[{i}]: unknown arm {arm!r}; arms: "
                                         f"{', '.join(self.arms)}")

    def _check_rules(self) -> None:
        src = self.config.source
        for rule in self.config.rules:
            if rule.nudge not in self.arms:
                raise SimConfigError(f"{src}: rules.{rule.segment}.nudge: unknown arm {rule.nudge!r}; arms: "
                                     f"{', '.join(self.arms)}")
            for pid in rule.products:
                j = self.product_ids.index(pid)
                if not self.nudge_mask[j, self.arms.index(rule.nudge)]:
                    raise SimConfigError(f"{src}: rules.{rule.segment}: nudge {rule.nudge!r} is not allowed with "
                                         f"product {pid!r} (category {self.product_category[j]!r})")

    # ---------------------------------------------------------------------------------------- sizes, lookups
    @property
    def n_products(self) -> int:
        return len(self.product_ids)

    @property
    def n_arms(self) -> int:
        return len(self.arms)

    def product_index(self, ids: Sequence[str] | str) -> np.ndarray:
        """Product indices of product ids (ValueError naming an unknown one)."""
        ids = [ids] if isinstance(ids, str) else list(ids)
        unknown = [i for i in ids if i not in self.product_ids]
        if unknown:
            raise ValueError(f"unknown product {unknown[0]!r}; products: {', '.join(self.product_ids)}")
        return np.array([self.product_ids.index(i) for i in ids], dtype=np.int64)

    def nudge_index(self, ids: Sequence[str | None] | str | None) -> np.ndarray:
        """Arm indices of nudge ids; None means no nudge (-1)."""
        ids = [ids] if ids is None or isinstance(ids, str) else list(ids)
        unknown = [i for i in ids if i is not None and i not in self.arms]
        if unknown:
            raise ValueError(f"unknown nudge {unknown[0]!r}; arms: {', '.join(self.arms)}")
        return np.array([-1 if i is None else self.arms.index(i) for i in ids], dtype=np.int64)

    def customers(self) -> pa.Table:
        """One row per customer: id, segment, features, exact base purchase probability, source row in the file."""
        pop = self.population
        cols = {"customer_id": np.arange(pop.size), "segment": np.asarray(self.segment_names)[pop.segment]}
        cols.update({k: np.asarray(v) for k, v in pop.columns.items()})
        cols["base_probability"] = self.base_probability()
        cols["uci_row"] = pop.uci_row
        return pa.table({k: (v.astype(str) if v.dtype == object else v) for k, v in cols.items()})

    # --------------------------------------------------------------------------------------- response model
    def initial_contacts(self, customers: np.ndarray, time_us: np.ndarray | int = 0) -> Contacts:
        """Contacts of `customers` in their state before the campaign (no contacts, nudges or history yet)."""
        c = np.asarray(customers, dtype=np.int64)
        if c.ndim != 1 or (len(c) and (c.min() < 0 or c.max() >= self.population.size)):
            raise ValueError(f"customers must be indices in [0, {self.population.size}); got {customers!r}")
        b = len(c)
        return Contacts(c, np.zeros(b, np.int64), np.broadcast_to(np.asarray(time_us, np.int64), (b,)).copy(),
                        self.population.held[c].copy(), np.zeros((b, len(NUDGE_FAMILIES)), np.int64),
                        np.full((b, self.config.campaign.history_window), -1, np.int64))

    def _customer_logit(self, contacts: Contacts) -> np.ndarray:
        """(B,) the part of the logit shared by every offer: calibrated base, offset, contact fatigue."""
        pop, c = self.population, contacts.customer
        fatigue = np.log(self.config.campaign.contact_odds_ratio) * contacts.previous_contacts
        return pop.base_logit[c] + pop.offset[c] + fatigue

    def _nudge_term(self, contacts: Contacts) -> np.ndarray:
        """(B, A) log-odds effect of each arm, worn out by earlier showings of its family."""
        seg = self.population.segment[contacts.customer]
        decay = self.config.nudges.repeat_decay ** contacts.shown[:, self.arm_family]
        return self.nudge_log_odds[seg] * decay

    def expected_rewards(self, contacts: Contacts) -> np.ndarray:
        """(B, P, A) exact purchase probability of every (product, nudge) offer for every contact."""
        seg, c = self.population.segment[contacts.customer], contacts.customer
        prod = self.product_log_odds[seg] + self.population.taste[c]                    # (B, P)
        logit = self._customer_logit(contacts)[:, None, None] + prod[:, :, None] + self._nudge_term(contacts)[:, None]
        return sigmoid(logit) * ~contacts.held[:, :, None]

    def purchase_probability(self, contacts: Contacts, product: np.ndarray, nudge: np.ndarray) -> np.ndarray:
        """(B,) exact probability that each contact buys `product` (B,) offered with `nudge` (B,; -1 = none)."""
        p, a = np.asarray(product, dtype=np.int64), np.asarray(nudge, dtype=np.int64)
        rows, c = np.arange(len(contacts)), contacts.customer
        if p.shape != (len(contacts),) or a.shape != (len(contacts),):
            raise ValueError(f"product and nudge must have shape ({len(contacts)},); got {p.shape}, {a.shape}")
        if (p < 0).any() or (p >= self.n_products).any() or (a < -1).any() or (a >= self.n_arms).any():
            raise ValueError(f"product indices must lie in [0, {self.n_products}), nudges in [-1, {self.n_arms})")
        seg = self.population.segment[c]
        nudge_term = np.where(a >= 0, self._nudge_term(contacts)[rows, np.maximum(a, 0)], 0.0)
        logit = (self._customer_logit(contacts) + self.product_log_odds[seg, p] + self.population.taste[c, p]
                 + nudge_term)
        return sigmoid(logit) * ~contacts.held[rows, p]

    def base_probability(self) -> np.ndarray:
        """(C,) exact probability of buying the reference product offered without a nudge at the first contact."""
        contacts = self.initial_contacts(np.arange(self.population.size))
        contacts = Contacts(contacts.customer, contacts.previous_contacts, contacts.time_us,
                            np.zeros_like(contacts.held), contacts.shown, contacts.history)
        b = len(contacts)
        return self.purchase_probability(contacts, np.full(b, self.reference), np.full(b, -1))

    def true_value(self, policy: Policy, contacts: Contacts) -> float:
        """Exact expected purchases per contact if `policy` (in its current state) decided for `contacts`."""
        pi = self.check_probabilities(policy, contacts)
        return float((pi * self.expected_rewards(contacts)).sum(axis=(1, 2)).mean())

    def nudge_rewards(self, contacts: Contacts, products: np.ndarray) -> np.ndarray:
        """(B, A) exact purchase probability of every nudge with the product offered to each contact: the truth
        for a nudge policy evaluated on a log, value = mean over rows of sum_a pi(a | row) * nudge_rewards[row, a]."""
        rows = np.arange(len(contacts))
        return self.expected_rewards(contacts)[rows, np.asarray(products, dtype=np.int64)]

    def nudge_log(self, log: CampaignLog, context: bool = False):
        """The campaign's nudge decisions as a `seqrec.rl.ope.data.LoggedBandit`: action = arm, reward = purchase,
        propensity = P(nudge | context, product), available = the arms allowed with the offered product, and with
        `context` the `context_features` of each contact (what a contextual target policy sees)."""
        from seqrec.rl.ope.data import LoggedBandit

        d = log.decisions
        if (d.nudge < 0).any() or np.isnan(d.propensity).any():
            raise ValueError("the log has contacts without a nudge or a propensity: not a policy's log")
        return LoggedBandit(d.nudge, log.purchased.astype(np.float64), d.propensity, n_actions=self.n_arms,
                            context=self.context_features(log.contacts) if context else None,
                            available=self.nudge_mask[d.product], source="simulator")

    def calibration(self) -> list[CalibrationRow]:
        """Overall and per-group response: UCI file, fitted model, simulated customers (exact base probability)."""
        return calibration_rows(self.uci, self.model, self.population, self.base_probability(),
                                self.config.population.age_bands)

    def calibration_table(self) -> str:
        return calibration_markdown(self.calibration())

    def context_features(self, contacts: Contacts) -> np.ndarray:
        """(B, d) float context for contextual bandits: bias, one-hot segment, age band and previous outcome,
        held products, and earlier contacts / max contacts (names: `context_feature_names`)."""
        pop, c = self.population, contacts.customer
        parts = [np.ones((len(contacts), 1)), np.eye(len(self.segment_names))[pop.segment[c]]]
        for f in ("age_band", "poutcome"):
            levels = self._levels(f)
            parts.append((np.asarray(pop.columns[f])[c][:, None] == np.asarray(levels, dtype=object)).astype(float))
        parts += [contacts.held.astype(float),
                  (contacts.previous_contacts / self.config.campaign.max_contacts_per_customer)[:, None]]
        return np.concatenate(parts, axis=1)

    def context_feature_names(self) -> tuple[str, ...]:
        return ("bias", *(f"segment={s}" for s in self.segment_names),
                *(f"age_band={v}" for v in self._levels("age_band")),
                *(f"poutcome={v}" for v in self._levels("poutcome")),
                *(f"held={p}" for p in self.product_ids), "previous_contacts")

    def _levels(self, feature: str) -> tuple[str, ...]:
        return tuple(np.unique(np.asarray(self.uci.columns[feature] if feature != "age_band"
                                          else _bands(self.uci, self.config)).astype(str)).tolist())

    # -------------------------------------------------------------------------------------------- responses
    def respond(self, contacts: Contacts, decisions: Decisions, rng: np.random.Generator,
                first_session: int = 0) -> Response:
        """Simulate the contacts' sessions (state is not changed). Every contact draws the same amount of randomness
        whatever it is offered, so two policies run with the same seed share their random numbers."""
        f, b, n_p = self.config.funnel, len(contacts), self.n_products
        c, p, a = contacts.customer, decisions.product, decisions.nudge
        q = self.purchase_probability(contacts, p, a)
        u = rng.random((b, 3))
        n_browse = np.minimum(rng.poisson(f.browse_mean, b), n_p - 1)
        gumbel = rng.gumbel(size=(b, n_p))
        u_like = rng.random((b, n_p))
        gaps = ((1.0 + rng.exponential(f.gap_seconds, (b, 2 * n_p + 2))) * US).astype(np.int64)
        purchased = u[:, 0] < q
        liked = u[:, 1] < np.where(purchased, f.like_if_purchase, f.like_if_no_purchase)
        carted = purchased | (u[:, 2] < f.cart_if_no_purchase)
        # browsing: Gumbel-top-k = draws without replacement with probability ~ (appeal x taste)^weight
        seg = self.population.segment[c]
        score = f.browse_weight * (self.product_log_odds[seg] + self.population.taste[c]) + gumbel
        score[np.arange(b), p] = -np.inf
        ranked = np.argsort(-score, axis=1, kind="stable")[:, : n_p - 1]                     # (B, P-1)
        browsed = np.where(np.arange(n_p - 1)[None] < n_browse[:, None], ranked, -1)
        # event slots: 0 offer view, 1 offer like, 2+2k browse k view, 3+2k its like, 2P cart, 2P+1 purchase
        slots = 2 * n_p + 2
        item = np.full((b, slots), -1, np.int64)
        etype = np.full((b, slots), VIEW, np.int8)
        item[:, 0] = p
        item[:, 1] = np.where(liked, p, -1)
        etype[:, 1] = LIKE
        item[:, 2:2 * n_p:2] = browsed
        item[:, 3:2 * n_p:2] = np.where((browsed >= 0) & (u_like[:, : n_p - 1] < f.like_browsed), browsed, -1)
        etype[:, 3:2 * n_p:2] = LIKE
        item[:, 2 * n_p] = np.where(carted, p, -1)
        etype[:, 2 * n_p] = CART
        item[:, 2 * n_p + 1] = np.where(purchased, p, -1)
        etype[:, 2 * n_p + 1] = PURCHASE
        offset = np.cumsum(gaps, axis=1) - gaps[:, :1]
        events = self._events(contacts, decisions, item, etype, contacts.time_us[:, None] + offset, first_session)
        return Response(q, purchased, liked, carted, browsed, _left_align(item), events)

    def _events(self, contacts: Contacts, decisions: Decisions, item: np.ndarray, etype: np.ndarray,
                time_us: np.ndarray, first_session: int) -> pa.Table:
        """Event rows of the present slots (item >= 0), in session then time order."""
        row, slot = np.nonzero(item >= 0)
        c = contacts.customer[row]
        prod = item[row, slot]
        offer = slot == 0
        nudge = decisions.nudge[row]
        nudged = offer & (nudge >= 0)
        prop = decisions.propensity[row]
        pprop = decisions.product_propensity[row]
        cols: dict[str, pa.Array] = {
            "user_id": pa.array(c, pa.int64()),
            "session_id": pa.array(first_session + row.astype(np.int64), pa.int64()),
            "item_id": _names(self.product_ids, prod),
            "event_type": _names(EVENT_TYPES, etype[row, slot]),
            "timestamp": pa.array(time_us[row, slot], TIMESTAMP_TYPE),
            "nudge_id": _names(self.arms, pa.array(np.maximum(nudge, 0), mask=~nudged)),
            "propensity": pa.array(prop, mask=~nudged | np.isnan(prop)),
            "value": pa.array(np.array([pr.value for pr in self.config.products])[prod]),
        }
        pop = self.population
        for name in FEATURE_COLUMNS:
            values = np.asarray(self.segment_names)[pop.segment[c]] if name == "segment" else pop.columns[name][c]
            cols[name] = pa.array(np.asarray(values).astype(str), pa.string())
        cols["product_category"] = _names(self.product_category, prod)
        cols["product_propensity"] = pa.array(pprop, mask=~offer | np.isnan(pprop))
        return pa.table(cols)

    # --------------------------------------------------------------------------------------------- campaigns
    def schedule(self, budget: int, rng: np.random.Generator,
                 customers: np.ndarray | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per wave, (customer (n,), time_us (n,)) in time order: every customer once per wave (a year, each
        customer in their UCI contact month) until `budget` runs out; the last wave takes a random subset."""
        ids = np.arange(self.population.size) if customers is None else np.unique(np.asarray(customers, np.int64))
        if len(ids) == 0 or ids[0] < 0 or ids[-1] >= self.population.size:
            raise ValueError(f"customers must be a non-empty set of indices in [0, {self.population.size})")
        cap = len(ids) * self.config.campaign.max_contacts_per_customer
        if isinstance(budget, bool) or not isinstance(budget, int | np.integer) or not 1 <= budget <= cap:
            raise ValueError(f"contact budget must be an integer in [1, {cap:,}] ({len(ids):,} customers x "
                             f"campaign.max_contacts_per_customer {self.config.campaign.max_contacts_per_customer}); "
                             f"got {budget!r}")
        full, rest = divmod(int(budget), len(ids))
        waves = []
        for w in range(full + (rest > 0)):
            who = ids if w < full else np.sort(rng.choice(ids, rest, replace=False))
            t = self._contact_times(who, self.config.campaign.start_year + w, rng)
            order = np.lexsort((who, t))
            waves.append((who[order], t[order]))
        return waves

    def _contact_times(self, customers: np.ndarray, year: int, rng: np.random.Generator) -> np.ndarray:
        """(n,) a random day of each customer's contact month in `year`, between 08:00 and 20:00, in microseconds."""
        month = self.population.month[customers]
        starts = np.array([f"{year}-{m:02d}" for m in range(1, 13)] + [f"{year + 1}-01"], dtype="datetime64[M]")
        days = starts.astype("datetime64[D]").astype(np.int64)                     # (13,) days since the epoch
        length = (days[1:] - days[:-1])[month - 1]
        day = days[month - 1] + np.floor(rng.random(len(customers)) * length).astype(np.int64)
        seconds = DAY_START_S + np.floor(rng.random(len(customers)) * DAY_LENGTH_S).astype(np.int64)
        return (day * 86400 + seconds) * US

    def check_probabilities(self, policy: Policy, contacts: Contacts) -> np.ndarray:
        """The policy's (B, P, A) probabilities, checked: shape, finite, >= 0, rows sum to 1, no forbidden nudge."""
        pi = np.asarray(policy.probabilities(contacts), dtype=np.float64)
        b, name = len(contacts), type(policy).__name__
        if pi.shape != (b, self.n_products, self.n_arms):
            raise PolicyError(f"{name}.probabilities returned shape {pi.shape}; expected "
                              f"({b}, {self.n_products}, {self.n_arms}) (contacts, products, nudge arms)")
        bad = ~np.isfinite(pi).all(axis=(1, 2)) | (pi < 0).any(axis=(1, 2))
        bad_sum = np.abs(pi.sum(axis=(1, 2)) - 1.0) > PROBABILITY_TOLERANCE
        forbidden = (pi * ~self.nudge_mask).sum(axis=(1, 2)) > 1e-12
        for fault, what in ((bad, "non-finite or negative values"), (bad_sum, "probabilities not summing to 1"),
                            (forbidden, "mass on a nudge not allowed with its product (catalogue or nudges.forbid)")):
            if fault.any():
                r = int(np.argmax(fault))
                raise PolicyError(f"{name}.probabilities: {what} in row {r} (customer {contacts.customer[r]}), "
                                  f"{int(fault.sum())} bad row(s)")
        return pi

    def run_policy(self, policy: Policy, contacts: int, rng: np.random.Generator,
                   customers: np.ndarray | None = None, batch_size: int | None = None,
                   first_session: int = 0) -> CampaignLog:
        """Run a campaign of `contacts` contacts (see `schedule`) with `policy`, from the population's initial state.

        The policy decides `batch_size` contacts at a time (default campaign.batch_size), each decision drawn from its
        probabilities; after each batch its `observe(events)` sees the batch's logged events (as an SDK log would
        deliver them) and its `update(contacts, decisions, purchased)` the outcomes, for the methods it has. `rng`
        is split into three streams (schedule, decisions, responses), so policies run with equally seeded rngs meet
        the same customers at the same times with the same random numbers. Session ids count from first_session.
        """
        batch = batch_size or self.config.campaign.batch_size
        schedule_rng, decision_rng, response_rng = rng.spawn(3)
        waves = self.schedule(contacts, schedule_rng, customers)
        pop, window = self.population, self.config.campaign.history_window
        held, shown = pop.held.copy(), np.zeros((pop.size, len(NUDGE_FAMILIES)), np.int64)
        previous, history = np.zeros(pop.size, np.int64), np.full((pop.size, window), -1, np.int64)
        parts: list[tuple[Contacts, Decisions, Response]] = []
        session = first_session
        for who_all, time_all in waves:          # a customer appears at most once per wave, so once per batch
            for start in range(0, len(who_all), batch):
                who, t = who_all[start:start + batch], time_all[start:start + batch]
                ctx = Contacts(who, previous[who].copy(), t, held[who].copy(), shown[who].copy(), history[who].copy())
                dec = self._draw(policy, ctx, decision_rng)
                res = self.respond(ctx, dec, response_rng, session)
                if hasattr(policy, "observe"):
                    policy.observe(res.events)
                if hasattr(policy, "update"):
                    policy.update(ctx, dec, res.purchased)
                held[who[res.purchased], dec.product[res.purchased]] = True
                nudged = dec.nudge >= 0
                np.add.at(shown, (who[nudged], self.arm_family[dec.nudge[nudged]]), 1)
                previous[who] += 1
                history[who] = _left_align(np.concatenate([history[who], res.session_items], axis=1))[:, -window:]
                parts.append((ctx, dec, res))
                session += len(who)
        events = pa.concat_tables([r.events for _, _, r in parts])
        decisions = Decisions(*(np.concatenate([getattr(d, f.name) for _, d, _ in parts]) for f in fields(Decisions)))
        return CampaignLog(events, Contacts.concat([c for c, _, _ in parts]), decisions,
                           np.concatenate([r.probability for _, _, r in parts]),
                           np.concatenate([r.purchased for _, _, r in parts]))

    def _draw(self, policy: Policy, contacts: Contacts, rng: np.random.Generator) -> Decisions:
        """One (product, nudge) per contact drawn from the policy's joint probabilities, with its propensities."""
        pi = self.check_probabilities(policy, contacts)
        b, a = len(contacts), self.n_arms
        cdf = np.cumsum(pi.reshape(b, -1), axis=1)
        u = rng.random(b) * cdf[:, -1]
        flat = np.minimum((cdf <= u[:, None]).sum(axis=1), cdf.shape[1] - 1)   # inverse CDF: a cell with mass
        product, nudge = flat // a, flat % a
        rows = np.arange(b)
        product_p = pi[rows, product].sum(axis=1)
        return Decisions(product, nudge, pi[rows, product, nudge] / product_p, product_p)


# ----------------------------------------------------------------------------------------------- helpers


def _bands(uci: UciData, cfg: SimConfig) -> np.ndarray:
    """(N,) age band of every calibration row."""
    return age_bands(uci.columns["age"], cfg.population.age_bands)


def _names(names: Sequence[str], codes: np.ndarray | pa.Array) -> pa.Array:
    """String array of names[code] (null where the code is null)."""
    return pa.array(list(names), pa.string()).take(codes)


def _left_align(x: np.ndarray) -> np.ndarray:
    """Each row's non-negative entries in order, moved to the right end, -1 padding on the left."""
    order = np.argsort(x >= 0, axis=1, kind="stable")
    return np.take_along_axis(x, order, axis=1)
