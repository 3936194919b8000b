"""Run `seqrec abtest` over seeds and simulated worlds and write the table of arm B against the rules, beside the
simulator's references (random offers, the per-contact oracle) and the gate's estimate made before each test.

    python experiments/abtest_table.py --out runs/abtest_table --seeds 0,1,2,3,4
    python experiments/abtest_table.py --out runs/abtest_table --seeds 0,1,2 --worlds equal_nudges,wide_taste

Worlds (the simulator's assumptions, changed through `seqrec abtest --sim-set`, experiments/configs/campaign_sim.toml
otherwise untouched): `main` as shipped; `equal_nudges`, each nudge family's effect the same in every segment
(about the segments' average: decision structure 1.3, information 1.1, assistance 1.2, social appeal 1.2);
`wide_taste`, customers' own tastes spread twice as wide (taste_sd 1.0 instead of 0.5). A seed's finished run
(its metrics.json) is re-used.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

CONFIG = Path(__file__).resolve().parent / "configs" / "abtest.toml"
WORLDS: dict[str, tuple[str, ...]] = {
    "main": (),
    "equal_nudges": ("nudges.odds_ratio.decision_structure=1.3", "nudges.odds_ratio.decision_information=1.1",
                     "nudges.odds_ratio.decision_assistance=1.2", "nudges.odds_ratio.social_appeal=1.2"),
    "wide_taste": ("population.taste_sd=1.0",),
}


def command(out: Path, seed: int, world: str, extra: list[str]) -> list[str]:
    """The seqrec abtest command line of one (world, seed)."""
    sets = [x for s in WORLDS[world] for x in ("--sim-set", s)]
    return ["seqrec", "abtest", "--config", str(CONFIG), "--seed", str(seed), "--out", str(out), *sets, *extra]


def run_one(folder: Path, seed: int, world: str, extra: list[str]) -> dict:
    """metrics.json of one test, running it unless a finished one is there."""
    out = folder / world / f"seed{seed}"
    if not (out / "metrics.json").exists():
        subprocess.run(command(out, seed, world, extra), check=True, stdout=sys.stderr)
    return json.loads((out / "metrics.json").read_text())


def row(seed: int, m: dict) -> dict:
    """The figures of one test (fractions)."""
    a, b, r, g = m["arms"]["A"], m["arms"]["B"], m["references"], m.get("gate") or {}
    return {"seed": seed, "a": a["expected_cr"], "b": b["expected_cr"], "a_cr": a["cr"], "b_cr": b["cr"],
            "diff": b["expected_cr"] - a["expected_cr"], "p": m["comparison"]["paired"]["p_value"],
            "random": r["random_cr"], "oracle": r["oracle_cr"], "gate": g.get("estimate"), "low": g.get("low"),
            "high": g.get("high"), "decision": g.get("decision"),
            "covers": g.get("low") is not None and g["low"] <= b["expected_cr"] <= g["high"],
            "offer_q": r["rank_agreement"].get("offer_q")}


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def table(world: str, rows: list[dict]) -> list[str]:
    """The markdown table of one world and its summary line."""
    lines = [f"### World: {world}", "",
             "| seed | A rules (exact) | B offer learner (exact) | B - A | paired p | B sampled | random | oracle | "
             "gate estimate [interval] | covers B | decision | offer-Q rank agreement |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['seed']} | {pct(r['a'])} | {pct(r['b'])} | {100 * r['diff']:+.2f} | {r['p']:.1e} | "
                     f"{pct(r['b_cr'])} | {pct(r['random'])} | {pct(r['oracle'])} | {pct(r['gate'])} "
                     f"[{pct(r['low'])}, {pct(r['high'])}] | {'yes' if r['covers'] else 'no'} | {r['decision']} | "
                     f"{r['offer_q']:+.2f} |")
    diffs = [100 * r["diff"] for r in rows]
    gap = [(r["b"] - r["a"]) / (r["oracle"] - r["a"]) for r in rows]
    lines += ["", f"B - A over {len(rows)} seeds: mean {statistics.mean(diffs):+.2f} points, min {min(diffs):+.2f}, "
                  f"max {max(diffs):+.2f}; share of the rules-to-oracle gap closed: mean "
                  f"{100 * statistics.mean(gap):.0f}%; gate interval covers B's exact conversion in "
                  f"{sum(r['covers'] for r in rows)} of {len(rows)}; paired p < 0.01 in "
                  f"{sum(r['p'] < 0.01 for r in rows)} of {len(rows)}.", ""]
    return lines


def selection(world: str, seeds: list[int], metrics: list[dict]) -> list[str]:
    """What arm B's selection chose in each test (metrics.json["offers"]["selection"]), each candidate's held-out
    estimate with its interval; nothing when the tests had no grids."""
    if not any((m.get("offers") or {}).get("selection") for m in metrics):
        return []

    def est(c: dict) -> str:
        return f"{pct(c['estimate'])} [{pct(c['low'])}, {pct(c['high'])}]"

    lines = [f"Selection on the held-out customers ({world}; SNIPS, candidates in the order of the config, the chosen "
             "in bold):", "", "| seed | epoch | wide_l2: estimate [interval] | epsilon: estimate [interval] |",
             "|---|---|---|---|"]
    for seed, m in zip(seeds, metrics):
        o = m.get("offers") or {}
        sel = o.get("selection") or {}
        cells = []
        for key, name in (("wide", "wide_l2"), ("decision", "epsilon")):
            part = sel.get(key) or {}
            cells.append("; ".join(("**{}**" if i == part["chosen"] else "{}").format(f"{c[name]:g}: {est(c)}")
                                   for i, c in enumerate(part.get("candidates", []))) or "-")
        lines.append(f"| {seed} | {o.get('best_epoch')} | {cells[0]} | {cells[1]} |")
    return lines + [""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for the tests and table.md")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--worlds", default="main", help=f"comma-separated, of {', '.join(WORLDS)}")
    ap.add_argument("--arg", action="append", default=[], help="extra seqrec abtest argument (repeatable)")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    out: list[str] = []
    for world in args.worlds.split(","):
        metrics = [run_one(args.out, s, world, args.arg) for s in seeds]
        rows = [row(s, m) for s, m in zip(seeds, metrics)]
        out += table(world, rows) + selection(world, seeds, metrics)
        print("\n".join(table(world, rows) + selection(world, seeds, metrics)), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
