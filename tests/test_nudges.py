"""Tests for the nudge catalogue (seqrec.nudging.catalogue) and logged nudge decisions from event tables."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from seqrec.datasets.schema import DEFAULT_REWARDS
from seqrec.datasets.synthetic import NUDGE_ARMS, NUDGE_FAMILY, SyntheticConfig, generate_events
from seqrec.rl.bandits.fit import fit_offline
from seqrec.rl.bandits.policies import BanditConfig

import seqrec
from seqrec.nudging.catalogue import (
    FAMILIES,
    CatalogueError,
    NudgeArm,
    default_catalogue_path,
    load_catalogue,
    nudge_decisions,
)

VALUES = {"product": "Gold savings", "category": "savings", "benefit": "3% interest", "hours": 12,
          "percent": 80, "incentive": "a 10 EUR bonus", "count": 1200}

GOOD_ARM = '[[arms]]\nid = "{id}"\nfamily = "{family}"\ndescription = "d"\ntemplate = "{template}"\n'


def arm_toml(id: str = "hint", family: str = "social_appeal", template: str = "see {product}") -> str:
    return GOOD_ARM.format(id=id, family=family, template=template)


# -------------------------------------------------------------------------------------- default file


def test_default_catalogue_is_the_generators_arms_in_the_same_order():
    cat = load_catalogue()
    assert cat.ids == NUDGE_ARMS                           # same index <-> id as the synthetic log
    assert {a.id: a.family for a in cat.arms} == NUDGE_FAMILY
    assert {a.family for a in cat.arms} == set(FAMILIES) and len(FAMILIES) == 4
    for arm in cat.arms:
        message = arm.render(**VALUES)
        assert "{" not in message and arm.description


def test_default_catalogue_ships_with_the_package():
    path = default_catalogue_path()
    assert path.is_file() and path.parent == Path(seqrec.__file__).parent / "nudging"
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert "nudges.toml" in pyproject["tool"]["setuptools"]["package-data"]["seqrec.nudging"]


def test_restrictions_product_then_category_then_all():
    cat = load_catalogue()
    assert "urgency" not in cat.allowed(category="health") and "reminder" in cat.allowed(category="health")
    assert cat.allowed(category="electronics") == cat.ids and cat.allowed() == cat.ids
    mask = cat.mask(product=123, category="grocery")
    assert mask.dtype == bool and mask.shape == (11,)
    assert not mask[cat.index("gamified_goal")] and mask.sum() == 10
    assert cat.family_of("peer_choice") == "social_appeal"


def test_a_products_own_list_wins_over_its_category(tmp_path):
    path = tmp_path / "n.toml"
    path.write_text(arm_toml("a") + arm_toml("b") + arm_toml("c") +
                    '[products]\n"42" = ["c"]\n[categories]\nshoes = ["a", "b"]\n')
    cat = load_catalogue(path)
    assert cat.allowed(product=42, category="shoes") == ("c",)
    assert cat.allowed(product=7, category="shoes") == ("a", "b")
    assert cat.mask(product="42").tolist() == [False, False, True]
    assert cat.source == str(path)
    with pytest.raises(ValueError, match="unknown nudge 'z'"):
        cat.index("z")


def test_render_names_a_missing_placeholder():
    arm = NudgeArm("u", "decision_information", "d", "{hours} hours left for {product}")
    assert arm.placeholders == ("hours", "product")
    assert arm.render(hours=3, product="X", unused=1) == "3 hours left for X"
    with pytest.raises(ValueError, match=r"nudge 'u' needs \{hours\} to render"):
        arm.render(product="X")


# --------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("text, fragment", [
    (arm_toml(family="nagging"), "arms[0] ('hint').family: unknown family 'nagging'; valid: decision_structure"),
    (arm_toml("x") + arm_toml("y") + arm_toml("x"), "duplicate arm id 'x' in arms[0] and arms[2]"),
    (arm_toml("x") + '[products]\n"9" = ["x", "ghost"]\n', "products.9 names unknown arm 'ghost'"),
    (arm_toml("x") + '[categories]\nshoes = ["ghost"]\n', "categories.shoes names unknown arm 'ghost'"),
    (arm_toml("x") + '[categories]\nshoes = []\n', "categories.shoes must be a non-empty list"),
    (arm_toml("x") + '[categories]\nshoes = ["x", "x"]\n', "categories.shoes lists an arm twice"),
    (arm_toml("x") + '[products]\n"9" = "x"\n', "products.9 must be a non-empty list"),
    (arm_toml() + 'colour = "red"\n', "unknown key arms[0].colour; valid keys: id, family, description"),
    ('[[arms]]\nid = "x"\nfamily = "social_appeal"\ndescription = "d"\n', "arms[0] is missing 'template'"),
    ('[[arms]]\nid = 3\nfamily = "social_appeal"\ndescription = "d"\ntemplate = "t"\n',
     "arms[0].id must be non-empty text; got 3"),
    (arm_toml("bad id"), "arms[0] ('bad id'): id may hold only"),
    (arm_toml(template="see {product"), "template 'see {product'"),
    (arm_toml(template="see {}"), "must be a plain name"),
    (arm_toml(template="see {0}"), "must be a plain name"),
    ('weights = 1\n' + arm_toml(), "unknown top-level key 'weights'"),
    ('[products]\n', "needs at least one [[arms]] entry"),
    ('arms = "x"\n', "needs at least one [[arms]] entry"),
    ('[[arms]\n', "not valid TOML"),
])
def test_bad_catalogues_name_the_file_and_key(tmp_path, text, fragment):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(CatalogueError) as err:
        load_catalogue(path)
    assert str(err.value).startswith(f"{path}: ")
    assert fragment in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(CatalogueError, match="no such nudge catalogue file"):
        load_catalogue(tmp_path / "absent.toml")


# ------------------------------------------------------------------------------------ logged decisions


def _table(rows: list[tuple], with_propensity: bool = True) -> pa.Table:
    cols = ["session_id", "item_id", "event_type", "timestamp", "nudge_id", "propensity"]
    data = {c: [r[i] for r in rows] for i, c in enumerate(cols)}
    data["timestamp"] = pa.array(data["timestamp"], pa.timestamp("us", tz="UTC"))
    if not with_propensity:
        del data["propensity"]
    return pa.table(data)


def test_decisions_are_rewarded_by_what_followed_on_the_same_item():
    t = _table([
        (1, 10, "view", 0, "urgency", 0.5),          # row 0: -> cart, purchase (same item, session)
        (1, 11, "view", 1, "reminder", 0.25),        # row 1: nothing follows -> view reward
        (1, 10, "cart", 2, None, None),
        (1, 10, "purchase", 3, None, None),
        (1, 10, "view", 4, None, None),              # a new view of item 10 ends row 0's episode
        (1, 10, "cart", 5, None, None),
        (2, 11, "view", 0, "mystery", 0.1),          # unknown arm: counted, not used
        (2, 10, "like", 6, None, None),
        (2, 10, "view", 1, "urgency", 1.0),          # row 8: the like at t=6 comes after it
        (1, 11, "view", 9, "reminder", 0.3),         # row 9: a later nudge on item 11 in session 1
        (1, 11, "cart", 10, None, None),
    ])
    arms = ("urgency", "reminder")
    d = nudge_decisions(t, arms)
    assert d.row.tolist() == [0, 1, 8, 9]                               # time order, then input order
    assert d.arm.tolist() == [0, 1, 0, 1]
    r = DEFAULT_REWARDS
    assert d.reward.tolist() == [r["purchase"], r["view"], r["like"], r["cart"]]
    assert d.propensity.tolist() == [0.5, 0.25, 1.0, 0.3]
    assert dict(d.unknown) == {"mystery": 1}
    d2 = nudge_decisions(t.drop_columns(["propensity"]), arms, rewards={**r, "purchase": 5.0})
    assert d2.reward[0] == 5.0 and np.isnan(d2.propensity).all()


def test_decisions_fall_back_to_user_sessions_and_reject_unknown_event_types():
    t = _table([(1, 10, "view", 0, "urgency", 0.5), (2, 10, "cart", 1, None, None)])
    by_user = t.rename_columns(["user_id", *t.column_names[1:]])
    assert nudge_decisions(by_user, ("urgency",)).reward.tolist() == [DEFAULT_REWARDS["view"]]
    with pytest.raises(ValueError, match="lacks column"):
        nudge_decisions(t.drop_columns(["session_id"]), ("urgency",))
    with pytest.raises(ValueError, match=r"no reward for event type\(s\) \['cart'\]"):
        nudge_decisions(t, ("urgency",), rewards={"view": 0.2})


def test_synthetic_log_decisions_feed_the_bandits():
    log = generate_events(SyntheticConfig(users=200, items=60, seed=3))
    cat = load_catalogue()
    d = nudge_decisions(log, cat.ids)
    nudged = np.flatnonzero(~np.asarray(log["nudge_id"].is_null()))
    assert sorted(d.row.tolist()) == nudged.tolist() and not d.unknown   # every nudged row, once
    assert set(np.unique(d.reward)) <= {DEFAULT_REWARDS[e] for e in ("view", "like", "cart", "purchase")}
    np.testing.assert_array_equal(d.propensity, log["propensity"].to_numpy(zero_copy_only=False)[d.row])
    bandit = BanditConfig(kind="thompson", mc_samples=50).create(cat.ids)
    fit = fit_offline(bandit, d.arm, d.reward, d.propensity, method="ips")
    assert fit.used == len(d.row) > 0
    assert bandit.alpha.sum() + bandit.beta.sum() - 2 * len(cat.ids) == pytest.approx(
        (1 / (len(cat.ids) * d.propensity)).sum())
