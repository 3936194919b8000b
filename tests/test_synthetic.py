"""Tests for the seeded synthetic event-log generator (seqrec.datasets.synthetic)."""

from __future__ import annotations

import math
import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.json as pjson
import pyarrow.parquet as pq
import pytest
from seqrec.datasets.synthetic import (
    BLOCK_USERS,
    NUDGE_ARMS,
    NUDGE_FAMILY,
    SyntheticConfig,
    config_for_events,
    generate_events,
    iter_event_batches,
    make_world,
    write_events,
)

EXPECTED_SCHEMA = pa.schema([
    ("user_id", pa.int64()),
    ("session_id", pa.int64()),
    ("item_id", pa.int64()),
    ("event_type", pa.string()),
    ("timestamp", pa.timestamp("us", tz="UTC")),
    ("nudge_id", pa.string()),
    ("propensity", pa.float64()),
    ("value", pa.float64()),
    ("user_segment", pa.string()),
    ("user_age", pa.int64()),
    ("item_category", pa.string()),
])
THIRTY_MIN_US = 30 * 60 * 1_000_000


def _np(table: pa.Table, name: str) -> np.ndarray:
    """A column as a NumPy array (strings as objects, timestamps as int64 microseconds)."""
    col = table.column(name)
    if pa.types.is_timestamp(col.type):
        col = col.cast(pa.int64())
    return col.to_numpy(zero_copy_only=False)


@pytest.fixture(scope="module")
def mid() -> pa.Table:
    """A mid-size log (about 90k rows) shared by the statistical tests."""
    return generate_events(SyntheticConfig(users=4000, seed=11))


@pytest.fixture(scope="module")
def small_cfg() -> SyntheticConfig:
    return SyntheticConfig(users=300, items=120, seed=5)


# ------------------------------------------------------------------------------------------------ schema


def test_schema_and_types(small_cfg):
    t = generate_events(small_cfg)
    assert t.schema == EXPECTED_SCHEMA
    assert t.num_rows > small_cfg.users
    assert set(pc.unique(t["event_type"]).to_pylist()) <= {"view", "like", "cart", "purchase"}
    assert set(pc.unique(t["nudge_id"]).drop_null().to_pylist()) <= set(NUDGE_ARMS)
    for name in ("user_id", "session_id", "item_id", "event_type", "timestamp", "value",
                 "user_segment", "user_age", "item_category"):
        assert t[name].null_count == 0, name
    assert pc.min(t["value"]).as_py() > 0
    assert set(_np(t, "user_id")) == set(range(small_cfg.users))
    assert 0 <= pc.min(t["item_id"]).as_py() and pc.max(t["item_id"]).as_py() < small_cfg.items
    assert 18 <= pc.min(t["user_age"]).as_py() and pc.max(t["user_age"]).as_py() <= 90


def test_user_and_item_attributes_are_consistent(small_cfg):
    t = generate_events(small_cfg)
    for key, attrs in (("user_id", ("user_segment", "user_age")), ("item_id", ("item_category", "value"))):
        distinct = t.select([key, *attrs]).group_by([key, *attrs]).aggregate([])
        assert distinct.num_rows == len(pc.unique(t[key]))


def test_nudge_families():
    assert len(NUDGE_ARMS) == 11 and set(NUDGE_FAMILY) == set(NUDGE_ARMS)
    assert NUDGE_FAMILY["default_option"] == NUDGE_FAMILY["preset_plan"] == "decision_structure"
    assert {NUDGE_FAMILY[a] for a in ("gain_framing", "loss_framing", "urgency")} == {"decision_information"}
    assert {NUDGE_FAMILY[a] for a in ("progress_bar", "incentive", "reminder", "gamified_goal")} == {
        "decision_assistance"}
    assert {NUDGE_FAMILY[a] for a in ("social_proof", "peer_choice")} == {"social_appeal"}


# ------------------------------------------------------------------------------------------- determinism


def test_same_seed_same_table(small_cfg):
    assert generate_events(small_cfg).equals(generate_events(small_cfg))
    w1, w2 = make_world(small_cfg), make_world(small_cfg)
    assert np.array_equal(w1.nudge_effect, w2.nudge_effect) and np.array_equal(w1.item_price, w2.item_price)


def test_different_seed_different_table(small_cfg):
    other = SyntheticConfig(users=small_cfg.users, items=small_cfg.items, seed=small_cfg.seed + 1)
    assert not generate_events(small_cfg).equals(generate_events(other))


def test_batches_only_regroup_rows():
    cfg = SyntheticConfig(users=BLOCK_USERS + 150, items=50, mean_sessions_per_user=1.5,
                          mean_session_length=2.0, seed=2)
    whole = generate_events(cfg)
    for per_batch in (97, 5000, BLOCK_USERS + 1000):
        batches = list(iter_event_batches(cfg, users_per_batch=per_batch))
        assert len(batches) == math.ceil(cfg.users / per_batch)
        seen: set[int] = set()
        for b in batches:
            users = set(_np(pa.Table.from_batches([b]), "user_id"))
            assert len(users) <= per_batch and not users & seen  # whole users, each in one batch
            seen |= users
        assert pa.Table.from_batches(batches).equals(whole), per_batch


# -------------------------------------------------------------------------------------------- behaviour


def test_event_mix(mid):
    ev = _np(mid, "event_type")
    share = {k: float(np.mean(ev == k)) for k in ("view", "like", "cart", "purchase")}
    assert 0.85 <= share["view"] <= 0.90, share
    assert 0.025 <= share["like"] <= 0.05, share
    assert 0.045 <= share["cart"] <= 0.07, share
    assert 0.018 <= share["purchase"] <= 0.035, share


def test_followups_follow_a_view_of_the_same_item(mid):
    df = mid.select(["user_id", "session_id", "item_id", "event_type", "timestamp"]).to_pandas()
    key = ["user_id", "session_id", "item_id"]
    first_view = df[df.event_type == "view"].groupby(key).timestamp.min().rename("first_view")
    first_cart = df[df.event_type == "cart"].groupby(key).timestamp.min().rename("first_cart")
    follow = df[df.event_type != "view"].join(first_view, on=key).join(first_cart, on=key)
    assert len(follow) > 1000
    assert follow.first_view.notna().all()
    assert (follow.timestamp > follow.first_view).all()
    buys = follow[follow.event_type == "purchase"]
    assert buys.first_cart.notna().all() and (buys.timestamp > buys.first_cart).all()


def test_rows_sorted_by_time_within_user_and_sessions_contiguous(mid):
    user, session, ts = _np(mid, "user_id"), _np(mid, "session_id"), _np(mid, "timestamp")
    same_user = user[1:] == user[:-1]
    assert np.all(np.diff(user) >= 0)                     # users in blocks, in order
    assert np.all(np.diff(ts)[same_user] >= 0)            # time order within a user
    starts = np.r_[True, session[1:] != session[:-1]]
    assert len(np.unique(session)) == starts.sum()        # each session is one contiguous run
    assert np.all(user[1:][session[1:] == session[:-1]] == user[:-1][session[1:] == session[:-1]])


def test_time_gaps(mid):
    user, session, ts = _np(mid, "user_id"), _np(mid, "session_id"), _np(mid, "timestamp")
    assert ts.min() >= 1704067200 * 1_000_000   # the default start, 2024-01-01T00:00:00+00:00
    gap = np.diff(ts)
    same_session = session[1:] == session[:-1]
    new_session_same_user = (~same_session) & (user[1:] == user[:-1])
    assert gap[same_session].max() < THIRTY_MIN_US
    assert new_session_same_user.sum() > 1000
    assert gap[new_session_same_user].min() > THIRTY_MIN_US
    assert np.median(gap[new_session_same_user]) > 3 * 3600 * 1_000_000   # hours to days apart


def test_nudges_and_propensities(mid):
    cfg = SyntheticConfig(users=4000, seed=11)
    nudge, prop = mid["nudge_id"], mid["propensity"]
    assert pc.all(pc.equal(pc.is_null(nudge), pc.is_null(prop))).as_py()
    ev, seg = _np(mid, "event_type"), _np(mid, "user_segment")
    shown = ~np.asarray(pc.is_null(nudge))
    assert not shown[ev != "view"].any()                                   # nudges ride on views
    assert abs(shown[ev == "view"].mean() - cfg.nudge_rate) < 0.01
    p = _np(mid, "propensity")[shown]
    arm, seg = _np(mid, "nudge_id")[shown], seg[shown]
    assert np.all((p > 0) & (p <= 1))
    eps, k = cfg.epsilon, len(NUDGE_ARMS)
    p_best, p_other = 1 - eps + eps / k, eps / k
    assert set(np.unique(p)) == {p_best, p_other}
    for s in np.unique(seg):
        in_s = seg == s
        best = np.unique(arm[in_s & (p == p_best)])
        assert len(best) == 1                                               # one greedy arm per segment
        assert np.all((arm[in_s] == best[0]) == (p[in_s] == p_best))
        # the logged frequency of the greedy arm matches its propensity
        assert abs(np.mean(arm[in_s] == best[0]) - p_best) < 0.03


@pytest.mark.parametrize("epsilon", [0.0, 1.0])
def test_propensity_extremes(epsilon):
    t = generate_events(SyntheticConfig(users=200, epsilon=epsilon, seed=4))
    p = t["propensity"].drop_null().to_numpy()
    assert len(p) > 0
    assert np.all(p == (1.0 if epsilon == 0 else 1 / len(NUDGE_ARMS)))


def test_nudge_effect_moves_carts():
    cfg = SyntheticConfig(users=3000, nudge_rate=1.0, epsilon=1.0, seed=8)
    t = generate_events(cfg)
    world = make_world(cfg)
    df = t.select(["session_id", "item_id", "event_type", "nudge_id", "user_segment"]).to_pandas()
    carted = set(map(tuple, df[df.event_type == "cart"][["session_id", "item_id"]].to_numpy()))
    views = df[df.event_type == "view"]
    views = views[~views.duplicated(["session_id", "item_id"], keep=False)]   # unambiguous: viewed once
    converted = np.array([(s, i) in carted for s, i in views[["session_id", "item_id"]].to_numpy()])
    seg = views.user_segment.map({n: i for i, n in enumerate(world.segment_names)}).to_numpy()
    arm = views.nudge_id.map({n: i for i, n in enumerate(NUDGE_ARMS)}).to_numpy()
    effect = world.nudge_effect[seg, arm]
    high, low = converted[effect > 1.5].mean(), converted[effect < 0.95].mean()
    assert high > 1.5 * low, (high, low)


def test_sessions_vary_and_follow_the_config(mid):
    views = mid.filter(pc.equal(mid["event_type"], "view"))
    length = np.bincount(_np(views, "session_id"))
    length = length[length > 0]
    assert length.min() >= 1
    assert abs(length.mean() - 6.0) / 6.0 < 0.15
    assert length.max() >= 5 * 6.0 and np.mean(length == 1) > 0.05   # long and short sessions
    sessions_per_user = len(length) / 4000
    assert abs(sessions_per_user - 3.0) / 3.0 < 0.15


def test_sequential_signal_and_popularity_skew(mid):
    views = mid.filter(pc.equal(mid["event_type"], "view"))
    session, cat, item = _np(views, "session_id"), _np(views, "item_category"), _np(views, "item_id")
    same = session[1:] == session[:-1]
    same_cat = np.mean(cat[1:][same] == cat[:-1][same])
    _, counts = np.unique(cat, return_counts=True)
    chance = np.sum((counts / counts.sum()) ** 2)
    assert same_cat > 3 * chance, (same_cat, chance)
    views_per_item = np.sort(np.bincount(item))[::-1]
    assert views_per_item[: len(views_per_item) // 10].sum() > 0.3 * views_per_item.sum()


def test_purchases_prefer_liked_items(mid):
    """Purchase probability rises with affinity: viewers who buy an item view it more than others do."""
    df = mid.select(["session_id", "item_id", "event_type"]).to_pandas()
    views_per_pair = df[df.event_type == "view"].groupby(["session_id", "item_id"]).size()
    bought = df[df.event_type == "purchase"].groupby(["session_id", "item_id"]).size().index
    assert views_per_pair.loc[bought].mean() > views_per_pair.mean()


# ------------------------------------------------------------------------------------- sizing and files


@pytest.mark.parametrize("n", [20_000, 120_000])
def test_config_for_events(n):
    cfg = config_for_events(n, seed=3)
    rows = sum(b.num_rows for b in iter_event_batches(cfg))
    assert abs(rows - n) / n < 0.10, (rows, n)


def test_config_for_events_passes_overrides():
    cfg = config_for_events(30_000, seed=1, items=77, mean_session_length=3.0)
    assert (cfg.items, cfg.mean_session_length, cfg.seed) == (77, 3.0, 1)
    rows = generate_events(cfg).num_rows
    assert abs(rows - 30_000) / 30_000 < 0.10
    with pytest.raises(ValueError, match="users"):
        config_for_events(1000, users=5)
    with pytest.raises(ValueError, match="n_events"):
        config_for_events(0)


def _read(path, fmt: str) -> pa.Table:
    """Read a written file back with pyarrow under the expected schema."""
    if fmt == "parquet":
        return pq.read_table(path)
    if fmt == "jsonl":
        return pjson.read_json(path, parse_options=pjson.ParseOptions(explicit_schema=EXPECTED_SCHEMA))
    opts = pcsv.ConvertOptions(column_types=EXPECTED_SCHEMA, strings_can_be_null=True)
    parse = pcsv.ParseOptions(delimiter="\t" if fmt == "tsv" else ",")
    return pcsv.read_csv(path, parse_options=parse, convert_options=opts)


@pytest.mark.parametrize("fmt", ["csv", "tsv", "parquet", "jsonl"])
def test_file_round_trip(tmp_path, small_cfg, fmt):
    path = tmp_path / f"events.{fmt}"
    rows = write_events(small_cfg, path, users_per_batch=70)
    expected = generate_events(small_cfg)
    assert rows == expected.num_rows
    back = _read(path, fmt)
    assert back.num_rows == rows
    assert back.equals(expected)


def test_text_timestamps_are_iso_with_offset(tmp_path, small_cfg):
    write_events(small_cfg, tmp_path / "e.csv")
    write_events(small_cfg, tmp_path / "e.jsonl")
    inferred = pcsv.read_csv(tmp_path / "e.csv")        # no schema: pyarrow recognises the timestamps
    assert pa.types.is_timestamp(inferred["timestamp"].type) and inferred["timestamp"].type.tz == "UTC"
    line = (tmp_path / "e.csv").read_text().splitlines()[1]
    assert re.search(r'"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00"', line)
    text = pjson.read_json(tmp_path / "e.jsonl")["timestamp"]
    assert pa.types.is_string(text.type)
    assert pc.cast(text, pa.timestamp("us", tz="UTC")).equals(generate_events(small_cfg)["timestamp"])


def test_unknown_suffix(tmp_path, small_cfg):
    with pytest.raises(ValueError, match="suffix"):
        write_events(small_cfg, tmp_path / "events.xlsx")


# ------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize("field, value", [
    ("users", 0),
    ("users", 2.5),
    ("users", True),
    ("items", 0),
    ("categories", 0),
    ("categories", 400),          # more categories than items
    ("latent_dim", 0),
    ("segments", 0),
    ("mean_sessions_per_user", 0.5),
    ("mean_sessions_per_user", float("nan")),
    ("mean_session_length", 0.0),
    ("mean_session_length", 1e6),
    ("nudge_rate", -0.1),
    ("nudge_rate", 1.5),
    ("epsilon", 1.01),
    ("epsilon", "0.2"),
    ("start", "not a time"),
    ("start", "2024-01-01T00:00:00"),   # no offset
    ("start", "1960-01-01T00:00:00+00:00"),
    ("seed", -1),
    ("seed", 1.0),
])
def test_config_validation(field, value):
    with pytest.raises(ValueError, match=field):
        SyntheticConfig(**{field: value})


def test_valid_edge_configs():
    t = generate_events(SyntheticConfig(users=3, items=1, categories=1, segments=9, latent_dim=1,
                                        mean_sessions_per_user=1.0, mean_session_length=1.0,
                                        nudge_rate=0.0, start="2030-06-01T12:00:00+02:00"))
    assert pc.all(pc.is_null(t["nudge_id"])).as_py()
    assert set(_np(t, "item_id")) == {0}
    assert pc.min(t["timestamp"]).as_py().isoformat() >= "2030-06-01T10:00:00+00:00"
    with pytest.raises(ValueError, match="users_per_batch"):
        next(iter_event_batches(SyntheticConfig(users=3), users_per_batch=0))
