"""What the commands print: the prepare summary, the metrics table, the score summary (manifest figures as text)."""

from __future__ import annotations

from pathlib import Path


def score_summary(m: dict, out: Path) -> str:
    """What `seqrec score` prints: the counts of manifest.json and where the output is."""
    s = m["sessions"]
    lines = [f"scored {s['scored']:,} sessions -> {m['rows']:,} rows in {len(m['parts'])} part(s) under {out}"
             + ("  (re-used: same job already complete)" if m.get("reused") else "")
             + ("  (resumed)" if m.get("resumed") else ""),
             f"  rows read {m['rows_read']:,}  kept {m['rows_kept']:,}  quarantined {m['rows_quarantined']:,}"
             + (f"  excluded {m['rows_excluded']:,}" if m["rows_excluded"] else "")
             + (f"  -> {out / 'quarantine.parquet'}" if m["rows_quarantined"] else ""),
             f"  popularity fallback {s['fallback']:,} sessions; index: {m['index']}; nudges: {m['policy']}",
             f"  model {m['model_version']}  config hash {m['config_hash']}"]
    if not m.get("reused"):
        lines.append(f"  time {m['timings']['total_s']:.2f} s ({m['sessions_per_s']:,.0f} sessions/s)")
    return "\n".join(lines)


def metrics_table(metrics: dict, split: str) -> str:
    """Markdown table of a split's metrics per event type, model beside the popularity and recent baselines."""
    lines = [f"| {split} | events | HR@5 | NDCG@5 | HR@10 | NDCG@10 | HR@20 | NDCG@20 |", "|---" * 8 + "|"]
    blocks = [("model", metrics[split]), ("popularity", metrics["popularity"][split])]
    for rule in ("recent", "recent_category"):
        if split in metrics.get(rule, {}):
            blocks.append((rule, metrics[rule][split]))
    if split in metrics.get("pipeline", {}):
        blocks.insert(1, ("pipeline", metrics["pipeline"][split]))
    for who, rows in blocks:
        for ev, r in rows.items():
            vals = " | ".join(f"{r[f'{m}@{k}']:.4f}" for k in (5, 10, 20) for m in ("hr", "ndcg"))
            lines.append(f"| {who} {ev} | {r['count']:,} | {vals} |")
    return "\n".join(lines)


def repeat_table(metrics: dict, split: str) -> str:
    """Markdown table of a split's HR@10 / NDCG@10 on repeat targets (in the window) and explore targets (not),
    model (and pipeline) beside the baselines; empty where metrics.json has no such split (older files)."""
    blocks = [("model", metrics.get(split, {}))] + [(who, metrics.get(who, {}).get(split, {}))
                                                    for who in ("pipeline", "popularity", "recent", "recent_category")]
    lines = []
    for who, rows in blocks:
        for ev, r in rows.items():
            if "repeat" not in r:
                continue
            cells = []
            for group in ("repeat", "explore"):
                g = r[group]
                share = g["count"] / r["count"] if r["count"] else 0.0
                cells.append(f"{g['count']:,} ({share:.1%})")
                cells += ["-" if g[m] is None else f"{g[m]:.4f}" for m in ("hr@10", "ndcg@10")]
            lines.append(f"| {who} {ev} | " + " | ".join(cells) + " |")
    if not lines:
        return ""
    head = [f"| {split} | repeat targets | HR@10 | NDCG@10 | explore targets | HR@10 | NDCG@10 |", "|---" * 7 + "|"]
    return "\n".join(head + lines)


def summary(m: dict, out: Path) -> str:
    """The human-readable summary printed by `seqrec prepare` (the same figures as manifest.json)."""
    lines = [f"prepared {out}" + ("  (re-used: inputs and config unchanged)" if m.get("reused") else "")]
    lines.append(f"  rows read {m['rows_read']:,}  kept {m['rows_kept']:,}  quarantined {m['rows_quarantined']:,}"
                 + (f"  excluded {m['rows_excluded']:,}" if m.get("excluded_by_event") else ""))
    if m["quarantine_reasons"]:
        reasons = ", ".join(f"{k} {v:,}" for k, v in m["quarantine_reasons"].items())
        lines.append(f"  quarantine: {reasons}  -> {out / 'quarantine.parquet'}")
    if m.get("excluded_by_event"):
        lines.append("  excluded (event map -> drop): "
                     + ", ".join(f"{k} {v:,}" for k, v in m["excluded_by_event"].items()))
    lines.append("  events: " + ", ".join(f"{k} {v:,}" for k, v in m["events_by_type"].items()))
    s = m["sessions"]
    lines.append(f"  sessions {s['before_filter']:,} -> {s['after_filter']:,} "
                 f"(dropped {s['dropped_short']:,} shorter than {s['min_length']}, {s['events_in_dropped']:,} events)")
    if s.get("max_sessions") is not None:
        lines.append(f"  sampled {s['after_filter'] - s['sampled_out']:,} of {s['after_filter']:,} sessions "
                     f"(max {s['max_sessions']:,}; {s['events_sampled_out']:,} events left out); events and "
                     "items above and below count the sample")
    lines.append(f"  items {m['items']:,} (catalogue size with padding and OOV: {m['catalogue_size']:,})")
    lines.append("  splits: " + ", ".join(f"{k} {v['sessions']:,} sessions / {v['events']:,} events"
                                          for k, v in m["splits"].items()))
    t = m.get("timings", {})
    if t.get("total_s") and not m.get("reused"):
        lines.append(f"  time {t['total_s']:.2f} s ({m['rows_read'] / max(t['total_s'], 1e-9):,.0f} rows/s)")
    return "\n".join(lines)

