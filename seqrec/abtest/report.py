"""The A/B test's figures, plots and report: per-arm summaries, the comparison, report.md and the PNGs.

Plots use matplotlib's object API on an Agg canvas (no pyplot, no global backend switched at import).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from seqrec.abtest.stats import newcombe, paired_difference, two_proportion_z, wilson
from seqrec.campaign.records import CampaignLog
from seqrec.campaign.simulator import Simulator
from seqrec.datasets.synthetic import NUDGE_FAMILIES

ARM_NAMES = {"A": "A: rules (segment products, fixed nudge)", "B": "B: pipeline (two-tower + Q re-rank, bandit nudge)"}
OFFERS_NAME = "B: offer-level Q learner (product and nudge jointly)"


def arm_name(arm: str, m: dict) -> str:
    return OFFERS_NAME if arm == "B" and m.get("learner") == "offers" else ARM_NAMES[arm]
PAPER = ("Kristiana et al. (2025) report CR = 10.5% for the rule-based campaign against 52.87% for their AI "
         "pipeline in their own simulation")
CURVE_POINTS = 100   # points of the cumulative curves kept in metrics.json


def _rate(x: float, n: float) -> float:
    return float(x / n) if n else math.nan


def arm_summary(sim: Simulator, log: CampaignLog, rows: np.ndarray, batch_size: int, level: float) -> dict:
    """{"metrics": JSON-ready figures of the arm's test wave, "series": arrays for the plots}."""
    product, nudge = log.decisions.product[rows], log.decisions.nudge[rows]
    bought, prob = log.purchased[rows], log.probability[rows]
    time_us, n = log.contacts.time_us[rows], len(rows)
    users, purchases = len(np.unique(log.contacts.customer[rows])), int(bought.sum())
    low, high = wilson(purchases, users, level)
    family = np.where(nudge >= 0, sim.arm_family[np.maximum(nudge, 0)], -1)
    families = {f: {"shown": int((family == i).sum()), "share": _rate((family == i).sum(), n),
                    "purchases": int(bought[family == i].sum()),
                    "conversion": _rate(bought[family == i].sum(), (family == i).sum()),
                    "expected_conversion": _rate(prob[family == i].sum(), (family == i).sum())}
                for i, f in enumerate(NUDGE_FAMILIES)}
    nudges = {a: {"shown": int((nudge == j).sum()), "purchases": int(bought[nudge == j].sum()),
                  "conversion": _rate(bought[nudge == j].sum(), (nudge == j).sum())} for j, a in enumerate(sim.arms)}
    products = {p: {"offered": int((product == j).sum()), "purchases": int(bought[product == j].sum()),
                    "conversion": _rate(bought[product == j].sum(), (product == j).sum())}
                for j, p in enumerate(sim.product_ids)}
    seen = np.arange(1, n + 1)
    cum, cum_expected = np.cumsum(bought) / seen, np.cumsum(prob) / seen       # (n,) each customer contacted once
    starts = np.arange(0, n, batch_size)
    shares = np.stack([np.bincount(nudge[s:s + batch_size][nudge[s:s + batch_size] >= 0], minlength=sim.n_arms)
                       / len(nudge[s:s + batch_size]) for s in starts]) if n else np.zeros((0, sim.n_arms))
    keep = np.unique(np.linspace(0, n - 1, min(CURVE_POINTS, n)).astype(int)) if n else np.zeros(0, int)
    metrics = {"contacts": n, "users": users, "purchases": purchases, "cr": _rate(purchases, users),
               "cr_low": low, "cr_high": high, "expected_cr": _rate(prob.sum(), users),
               "families": families, "nudges": nudges, "products": products,
               "curve": {"contacts": (keep + 1).tolist(), "cr": cum[keep].tolist(),
                         "expected_cr": cum_expected[keep].tolist()}}
    series = {"time_us": time_us, "cum": cum, "cum_expected": cum_expected, "shares": shares,
              "share_time_us": time_us[np.minimum(starts + batch_size, n) - 1] if n else time_us}
    return {"metrics": metrics, "series": series}


def comparison(a: dict, b: dict, bought_a: np.ndarray, bought_b: np.ndarray, level: float) -> dict:
    """B against A: the difference with Newcombe's interval, the two-proportion z-test, the paired difference."""
    diff, low, high = newcombe(a["purchases"], a["users"], b["purchases"], b["users"], level)
    z, p = two_proportion_z(a["purchases"], a["users"], b["purchases"], b["users"])
    paired = paired_difference(bought_a.astype(float), bought_b.astype(float), level)
    return {"difference": diff, "difference_low": low, "difference_high": high, "z": z, "p_value": p,
            "relative_lift": _rate(b["cr"] - a["cr"], a["cr"]), "level": level,
            "paired": {"difference": paired.mean, "low": paired.low, "high": paired.high, "z": paired.z,
                       "p_value": paired.p_value, "customers": paired.n}}


# -------------------------------------------------------------------------------------------------- plots


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _dates(time_us: np.ndarray) -> np.ndarray:
    return np.asarray(time_us, dtype=np.int64).astype("datetime64[us]")


def plot_conversion(path: Path, series: dict[str, dict], names: dict[str, str] = ARM_NAMES) -> None:
    """Cumulative CR of each arm over the test wave (sampled, and the exact expectation dashed)."""
    fig = _figure(8, 4.5)
    ax = fig.add_subplot()
    for (arm, s), colour in zip(series.items(), ("tab:blue", "tab:orange")):
        t = _dates(s["time_us"])
        ax.plot(t, 100 * s["cum"], color=colour, label=names[arm])
        ax.plot(t, 100 * s["cum_expected"], color=colour, linestyle="--", linewidth=1,
                label=f"{arm}: expected (exact)")
    settled = [100 * np.r_[s["cum"][len(s["cum"]) // 50:], s["cum_expected"][len(s["cum"]) // 50:]]
               for s in series.values()]
    if all(len(x) for x in settled):   # the first 2% of contacts swing widely: scale to the rest
        low, high = min(x.min() for x in settled), max(x.max() for x in settled)
        ax.set_ylim(max(0.0, low - 0.1 * (high - low) - 1), high + 0.1 * (high - low) + 1)
    ax.set_xlabel("contact date (test wave)")
    ax.set_ylabel("cumulative CR = purchases / customers (%)")
    ax.set_title("Cumulative conversion per arm")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.autofmt_xdate()
    fig.savefig(path)


def plot_shares(path: Path, series: dict, sim: Simulator) -> None:
    """Arm B's nudge choices per batch (the bandit's arm shares), arms coloured by family."""
    from matplotlib import colormaps

    fig = _figure(9, 4.5)
    ax = fig.add_subplot()
    cmap = colormaps["tab20c"]
    colours, rank = [], {}
    for a in range(sim.n_arms):
        f = int(sim.arm_family[a])
        rank[f] = rank.get(f, -1) + 1
        colours.append(cmap(4 * f + min(rank[f], 3)))
    t = _dates(series["share_time_us"])
    labels = [f"{a} ({NUDGE_FAMILIES[sim.arm_family[j]].replace('decision_', '')})" for j, a in enumerate(sim.arms)]
    ax.stackplot(t, 100 * series["shares"].T, labels=labels, colors=colours, step="post")
    ax.set_ylim(0, 100)
    ax.set_xlabel("date of the batch's last contact (test wave)")
    ax.set_ylabel("share of the batch's nudges (%)")
    ax.set_title("Arm B: the bandit's nudge choices, batch by batch")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path)


# ------------------------------------------------------------------------------------------------ markdown


def _pct(x: float, digits: int = 2) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.{digits}f}%"


def _pp(x: float) -> str:
    return f"{100 * x:+.2f} pp"


def _p(p: float) -> str:
    """'p = 0.0029' (two significant digits; erfc keeps tiny p-values accurate, so none is cut off)."""
    return f"p = {p:.2g}"


def _path(path: str) -> str:
    """A path relative to the working directory when it lies below it or beside it, else as given."""
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return rel if not rel.startswith("../..") else path


def report_markdown(m: dict) -> str:
    """report.md from the metrics (everything in it is in metrics.json too)."""
    cfg, tr, cmp_ = m["config"], m["training"], m["comparison"]
    level = f"{100 * cfg['level']:g}%"
    lines = ["# A/B test: rule-based campaign (A) against the learnt decisions (B)", ""]
    if m.get("command"):
        lines += ["```bash", m["command"], "```", ""]
    model = cfg["model"]
    lines += [
        f"Simulator `{_path(m['simulator']['config'])}` calibrated on `{_path(m['simulator']['calibration'])}` "
        f"({m['simulator']['uci_rows']:,} rows); {m['customers']:,} customers; seed {cfg['seed']}.",
        "",
        f"- **Training campaign**: {cfg['training']['waves']} wave(s) of the `{cfg['training']['policy']}` policy"
        + (f" (epsilon {cfg['training']['epsilon']:g})" if cfg['training']['policy'] == 'rules' else "")
        + f", {tr['contacts']:,} contacts, {tr['purchases']:,} purchases ({_pct(tr['conversion'])} a contact). "
        + (f"Its log ({tr['events']:,} events, one sequence per customer) trained the pipeline: "
           f"{model['encoder']['kind']} (dim {model['encoder']['dim']}) with the {model['head']['variant']} head, "
           f"{model['train']['max_steps']} steps (best {tr['select_metric']} = {_num(tr['best'])} at step "
           f"{tr['best_step']}), then the two-tower ({model['retrieval']['max_steps']} steps; user features "
           f"{', '.join(model['retrieval'].get('user_categorical', [])) or 'none'})"
           + (" (for the rank-agreement figures; arm B is the offer learner)." if m.get("learner") == "offers"
              else ".") if "events" in tr else "")
        + (offers_sentence(m["offers"], cfg["offers"]) if m.get("offers") else ""),
        f"- **Test wave**: {m['test_contacts']:,} contacts per arm, one per customer, the same customers at the "
        "same times with the same random numbers in both arms; decisions in batches of "
        f"{cfg['batch_size']} (the bandit learns between batches).",
        "- **Arm A**: the simulator's `[rules]`: per segment the first listed product not held, one fixed nudge"
        + (f", epsilon {cfg['arm_a']['epsilon']:g}" if cfg['arm_a']['epsilon'] else "") + ".",
        (f"- **Arm B**: the offer-level Q learner's {m['bandit']['kind']} decision (epsilon "
         f"{m['bandit']['epsilon']:g}) over every (product, nudge) pair the customer may be offered (products not "
         "held, nudges allowed with the product), from the customer's logged events and profile; the joint "
         "propensity of each decision is logged." if m.get("learner") == "offers" else
         f"- **Arm B**: {model['rerank']['candidates']} two-tower candidates among the products the customer does "
         f"not hold, re-ranked by the blend w_tt = {model['rerank']['w_tt']:g}, w_sup = {model['rerank']['w_sup']:g},"
         f" w_q = {model['rerank']['w_q']:g}; nudge by a {m['bandit']['kind']} bandit (epsilon "
         f"{m['bandit']['epsilon']:g}, "
         f"{'warm-started on the training log' if m['bandit']['warm_start'] else 'cold start'}) updated online "
         f"with each batch's purchases ({m['bandit']['updates']:,} updates)."),
        "", "## Conversion", "",
        f"CR = purchases through recommendations / customers contacted x 100. Interval: Wilson score, {level}. "
        "Expected CR: the exact mean purchase probability of the offers made (the simulator's), beside the sampled.",
        "",
        f"| arm | customers | purchases | CR | {level} interval | expected CR |", "|---|---|---|---|---|---|",
    ]
    for arm, a in m["arms"].items():
        lines.append(f"| {arm_name(arm, m)} | {a['users']:,} | {a['purchases']:,} | {_pct(a['cr'])} | "
                     f"[{_pct(a['cr_low'])}, {_pct(a['cr_high'])}] | {_pct(a['expected_cr'])} |")
    pr = cmp_["paired"]
    lines += [
        "",
        f"B - A: {_pp(cmp_['difference'])}, {level} interval [{_pp(cmp_['difference_low'])}, "
        f"{_pp(cmp_['difference_high'])}] (Newcombe's hybrid score interval); relative lift "
        f"{_pct(cmp_['relative_lift'], 1)}; two-proportion z-test (pooled): z = {cmp_['z']:.2f}, "
        f"{_p(cmp_['p_value'])}.",
        f"Paired over the same {pr['customers']:,} customers (common random numbers): {_pp(pr['difference'])}, "
        f"[{_pp(pr['low'])}, {_pp(pr['high'])}], z = {pr['z']:.2f}, {_p(pr['p_value'])} (the arms are not "
        "independent samples here, so the two-proportion test above is conservative).",
        "", *references_markdown(m["references"]),
        *(gate_markdown(m["gate"], m["arms"]["B"], level) if m.get("gate") else []),
        "", "## Nudge uptake per family", "",
        "| arm | family | shown | share of contacts | purchases | conversion | expected conversion |",
        "|---|---|---|---|---|---|---|",
    ]
    for arm, a in m["arms"].items():
        for f, r in a["families"].items():
            lines.append(f"| {arm} | {f} | {r['shown']:,} | {_pct(r['share'], 1)} | {r['purchases']:,} | "
                         f"{_pct(r['conversion'])} | {_pct(r['expected_conversion'])} |")
    lines += ["", "## Products offered", "", "| product | A offered | A conversion | B offered | B conversion |",
              "|---|---|---|---|---|"]
    for p in m["arms"]["A"]["products"]:
        ra, rb = m["arms"]["A"]["products"][p], m["arms"]["B"]["products"][p]
        lines.append(f"| {p} | {ra['offered']:,} | {_pct(ra['conversion'])} | {rb['offered']:,} | "
                     f"{_pct(rb['conversion'])} |")
    lines += ["", "![cumulative conversion](cumulative_conversion.png)", "",
              "![bandit arm shares](bandit_arm_shares.png)", ""]
    if m["bandit"]["values"] is not None:
        values = ", ".join(f"{a} {_pct(v)}" for a, v in zip(m["bandit"]["arms"], m["bandit"]["values"]))
        lines += [f"The bandit's purchase rate per nudge at the end of the test: {values}.", ""]
    lines += ope_markdown(m["ope"], level)
    lines += ["", "## For reference", "",
              f"{PAPER}. The figures above come from this simulator's stated assumptions (the simulator config) and "
              "were not tuned towards them.", ""]
    return "\n".join(lines)


def references_markdown(r: dict) -> list[str]:
    """What only the simulator knows about the test contacts."""
    agree = r["rank_agreement"]
    names = {"two_tower": "two-tower", "supervised": "supervised", "q": "Q", "offer_q": "offer Q (arm B)"}
    scores = ", ".join(f"{names.get(k, k)} {v:+.2f}" for k, v in agree.items() if math.isfinite(v))
    return [f"Known only to the simulator, on the same test contacts: random offers (uniform over the products "
            f"not held and their allowed nudges) would convert {_pct(r['random_cr'])} and the best offer for every "
            f"contact (an oracle that knows each customer's tastes) {_pct(r['oracle_cr'])}, both expected values. "
            f"Arm B's product scores against the true purchase probability of the products a customer does not "
            f"hold (Spearman's rank correlation per contact, averaged): {scores}."]


def offers_sentence(o: dict, cfg: dict) -> str:
    """How the offer learner was fitted, for the training bullet."""
    return (f" The offer-level Q learner trained on its {o['offers']:,} offers (reward mean {_pct(o['reward_mean'])}; "
            f"gamma {cfg['gamma']:g}, {cfg['head']} head, history {cfg['history']}): "
            f"{o['train_offers']:,} offers of {100 * (1 - cfg['valid_fraction']):.0f}% of the customers, epoch "
            f"{o.get('best_epoch')} of {o['epochs']} chosen by {o['select']} on the others' {o['valid_offers']:,}."
            + selection_sentence(o.get("selection") or {}))


def selection_sentence(sel: dict) -> str:
    """What the grids compared on the held-out customers (each candidate's estimate and interval) and chose."""
    def pct(c: dict) -> str:
        return f"{_pct(c['estimate'])} [{_pct(c['low'])}, {_pct(c['high'])}]"

    out = ""
    if "wide" in sel:
        w = sel["wide"]
        cands = "; ".join(f"wide_l2 {c['wide_l2']:g}, cross {'+'.join(c['cross']) or 'all'}: {pct(c)}"
                          for c in w["candidates"])
        pick = w["candidates"][w["chosen"]]
        out += (f" The wide model's settings by {w['estimator']} (the default kept unless beaten beyond chance): "
                f"{cands}; chosen wide_l2 {pick['wide_l2']:g}, cross {'+'.join(pick['cross']) or 'all'}.")
    if "candidates" in sel.get("decision", {}):
        d = sel["decision"]
        cands = "; ".join(f"epsilon {c['epsilon']:g}: {pct(c)}" + ("" if c["eligible"] else " (below the floor)")
                          for c in d["candidates"])
        out += (f" The exploration share by {d['estimator']} under the floor of {d['min_propensity']:g} a pair: "
                f"{cands}; chosen epsilon {d['candidates'][d['chosen']]['epsilon']:g}.")
    return out


def gate_markdown(g: dict, b: dict, level: str) -> list[str]:
    """The go / no-go made before the test, beside what the test then measured."""
    d = g["difference"]
    who = "the customers the learner never trained on" if g.get("held_out_only") else "every customer"
    return ["", "## The gate (before the test)", "",
            f"Off-policy estimate ({g['estimator'].upper()}) of arm B's decision policy on the training campaign's "
            f"last wave ({g['contacts']:,} contacts of {who}), against the rules on the same contacts, "
            f"{level} bootstrap intervals (paired for the difference):", "",
            "| policy | estimate | interval |", "|---|---|---|",
            f"| B (new) | {_pct(g['estimate'])} | [{_pct(g['low'])}, {_pct(g['high'])}] |",
            f"| A (rules, current) | {_pct(g['current']['estimate'])} | [{_pct(g['current']['low'])}, "
            f"{_pct(g['current']['high'])}] |",
            f"| B - A | {_pp(d['estimate'])} | [{_pp(d['low'])}, {_pp(d['high'])}] |", "",
            f"Decision: **{g['decision']}** (go when the difference's interval lies above 0). Then measured in the "
            f"test wave: B converted {_pct(b['cr'])} (expected {_pct(b['expected_cr'])}); the test wave is one "
            "contact later than the logged wave, so one more contact's fatigue lowers it."]


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def ope_markdown(o: dict, level: str) -> list[str]:
    """The OPE-against-truth section: the table, or why there is no estimate."""
    lines = ["## Off-policy evaluation against the simulator's truth", "",
             f"Log: {o['contacts']:,} first contacts decided by `{o['logging']}` (joint product and nudge decisions "
             f"with their propensities; sampled CR {_pct(o['logged_value'])}). Target: `{o['target']}`. Truth: its "
             f"exact expected CR on the logged contacts, {_pct(o['truth'], 3)}; run in the simulator on the same "
             f"customers with the same seed it converts {_pct(o['run_sampled'], 3)} (expected "
             f"{_pct(o['run_expected'], 3)} for the offers it drew).", ""]
    if not o["overlap"]:
        lines += [f"**No estimate.** The logging policy decided deterministically for "
                  f"{_pct(o['deterministic_share'], 1)} of the contacts (propensity 1), and "
                  f"{_pct(o['unsupported'], 1)} of the target's probability mass lies on offers it could never have "
                  "made there. A deterministic rule-based campaign gives no overlap with another policy and cannot "
                  "serve as the logging policy: IPS, SNIPS and DR cannot see that mass and DM could only extrapolate "
                  "to it, so any figure would be meaningless and none is printed. Log with exploration (the random "
                  "policy, or the rules with epsilon > 0) to evaluate other policies."]
        return lines
    lines += [f"| estimator | estimate | {level} interval (bootstrap) | truth | relative error | interval covers "
              "truth | ESS |", "|---|---|---|---|---|---|---|"]
    for e in o["estimates"]:
        lines.append(f"| {e['estimator'].upper()} | {_pct(e['value'], 3)} | [{_pct(e['low'], 3)}, "
                     f"{_pct(e['high'], 3)}] | {_pct(o['truth'], 3)} | {100 * e['relative_error']:+.1f}% | "
                     f"{'yes' if e['covers_truth'] else 'no'} | {e['ess']:,.0f} |")
    notes = sorted({e["note"] for e in o["estimates"] if e.get("note")})
    lines += ["", *(f"Note ({', '.join(e['estimator'].upper() for e in o['estimates'] if e.get('note') == n)}): "
                    f"{n}" + (", so the interval leaves out the model's own fitting error." if "held fixed" in n
                              else ".") for n in notes)]
    for w in o["warnings"]:
        lines += ["", f"Warning: {w}"]
    return lines


def write_outputs(out: Path, metrics: dict, arms: dict[str, dict], sim: Simulator) -> None:
    """OUT/report.md and the two PNGs."""
    plot_conversion(out / "cumulative_conversion.png", {arm: s["series"] for arm, s in arms.items()},
                    {arm: arm_name(arm, metrics) for arm in arms})
    plot_shares(out / "bandit_arm_shares.png", arms["B"]["series"], sim)
    (out / "report.md").write_text(report_markdown(metrics))
