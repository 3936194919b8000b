"""Seeded generator of realistic SDK event logs: the built-in data for demos, tests and benchmarks.

The world (items, categories, prices, popularity, user segments, nudge effects, the logging policy) is drawn
from the seed alone. Users are then generated in fixed blocks of `BLOCK_USERS`, each from its own seed
derived from (seed, block index), so the log is the same whatever batch size a caller streams it in.

Within a session a user walks through items: each next view is drawn by a softmax over a candidate pool
(popular items plus items of the previous item's category) scored by the user's taste and by closeness to
the previous item. Every view may lead to a like, a cart and then a purchase, more likely when the user
likes the item. A share of views carries a nudge chosen by an epsilon-greedy logging policy with its exact
propensity; the nudge multiplies the cart probability by an effect that depends on (segment, nudge family).
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from seqrec.core.config import check_int, check_real

from .schema import CART, EVENT_TYPES, LIKE, PURCHASE, TIMESTAMP_TYPE, VIEW

# The arms of the default nudge catalogue (seqrec/nudging/nudges.toml), in its order and families; the generator keeps
# its own copy so that datasets/ reads no file at import, and tests/test_nudges.py checks that the two agree.
NUDGE_ARMS: tuple[str, ...] = (
    "default_option", "preset_plan", "gain_framing", "loss_framing", "urgency",
    "progress_bar", "incentive", "reminder", "gamified_goal", "social_proof", "peer_choice",
)
NUDGE_FAMILIES: tuple[str, ...] = (
    "decision_structure", "decision_information", "decision_assistance", "social_appeal",
)
NUDGE_FAMILY: dict[str, str] = {
    "default_option": "decision_structure", "preset_plan": "decision_structure",
    "gain_framing": "decision_information", "loss_framing": "decision_information",
    "urgency": "decision_information",
    "progress_bar": "decision_assistance", "incentive": "decision_assistance",
    "reminder": "decision_assistance", "gamified_goal": "decision_assistance",
    "social_proof": "social_appeal", "peer_choice": "social_appeal",
}


SCHEMA = pa.schema([
    ("user_id", pa.int64()),
    ("session_id", pa.int64()),
    ("item_id", pa.int64()),
    ("event_type", pa.string()),
    ("timestamp", TIMESTAMP_TYPE),
    ("nudge_id", pa.string()),
    ("propensity", pa.float64()),
    ("value", pa.float64()),
    ("user_segment", pa.string()),
    ("user_age", pa.int64()),
    ("item_category", pa.string()),
])

# Named segments with their age ranges; segments beyond these are "segment_<i>" aged 18-80.
SEGMENT_PROFILES: tuple[tuple[str, int, int], ...] = (
    ("young_saver", 18, 30), ("family_planner", 28, 50), ("bargain_hunter", 20, 70),
    ("premium_shopper", 30, 65), ("retiree", 60, 90), ("student", 18, 26),
    ("urban_professional", 24, 45), ("small_business_owner", 30, 65),
)
CATEGORY_NAMES: tuple[str, ...] = (
    "electronics", "fashion", "home", "beauty", "sports", "books",
    "toys", "grocery", "garden", "automotive", "health", "jewelry",
)

BLOCK_USERS = 8192            # users per internal block: the unit of seeding, fixed so output is batch-free
MAX_SESSION_LENGTH = 200      # views per session are capped here (bounds the per-position loop)
POOL_POPULAR = 12             # candidates per step drawn by global popularity
POOL_CATEGORY = 8             # candidates per step drawn from the previous item's category
TASTE_WEIGHT = 4.0            # softmax weight of user-item cosine
SEQUENCE_WEIGHT = 1.5         # softmax weight of previous-item/candidate cosine
REPEAT_PENALTY = 3.0          # softmax penalty for viewing the previous item again
FUNNEL_SLOPE = 3.0            # how strongly like/cart/purchase probabilities rise with user-item affinity
LIKE_BIAS, CART_BIAS, PURCHASE_BIAS = -4.55, -4.3, -1.85  # logit intercepts (tuned for the event mix)
MAX_CART_PROBABILITY = 0.95
FIRST_SESSION_WINDOW_S = 14 * 86400.0   # a user's first session starts uniformly within this after `start`
MIN_SESSION_GAP_S = 3600.0              # sessions of a user are at least this far apart (> 30 minutes)
MAX_VIEW_GAP_S = 1500.0                 # consecutive views at most 25 minutes apart (< 30 minutes)
US = 1_000_000
TUNED_LATENT_DIM = 8   # weights above were tuned here; cosines are rescaled by sqrt(d / 8) for other d

FORMAT_OF_SUFFIX = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet",
                    ".jsonl": "jsonl", ".ndjson": "jsonl"}


@dataclass(frozen=True)
class SyntheticConfig:
    """Size, shape and seed of a synthetic event log (validated on creation)."""

    users: int = 1000
    items: int = 300
    mean_sessions_per_user: float = 3.0
    mean_session_length: float = 6.0     # views per session (min 1, heavy-tailed, capped at 200)
    latent_dim: int = 8
    categories: int = 12
    segments: int = 4
    nudge_rate: float = 0.3              # share of views on which a nudge is shown
    epsilon: float = 0.2                 # exploration of the epsilon-greedy logging policy
    start: str = "2024-01-01T00:00:00+00:00"
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("users", "items", "latent_dim", "categories", "segments"):
            check_int(name, getattr(self, name), 1)
        check_int("seed", self.seed, 0)
        if self.categories > self.items:
            raise ValueError(f"categories must be <= items ({self.items}); got {self.categories}")
        check_real("mean_sessions_per_user", self.mean_sessions_per_user, 1.0, 1000.0)
        check_real("mean_session_length", self.mean_session_length, 1.0, MAX_SESSION_LENGTH / 4)
        check_real("nudge_rate", self.nudge_rate, 0.0, 1.0)
        check_real("epsilon", self.epsilon, 0.0, 1.0)
        _start_us(self)



def _start_us(cfg: SyntheticConfig) -> int:
    """The config's start as microseconds since the epoch (ValueError naming `start` if it is bad)."""
    try:
        t = dt.datetime.fromisoformat(cfg.start)
    except (TypeError, ValueError):
        raise ValueError(f"start must be an ISO-8601 time with a UTC offset; got {cfg.start!r}") from None
    if t.tzinfo is None:
        raise ValueError(f"start must include a UTC offset (e.g. +00:00); got {cfg.start!r}")
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    if not epoch <= t <= dt.datetime(2200, 1, 1, tzinfo=dt.UTC):
        raise ValueError(f"start must lie between 1970 and 2200; got {cfg.start!r}")
    delta = t - epoch
    return (delta.days * 86400 + delta.seconds) * US + delta.microseconds


# ---------------------------------------------------------------------------------------------- the world


@dataclass(frozen=True)
class World:
    """Everything drawn from the seed alone: catalogue, segments, true nudge effects, logging policy."""

    item_category: np.ndarray      # (items,) int: category code of each item
    item_vector: np.ndarray        # (items, d) float32, unit rows: item latent vectors
    item_price: np.ndarray         # (items,) float64 > 0
    item_popularity: np.ndarray    # (items,) float64, sums to 1 (Zipf-like)
    item_table: np.ndarray         # items repeated by popularity, grouped by category (for O(1) sampling)
    category_offset: np.ndarray    # (categories,) start of each category's run in item_table
    category_size: np.ndarray      # (categories,) length of each category's run in item_table
    category_names: tuple[str, ...]
    segment_names: tuple[str, ...]
    segment_weights: np.ndarray    # (segments,) share of users in each segment
    segment_ages: np.ndarray       # (segments, 2) int: lowest and highest age
    segment_center: np.ndarray     # (segments, d): taste shared by a segment
    nudge_effect: np.ndarray       # (segments, arms) true multiplier of cart probability
    logging_arm: np.ndarray        # (segments,) the arm the logging policy believes best


def make_world(cfg: SyntheticConfig) -> World:
    """Draw the catalogue, segments, nudge effects and logging policy from `cfg.seed`."""
    rng = _rng(cfg.seed, 0)
    n, c, s, d = cfg.items, cfg.categories, cfg.segments, cfg.latent_dim
    category = rng.permutation(np.concatenate([np.arange(c), rng.integers(0, c, n - c)]))
    center = rng.standard_normal((c, d))
    vector = _unit(center[category] + 0.6 * rng.standard_normal((n, d)))
    base_price = np.exp(rng.normal(3.5, 0.8, c))
    price = np.maximum(np.round(base_price[category] * np.exp(rng.normal(0.0, 0.35, n)), 2), 0.01)
    popularity = 1.0 / (rng.permutation(n) + 1.0) ** 0.9
    popularity /= popularity.sum()
    table, offset, size = _item_table(category, popularity, c)
    profiles = [SEGMENT_PROFILES[i] if i < len(SEGMENT_PROFILES) else (f"segment_{i}", 18, 80)
                for i in range(s)]
    family_lifts = np.array([1.8, 1.3, 1.0, 0.85])
    family_effect = np.stack([family_lifts[rng.permutation(len(NUDGE_FAMILIES))] for _ in range(s)])
    arm_family = np.array([NUDGE_FAMILIES.index(NUDGE_FAMILY[a]) for a in NUDGE_ARMS])
    effect = family_effect[:, arm_family] * np.exp(rng.normal(0.0, 0.08, (s, len(NUDGE_ARMS))))
    belief = np.log(effect) + rng.normal(0.0, 0.35, effect.shape)  # the logger's noisy estimate
    return World(
        item_category=category, item_vector=vector.astype(np.float32), item_price=price,
        item_popularity=popularity, item_table=table, category_offset=offset, category_size=size,
        category_names=tuple(CATEGORY_NAMES[i] if i < len(CATEGORY_NAMES) else f"category_{i}"
                             for i in range(c)),
        segment_names=tuple(p[0] for p in profiles),
        segment_weights=rng.dirichlet(np.full(s, 4.0)),
        segment_ages=np.array([p[1:] for p in profiles], dtype=np.int64),
        segment_center=0.8 * rng.standard_normal((s, d)),
        nudge_effect=effect, logging_arm=np.argmax(belief, axis=1),
    )


def _rng(seed: int, *key: int) -> np.random.Generator:
    """An independent generator for one purpose (0: world, (1, b): user block b) of one seed."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=key)))


def _unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _item_table(category: np.ndarray, popularity: np.ndarray, categories: int):
    """Items repeated in proportion to popularity (each at least once), grouped by category."""
    slots = max(1 << 16, 8 * len(category))
    counts = np.maximum(1, np.round(popularity * slots)).astype(np.int64)
    by_category = np.argsort(category, kind="stable")
    table = np.repeat(by_category, counts[by_category]).astype(np.int32)
    size = np.bincount(category, weights=counts, minlength=categories).astype(np.int64)
    return table, np.cumsum(size) - size, size


def logging_propensities(cfg: SyntheticConfig) -> tuple[float, float]:
    """(probability of the believed-best arm, probability of each other arm) under epsilon-greedy."""
    k = len(NUDGE_ARMS)
    return 1.0 - cfg.epsilon + cfg.epsilon / k, cfg.epsilon / k


# ---------------------------------------------------------------------------------------- one user block


def _uniform_index(rng: np.random.Generator, size: np.ndarray | int, shape: tuple[int, ...]) -> np.ndarray:
    """Uniform integers in [0, size) (size < 2^32, broadcast to shape) from raw 32-bit draws."""
    raw = rng.bit_generator.random_raw(math.prod(shape)).reshape(shape) & np.uint64(0xFFFFFFFF)
    return ((raw * np.asarray(size, dtype=np.uint64)) >> np.uint64(32)).astype(np.int64)


def _softmax_pick(scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For each row of scores, a column index drawn with softmax probabilities (inverse CDF)."""
    w = np.exp(scores - scores.max(axis=1, keepdims=True))
    cdf = np.cumsum(w, axis=1)
    u = rng.random(len(scores), dtype=np.float32) * cdf[:, -1]
    return np.minimum((cdf < u[:, None]).sum(axis=1), scores.shape[1] - 1)


def _cosine_scale(latent_dim: int) -> float:
    """Factor keeping cosine logits comparable across latent_dim (random cosines shrink as 1/sqrt(d))."""
    return math.sqrt(latent_dim / TUNED_LATENT_DIM)


def _view_items(world: World, taste: np.ndarray, length: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Item of every view, sessions laid out one after another; each step is vectorised over sessions."""
    scale = _cosine_scale(taste.shape[1])
    order = np.argsort(-length, kind="stable")       # active sessions at step t are a prefix of `order`
    active = np.searchsorted(-length[order], -np.arange(1, length.max() + 1), side="right")
    first_row = (np.cumsum(length) - length)[order]
    taste = taste[order]
    table, vec = world.item_table, world.item_vector
    items = np.empty(int(length.sum()), dtype=np.int64)
    prev = np.empty(0, dtype=np.int64)
    for t, a in enumerate(active):
        query = (TASTE_WEIGHT * scale) * taste[:a]
        cand = table[_uniform_index(rng, len(table), (a, POOL_POPULAR + POOL_CATEGORY))]
        if t > 0:
            prev = prev[:a]
            query = query + (SEQUENCE_WEIGHT * scale) * vec[prev]
            cat = world.item_category[prev]
            cand[:, POOL_POPULAR:] = table[world.category_offset[cat][:, None] + _uniform_index(
                rng, world.category_size[cat][:, None], (a, POOL_CATEGORY))]
        scores = np.einsum("akd,ad->ak", vec[cand], query)
        if t > 0:
            scores -= REPEAT_PENALTY * (cand == prev[:, None])
        prev = cand[np.arange(a), _softmax_pick(scores, rng)]
        items[first_row[:a] + t] = prev
    return items


def _grouped_offsets(step: np.ndarray, group_start: np.ndarray, group_of: np.ndarray) -> np.ndarray:
    """Exclusive running sum of `step` that restarts at each group (rows of a group are contiguous)."""
    total = np.cumsum(step) - step
    return total - total[group_start][group_of]


def _block(cfg: SyntheticConfig, world: World, block: int, n_users: int,
           first_session: int) -> pa.RecordBatch:
    """Events of users block*BLOCK_USERS ... + n_users, sorted by (user, time), as one record batch."""
    rng = _rng(cfg.seed, 1, block)
    d = cfg.latent_dim
    # users
    segment = rng.choice(cfg.segments, size=n_users, p=world.segment_weights)
    low, high = world.segment_ages[segment].T
    age = low + _uniform_index(rng, high - low + 1, (n_users,))
    taste = _unit(world.segment_center[segment] + rng.standard_normal((n_users, d))).astype(np.float32)
    activity = rng.gamma(2.0, 0.5, n_users)
    # sessions
    extra = cfg.mean_sessions_per_user - 1.0
    n_sessions = 1 + rng.poisson(rng.gamma(1.5, extra / 1.5, n_users))
    session_user = np.repeat(np.arange(n_users), n_sessions)
    n_s = len(session_user)
    mean_extra = (cfg.mean_session_length - 1.0) * activity[session_user] * rng.exponential(1.0, n_s)
    length = np.minimum(1 + rng.poisson(mean_extra), MAX_SESSION_LENGTH)
    # views
    item = _view_items(world, taste[session_user], length, rng)
    n_v = len(item)
    view_session = np.repeat(np.arange(n_s), length)
    session_first_view = np.cumsum(length) - length
    view_user = session_user[view_session]
    gap = np.minimum(np.exp(rng.normal(np.log(45.0), 0.9, n_v)), MAX_VIEW_GAP_S)
    gap_us = (gap * US).astype(np.int64)
    gap_us[session_first_view] = 0
    view_offset = _grouped_offsets(gap_us, session_first_view, view_session) + gap_us
    # nudges (epsilon-greedy logging policy) and funnel
    seg_v = segment[view_user]
    shown = rng.random(n_v) < cfg.nudge_rate
    explore = rng.random(n_v) < cfg.epsilon
    arm = np.where(explore, _uniform_index(rng, len(NUDGE_ARMS), (n_v,)), world.logging_arm[seg_v])
    p_best, p_other = logging_propensities(cfg)
    propensity = np.where(arm == world.logging_arm[seg_v], p_best, p_other)
    effect = np.where(shown, world.nudge_effect[seg_v, arm], 1.0)
    cosine = np.einsum("vd,vd->v", taste[view_user], world.item_vector[item]).astype(np.float64)
    affinity = _cosine_scale(d) * cosine
    like = rng.random(n_v) < _sigmoid(LIKE_BIAS + FUNNEL_SLOPE * affinity)
    p_cart = np.minimum(_sigmoid(CART_BIAS + FUNNEL_SLOPE * affinity) * effect, MAX_CART_PROBABILITY)
    cart = rng.random(n_v) < p_cart
    purchase = cart & (rng.random(n_v) < _sigmoid(PURCHASE_BIAS + FUNNEL_SLOPE * affinity))
    like_delay = _delay(rng, 2.0, 20.0, 300.0, n_v)
    cart_delay = _delay(rng, 5.0, 60.0, 600.0, n_v)
    purchase_delay = cart_delay + _delay(rng, 30.0, 180.0, 900.0, n_v)
    # all rows: views, then follow-ups of the same item later in the same session
    src = np.concatenate([np.arange(n_v), *(np.flatnonzero(m) for m in (like, cart, purchase))])
    etype = np.repeat(np.array([VIEW, LIKE, CART, PURCHASE], np.int8), [n_v, like.sum(), cart.sum(), purchase.sum()])
    offset = view_offset[src] + np.concatenate(
        [np.zeros(n_v, np.int64), like_delay[like], cart_delay[cart], purchase_delay[purchase]])
    session = view_session[src]
    order = np.lexsort((offset, session))
    src, etype, offset, session = src[order], etype[order], offset[order], session[order]
    # session start times: first uniformly in a window, later ones after the previous end plus a gap
    session_end = offset[np.cumsum(np.bincount(session, minlength=n_s)) - 1]  # last row of each session
    user_first_session = np.cumsum(n_sessions) - n_sessions
    between = MIN_SESSION_GAP_S + np.exp(rng.normal(np.log(20 * 3600.0), 1.2, n_s))
    step = session_end + (between * US).astype(np.int64)
    first_start = (rng.random(n_users) * FIRST_SESSION_WINDOW_S * US).astype(np.int64)
    session_start = _start_us(cfg) + first_start[session_user] + _grouped_offsets(
        step, user_first_session, session_user)
    # columns
    user = session_user[session]
    is_view = etype == VIEW
    nudge_mask = ~(is_view & shown[src])
    arrays = [
        pa.array(block * BLOCK_USERS + user.astype(np.int64)),
        pa.array(first_session + session.astype(np.int64)),
        pa.array(item[src]),
        _names(EVENT_TYPES, etype),
        pa.array(session_start[session] + offset, type=SCHEMA.field("timestamp").type),
        _names(NUDGE_ARMS, pa.array(arm[src], mask=nudge_mask)),
        pa.array(propensity[src], mask=nudge_mask),
        pa.array(world.item_price[item[src]]),
        _names(world.segment_names, segment[user]),
        pa.array(age[user]),
        _names(world.category_names, world.item_category[item[src]]),
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=SCHEMA)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function."""
    return 1.0 / (1.0 + np.exp(-x))


def _delay(rng: np.random.Generator, low: float, mean: float, high: float, n: int) -> np.ndarray:
    """n delays in microseconds: low plus an exponential with the given mean, capped at high seconds."""
    return (np.minimum(low + rng.exponential(mean, n), high) * US).astype(np.int64)


def _names(names: tuple[str, ...], codes: np.ndarray | pa.Array) -> pa.Array:
    """String array of names[code] (null where the code is null)."""
    return pa.array(names, pa.string()).take(codes)


# --------------------------------------------------------------------------------------------- public API


def iter_event_batches(cfg: SyntheticConfig, users_per_batch: int = 50_000) -> Iterator[pa.RecordBatch]:
    """Stream the log as record batches of whole users (at most users_per_batch each), in user order.

    Users are generated BLOCK_USERS at a time: memory is bounded by max(users_per_batch, BLOCK_USERS) users.
    """
    check_int("users_per_batch", users_per_batch, 1)
    world = make_world(cfg)
    pending: list[pa.RecordBatch] = []
    pending_users = 0
    next_session = 0
    for block in range((cfg.users + BLOCK_USERS - 1) // BLOCK_USERS):
        n_users = min(BLOCK_USERS, cfg.users - block * BLOCK_USERS)
        batch = _block(cfg, world, block, n_users, next_session)
        next_session = int(pc.max(batch.column("session_id")).as_py()) + 1
        counts = np.bincount(batch.column("user_id").to_numpy() - block * BLOCK_USERS, minlength=n_users)
        row_start = np.concatenate([[0], np.cumsum(counts)])
        u = 0
        while u < n_users:
            take = min(users_per_batch - pending_users, n_users - u)
            pending.append(batch.slice(row_start[u], row_start[u + take] - row_start[u]))
            pending_users += take
            u += take
            if pending_users == users_per_batch:
                yield _concat(pending)
                pending, pending_users = [], 0
    if pending:
        yield _concat(pending)


def _concat(batches: list[pa.RecordBatch]) -> pa.RecordBatch:
    """One record batch holding the rows of several (no copy for a single one)."""
    if len(batches) == 1:
        return batches[0]
    return pa.Table.from_batches(batches, schema=SCHEMA).combine_chunks().to_batches()[0]


def generate_events(cfg: SyntheticConfig) -> pa.Table:
    """The whole log in memory (the concatenation of iter_event_batches)."""
    return pa.Table.from_batches(list(iter_event_batches(cfg)), schema=SCHEMA)


def config_for_events(n_events: int, seed: int = 0, **overrides) -> SyntheticConfig:
    """A config whose log has about n_events rows: users scaled from a pilot block of the same config."""
    check_int("n_events", n_events, 1)
    if "users" in overrides:
        raise ValueError("config_for_events chooses users itself; do not pass users")
    pilot = SyntheticConfig(users=BLOCK_USERS, seed=seed, **overrides)
    rows = sum(b.num_rows for b in iter_event_batches(pilot, BLOCK_USERS))
    return replace(pilot, users=max(1, round(n_events * BLOCK_USERS / rows)))


def write_events(cfg: SyntheticConfig, path: str | Path, users_per_batch: int = 50_000) -> int:
    """Stream the log into a .csv, .tsv, .parquet or .jsonl file (by suffix); return the rows written."""
    path = Path(path)
    fmt = FORMAT_OF_SUFFIX.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"unknown output suffix {path.suffix!r} in {path}; use one of "
                         f"{', '.join(FORMAT_OF_SUFFIX)}")
    batches = iter_event_batches(cfg, users_per_batch)
    if fmt == "parquet":
        return _write_parquet(batches, path)
    if fmt == "jsonl":
        return _write_jsonl(batches, path)
    return _write_csv(batches, path, "\t" if fmt == "tsv" else ",")


TEXT_CHUNK_ROWS = 1 << 16   # rows formatted at a time for text output (bounds memory)


def _write_parquet(batches: Iterator[pa.RecordBatch], path: Path) -> int:
    """Write batches to one Parquet file, a row group per batch."""
    rows = 0
    with pq.ParquetWriter(path, SCHEMA) as writer:
        for batch in batches:
            writer.write_batch(batch)
            rows += batch.num_rows
    return rows


def _iso(ts: pa.Array) -> pa.Array:
    """Timestamps as ISO-8601 strings with offset, e.g. 2024-01-01T00:00:00.000000+00:00."""
    return pc.strftime(ts, format="%Y-%m-%dT%H:%M:%S%Ez")


def _text_chunks(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Batches cut into TEXT_CHUNK_ROWS pieces."""
    for batch in batches:
        for start in range(0, batch.num_rows, TEXT_CHUNK_ROWS):
            yield batch.slice(start, TEXT_CHUNK_ROWS)


def _write_csv(batches: Iterator[pa.RecordBatch], path: Path, delimiter: str) -> int:
    """Write batches as delimited text with a header; timestamps as ISO-8601 strings with offset."""
    i = SCHEMA.get_field_index("timestamp")
    schema = SCHEMA.set(i, pa.field("timestamp", pa.string()))
    rows = 0
    with pcsv.CSVWriter(path, schema, write_options=pcsv.WriteOptions(delimiter=delimiter)) as writer:
        for chunk in _text_chunks(batches):
            writer.write_batch(chunk.set_column(i, "timestamp", _iso(chunk.column(i))))
            rows += chunk.num_rows
    return rows


def _json_values(arr: pa.Array) -> pa.Array:
    """Each value as JSON text (null as null): strings escaped via their dictionary, timestamps as ISO."""
    if pa.types.is_string(arr.type):
        enc = arr.dictionary_encode()
        text = pa.array([json.dumps(s) for s in enc.dictionary.to_pylist()], pa.string()).take(enc.indices)
    elif pa.types.is_timestamp(arr.type):
        text = pc.binary_join_element_wise('"', _iso(arr), '"', "")
    else:
        text = arr.cast(pa.string())
    return text.fill_null("null")


def _write_jsonl(batches: Iterator[pa.RecordBatch], path: Path) -> int:
    """Write batches as JSON Lines: one object per row, keys in schema order."""
    rows = 0
    with open(path, "wb") as f:
        for chunk in _text_chunks(batches):
            parts: list[pa.Array | str] = []
            for j, name in enumerate(chunk.schema.names):
                parts += [("{" if j == 0 else ",") + json.dumps(name) + ":", _json_values(chunk.column(j))]
            lines = pc.binary_join_element_wise(*parts, "}\n", "")
            offsets = np.frombuffer(lines.buffers()[1], np.int32)[lines.offset:lines.offset + len(lines) + 1]
            f.write(memoryview(lines.buffers()[2])[offsets[0]:offsets[-1]])
            rows += chunk.num_rows
    return rows
