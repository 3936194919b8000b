"""Batch scoring, the pure half: a run loaded once (`load_bundle`) and `score_batch(bundle, sessions) -> rows`.

The engine seam (DESIGN.md): an engine turns raw events into tables of session states (seqrec/sessions_state.py)
and calls `score_batch` on each table; the local engine (seqrec/engines.py) does it bucket by bucket on one
machine, a Ray engine calls the very same function inside `map_batches` on actors that each call
`load_bundle` once. `score_batch` reads nothing but its two arguments and changes neither, so a given
(bundle, batch) gives the same rows in any process, in any order of batches:

- the state of a session is its last W item ids (`items`, oldest first), mapped through the run's vocabulary
  here (unknown ids -> the out-of-vocabulary index 1); for a run with `[encoder] events` also their event types
  (`item_events`: the run's event code + 1 of each, `state_event_codes`), which the learner reads beside them;
- with a retrieval model (RUN/retrieval) the two-tower retrieves `candidates` items through the index and the
  learner re-ranks them (seqrec/rerank.py); without one the learner's supervised scores over the whole
  catalogue give the candidates and the same blend ranks them (two_tower_score is then null);
- a session with no known item gets the `top` most popular items, flagged `fallback` (its model scores null);
- each recommended item gets a nudge drawn from the bandit's probabilities over the arms the catalogue allows
  with that item, with the propensity of the draw. The draw's uniform number is a hash of (seed, session key,
  rank), not a shared random stream: that is what makes the output independent of batching and resumable;
- each row also carries `product_propensity` (P(item at this rank) = 1: the ranking is deterministic) and
  `joint_propensity` = product_propensity * propensity, the probability of the (product, nudge) decision;
- with the run's offer learner (RUN/offers), each row also carries its session's offer: one (product, nudge)
  decided by the learner's Q and the decision layer, with its propensities (seqrec/serve/offers.py).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from seqrec.core.config import ConfigError
from seqrec.datasets.inputs import file_sha256
from seqrec.datasets.manifest import event_names, read_manifest
from seqrec.datasets.schema import FIRST_ITEM, OOV
from seqrec.nudging.catalogue import NudgeCatalogue, default_catalogue_path, load_catalogue
from seqrec.retrieval.config import RerankConfig
from seqrec.retrieval.features import FeatureSpec, item_rows
from seqrec.retrieval.rerank import Candidates, Pipeline, blend, build_pipeline, top_order
from seqrec.retrieval.rerank import rerank_batch as pipeline_batch
from seqrec.retrieval.two_tower import load_two_tower
from seqrec.rl.bandits.fit import load_bandit
from seqrec.rl.bandits.joint import joint_propensity
from seqrec.rl.bandits.policies import Bandit
from seqrec.rl.qlearning.learner import Learner
from seqrec.runs.config import saved_config
from seqrec.runs.learner import build_learner
from seqrec.runs.score_config import ScoreConfig
from seqrec.serve.draws import draw_arms, session_keys, uniforms
from seqrec.serve.offer_settings import OfferSettings
from seqrec.serve.offers import (
    OFFER_RANK,
    OfferScorer,
    decide_offers,
    keep_columns,
    load_offer_scorer,
    offer_columns,
)
from seqrec.serve.windows import event_windows, item_windows, run_event_codes
from seqrec.training.checkpoints import load_checkpoint

SCORE_FORMAT = 1
MODEL_CHUNK = 1024  # sessions per pass of the learner alone: bounds its (chunk, I) catalogue scores
RETRIEVAL_CHUNK = 4096  # sessions per pass with a retrieval model: faiss's flat search costs half as much per
# query on 2,048 queries or more as on 1,024 (measured: 92 against 192 us at 26,702 items, k = 200)
ROW_MULTIPLE = 64  # model passes are padded to a multiple of this many rows (the same kernels for every batch)


@dataclass(frozen=True)
class ScoringBundle:
    """Everything score_batch reads, loaded once per process: models, vocabulary, popularity, nudge policy."""

    learner: torch.nn.Module        # the run's learner, eval mode
    pipeline: Pipeline | None       # two-tower + index + re-ranker; None: the run has no retrieval model
    rerank: RerankConfig            # the blend (candidates = ScoreConfig.candidates)
    vocab_ids: pa.Array             # (I - 2,) item ids of catalogue indices 2.. in index order
    item_ids: pa.Array              # (I,) item id of every catalogue index; null at padding and OOV
    popular: np.ndarray             # (P,) int64 catalogue indices, most frequent first (P = min(top, items))
    popular_share: np.ndarray       # (P,) float32 their share of the prepared events (the fallback's final score)
    arm_ids: tuple[str, ...]        # nudge arms in bandit order (A)
    arm_families: tuple[str, ...]   # (A,) family of each arm
    arm_mask: np.ndarray            # (I, A) bool: arms the catalogue allows with each item
    arm_probs: np.ndarray | None    # (I, A) the context-free bandit's probabilities per item; None: contextual
    bandit: Bandit | None           # the contextual bandit (LinUCB on the learner's state); None when context-free
    window: int                     # W, state length
    user_spec: FeatureSpec          # the user tower's feature columns (empty without retrieval or features)
    top: int
    candidates: int
    seed: int
    model_version: str              # run:checkpoint@step (+ retrieval, bandit), one value per run
    config_hash: str                # 16 hex digits over the run's files and the score settings
    info: dict                      # what the manifest reports: policy, index, null columns
    offers: OfferScorer | None = None   # the run's offer learner (seqrec/serve/offers.py); None: no offer columns
    event_names: tuple[str, ...] | None = None  # the run's event types by code when its learner reads them; else None

    @property
    def device(self) -> torch.device:
        return next(self.learner.parameters()).device

    @property
    def state_columns(self) -> tuple[str, ...]:
        """Input columns a session state carries (its first event's value): user features, the offers' profile."""
        extra = self.offers.profile if self.offers is not None else ()
        return tuple(dict.fromkeys((*self.user_spec.columns, *extra)))

    @property
    def input_columns(self) -> tuple[str, ...]:
        """Input columns scoring reads beyond the events' own: the state columns and the nudges shown."""
        return tuple(dict.fromkeys((*self.state_columns, *keep_columns(self.offers))))


# ---------------------------------------------------------------------------------------------- loading


def _checkpoint(folder: Path, name: str) -> Path:
    """folder/checkpoints/NAME.pt, else last.pt; ConfigError when neither exists."""
    for candidate in (name, "last"):
        path = folder / "checkpoints" / f"{candidate}.pt"
        if path.exists():
            return path
    raise ConfigError(f"{folder}: no checkpoint; train the run first")


def _step(path: Path) -> int | None:
    try:
        return int(json.loads(path.with_suffix(".json").read_text())["step"])
    except (OSError, ValueError, KeyError):
        return None


def _config_sha256(run: Path) -> str:
    """SHA-256 of the run's config.json as settings, without its data path: where the run and its data live (the
    path's text, relative or absolute) is no part of what makes the rows; the data's content enters by vocab."""
    d = json.loads((run / "config.json").read_text())
    d.pop("data", None)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


def load_bundle(run: str | Path, cfg: ScoreConfig, offers: OfferSettings | None = None) -> ScoringBundle:
    """Load what scoring needs from a run folder: learner (and retrieval model, index, blend), the prepared
    vocabulary and popularity, the nudge policy (RUN/bandit.json, else a fresh bandit of the run's [bandit]
    config seeded by cfg.seed; by default epsilon-greedy, i.e. uniform over the arms allowed with each item),
    and, when `offers` is given, the offer learner (RUN/offers, unless it says not; seqrec/serve/offers.py: the
    sessions then need its history column, which the engines' `bucket_states` builds)."""
    run = Path(run)
    run_cfg = saved_config(run)
    manifest = read_manifest(run_cfg.data)
    device = torch.device(cfg.device)
    learner_path = _checkpoint(run, cfg.checkpoint)
    learner = build_learner(run_cfg, device)
    learner.load_state_dict(load_checkpoint(learner_path, device)["model"])
    learner.eval()
    files = {"config.json": _config_sha256(run), "learner": file_sha256(learner_path)}
    version = f"{run.name}:{learner_path.stem}@{_step(learner_path)}"

    rerank = replace(run_cfg.rerank, candidates=cfg.candidates)
    index_cfg = replace(run_cfg.index, kind=cfg.index) if cfg.index else run_cfg.index
    if cfg.nprobe is not None:
        index_cfg = replace(index_cfg, nprobe=cfg.nprobe)
    pipeline, user_spec = None, FeatureSpec()
    if (run / "retrieval" / "checkpoints" / "last.pt").exists():
        tower_path = _checkpoint(run / "retrieval", cfg.checkpoint)
        tower = load_two_tower(run / "retrieval", tower_path.stem, device)
        pipeline = build_pipeline(tower, learner, rerank, index_cfg)
        user_spec = tower.user_spec
        files["retrieval"] = file_sha256(tower_path)
        files["retrieval_features"] = file_sha256(run / "retrieval" / "features.json")
        version += f",retrieval:{tower_path.stem}@{_step(tower_path)}"
    elif rerank.w_tt:
        rerank = replace(rerank, w_tt=0.0)  # no two-tower score to weigh
    names = event_names(manifest) if isinstance(learner, Learner) and learner.uses_events else None
    if names is not None and pipeline is not None:
        raise ConfigError(f"{run}: a learner with [encoder] events cannot be re-ranked after the two-tower retrieval "
                          "(it reads item windows only)")

    data = Path(run_cfg.data)
    vocab = pq.read_table(data / "vocab.parquet").sort_by("index")
    num_items = run_cfg.encoder.num_items
    if vocab.num_rows + FIRST_ITEM != num_items:
        raise ConfigError(f"{data}/vocab.parquet has {vocab.num_rows} items but the run's catalogue is {num_items} "
                          "(the run was trained on other data)")
    vocab_ids = vocab.column("item_id").combine_chunks()
    item_ids = pa.concat_arrays([pa.nulls(FIRST_ITEM, vocab_ids.type), vocab_ids])
    counts = vocab.column("count").to_numpy().astype(np.float64)
    p = min(cfg.top, vocab.num_rows)
    popular = np.argsort(-counts, kind="stable")[:p] + FIRST_ITEM
    share = (counts[popular - FIRST_ITEM] / max(counts.sum(), 1.0)).astype(np.float32)
    files["vocab"] = file_sha256(data / "vocab.parquet")

    catalogue = load_catalogue(cfg.catalogue)
    arm_mask = _arm_mask(catalogue, data, vocab_ids, num_items, cfg.category_column)
    bandit_json = run / "bandit.json"
    if bandit_json.exists():
        bandit = load_bandit(run)
        if tuple(bandit.arms) != catalogue.ids:
            raise ConfigError(f"{bandit_json}: the bandit's arms {list(bandit.arms)} differ from the nudge catalogue's "
                              f"{list(catalogue.ids)} ({catalogue.source})")
        files["bandit"] = file_sha256(bandit_json) + file_sha256(run / "bandit.npz")
        policy = f"{bandit.config.kind} from {bandit_json} ({bandit.updates} updates)"
        version += f",bandit@{bandit.updates}"
    else:
        bandit = replace(run_cfg.bandit, seed=cfg.seed).create(catalogue.ids)  # the run's [bandit], untrained
        kind = bandit.config.kind
        policy = ("uniform over the allowed arms (no RUN/bandit.json: a fresh epsilon-greedy bandit)"
                  if kind == "epsilon_greedy" else f"a fresh {kind} bandit of the run's [bandit] (no RUN/bandit.json)")
    arm_probs, contextual = None, None
    if bandit.dim:
        dim = run_cfg.encoder.dim
        if not isinstance(learner, Learner) or bandit.dim != dim:
            raise ConfigError(f"{bandit_json}: a contextual bandit needs the learner's state as context (width {dim}, "
                              f"our own learner); it has width {bandit.dim}")
        contextual = bandit
    else:
        arm_probs = _context_free_probabilities(bandit, arm_mask)

    offer_scorer, offer_files, offer_info = load_offer_scorer(run, offers, vocab_ids.type, cfg.seed)
    files.update(offer_files)   # nothing without offers: the hash of a run scored without them is unchanged
    window = int(manifest["config"]["window"])
    settings = {"format": SCORE_FORMAT, "top": cfg.top, "candidates": cfg.candidates, "checkpoint": cfg.checkpoint,
                "seed": cfg.seed, "window": window, "gap": _gap_minutes(cfg, manifest),
                "index": asdict(index_cfg) if pipeline is not None else None, "rerank": asdict(rerank),
                "catalogue": file_sha256(Path(cfg.catalogue) if cfg.catalogue else default_catalogue_path()),
                "category_column": cfg.category_column}
    config_hash = hashlib.sha256(json.dumps({"files": files, "settings": settings}, sort_keys=True,
                                            default=str).encode()).hexdigest()[:16]
    null_columns = ["two_tower_score: always (the run has no retrieval model)" if pipeline is None
                    else "two_tower_score: on fallback rows", "supervised_score: on fallback rows",
                    "q_value: always (the learner has no Q head)" if not learner.has_q_head
                    else "q_value: on fallback rows"]
    info = {"policy": policy, "retrieval": pipeline is not None,
            "index": (index_cfg.kind if index_cfg.kind == "exact" else f"faiss-{index_cfg.faiss_type}"
                      + (f" nprobe={index_cfg.nprobe}" if index_cfg.faiss_type == "ivf" else ""))
            if pipeline is not None else "none: the learner ranks the whole catalogue",
            "null_columns": null_columns, "session_gap_minutes": settings["gap"], "window": window,
            "rerank": asdict(rerank), "offers": offer_info}
    return ScoringBundle(learner, pipeline, rerank, vocab_ids, item_ids, popular, share, catalogue.ids,
                         tuple(catalogue.family_of(a) for a in catalogue.ids), arm_mask, arm_probs, contextual,
                         window, user_spec, cfg.top, cfg.candidates, cfg.seed, version, config_hash, info,
                         offer_scorer, names)


def _gap_minutes(cfg: ScoreConfig, manifest: dict) -> float:
    """The session gap: the option, else the prepared data's (the string "inf" there means no cut)."""
    if cfg.session_gap_minutes is not None:
        return float(cfg.session_gap_minutes)
    return float(manifest["config"].get("session_gap_minutes", 30.0))


def _arm_mask(catalogue: NudgeCatalogue, data: Path, vocab_ids: pa.Array, num_items: int,
              category_column: str) -> np.ndarray:
    """(I, A) arms allowed with each catalogue item: its [products] entry, else its category's (the item's
    most frequent `category_column` value in the prepared events), else every arm."""
    mask = np.ones((num_items, len(catalogue.ids)), bool)
    events = data / "events.parquet"
    if catalogue.categories and category_column in pq.read_schema(events).names:
        frame = pq.read_table(events, columns=["item", category_column]).to_pandas()
        category = item_rows(frame, [category_column], [], num_items)[category_column].to_numpy(dtype=object)
        for name in catalogue.categories:
            mask[category == name] = catalogue.mask(category=name)
    if catalogue.products:
        text = pc.cast(vocab_ids, pa.string()).to_pylist()
        index = {t: i + FIRST_ITEM for i, t in enumerate(text)}
        for product in catalogue.products:
            if product in index:
                mask[index[product]] = catalogue.mask(product=product)
    return mask


def _context_free_probabilities(bandit: Bandit, mask: np.ndarray) -> np.ndarray:
    """(I, A) choice probabilities of a context-free bandit for each item's mask, computed once per distinct
    mask (Thompson sampling's Monte-Carlo estimate included), so scoring draws no bandit randomness."""
    unique, inverse = np.unique(mask, axis=0, return_inverse=True)  # (M, A), (I,)
    return bandit.probabilities_batch(None, unique)[inverse.reshape(-1)]


# ---------------------------------------------------------------------------------------------- scoring


def window_matrix(bundle: ScoringBundle, items: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A list column of item ids (oldest first) -> (B, W) int64 catalogue indices, left-padded with 0; unknown
    ids (and ids of the wrong type) map to OOV = 1; only the last W ids of a longer list count."""
    return item_windows(items, bundle.vocab_ids, bundle.window)


def state_event_codes(bundle: ScoringBundle, events: pa.Table, names: list[str] | tuple[str, ...]) -> np.ndarray | None:
    """(N,) the run's event code + 1 of each event of `events` (whose "event" column holds codes of `names`, the
    scoring job's event types), for session_states' item_events; None when the learner reads no event types."""
    return None if bundle.event_names is None else run_event_codes(events.column("event"), names, bundle.event_names)


def _learner_candidates(bundle: ScoringBundle, items: torch.Tensor, events: torch.Tensor | None = None) -> Candidates:
    """No retrieval model: the learner's supervised scores over the whole catalogue give the K candidates
    (padding and OOV excluded), then the run's blend of supervised score and Q value ranks them. `events`: the
    windows' (B, W) event codes + 1 for a learner that reads them."""
    learner, k = bundle.learner, min(bundle.candidates, len(bundle.vocab_ids))
    ev = {} if events is None else {"events": events}
    if isinstance(learner, Learner) and learner.scores_from_state:
        state = learner.encode(items, **ev)  # (B, D)
        full = learner.padded_supervised(state)  # (B, I') row-padded, padding columns -inf
        full[:, :FIRST_ITEM] = -torch.inf
        sup, ids = torch.topk(full, k, dim=1)  # (B, K) each
        q = learner.q_at(state, ids) if learner.has_q_head else None
    else:
        full = learner.scores(items, **ev).clone()  # (B, I)
        full[:, :FIRST_ITEM] = -torch.inf
        sup, ids = torch.topk(full, k, dim=1)
        q = learner.q_values(items, **ev).gather(1, ids) if learner.has_q_head else None
    valid = ids >= FIRST_ITEM  # (B, K)
    tt = torch.full_like(sup, torch.nan)
    final = blend(tt, sup, q, replace(bundle.rerank, w_tt=0.0), valid)  # (B, K)
    order = top_order(final, bundle.top)  # (B, top)
    q = torch.full_like(sup, torch.nan) if q is None else q
    return Candidates(*(x.gather(1, order) for x in (ids, tt, sup, q, final)))


def _retrieve_rerank(bundle: ScoringBundle, items: torch.Tensor, users) -> Candidates:
    """seqrec.retrieval.rerank.rerank_batch for our learner, computing each learner score only where it is needed: the
    blend's terms over the K candidates, the others for the `top` kept rows only (same ranking and values;
    tests/test_score.py). With the default blend (supervised score only) this skips the (B, K, D) gather of
    the Q head."""
    p, cfg = bundle.pipeline, bundle.rerank
    user = p.tower.user(items, users)  # (B, D)
    tt, ids = p.index.search(user, bundle.candidates)  # (B, K) raw dot products, ids
    tt = tt / p.tower.temperature
    learner = bundle.learner
    state = learner.encode(items)  # (B, D)
    sup = learner.supervised_at(state, ids) if cfg.w_sup else None  # (B, K)
    q = learner.q_at(state, ids) if cfg.w_q and learner.has_q_head else None  # (B, K)
    final = blend(tt, sup, q, cfg, ids >= FIRST_ITEM)  # (B, K)
    order = top_order(final, bundle.top)  # (B, top)
    kept = ids.gather(1, order)  # (B, top)
    sup = sup.gather(1, order) if sup is not None else learner.supervised_at(state, kept)
    if q is not None:
        q = q.gather(1, order)
    else:
        q = learner.q_at(state, kept) if learner.has_q_head else torch.full_like(sup, torch.nan)
    return Candidates(kept, tt.gather(1, order), sup, q, final.gather(1, order))


def _candidates(bundle: ScoringBundle, items: torch.Tensor, users, events: torch.Tensor | None = None) -> Candidates:
    """The ranked top of (B, T) windows (and their (B, T) events for a learner that reads them): retrieve +
    re-rank, or the learner alone without a retrieval model."""
    if bundle.pipeline is None:
        return _learner_candidates(bundle, items, events)
    if isinstance(bundle.learner, Learner) and bundle.learner.scores_from_state:  # copy = true: through the seam
        return _retrieve_rerank(bundle, items, users)
    return pipeline_batch(bundle.pipeline, items, users, bundle.top, bundle.candidates)


def _user_features(bundle: ScoringBundle, sessions: pa.Table, rows: np.ndarray):
    """The user tower's Features of the sessions `rows` (None when the tower has no user features)."""
    cols = bundle.user_spec.columns
    if not cols:
        return None
    frame = {c: sessions.column(c).combine_chunks().take(pa.array(rows)).to_numpy(zero_copy_only=False)
             for c in cols if c in sessions.column_names}
    return bundle.user_spec.encode(frame, len(rows))


@torch.no_grad()
def score_batch(bundle: ScoringBundle, sessions: pa.Table) -> pa.Table:
    """Session states (one row each: user_id, [session_id], session_start, events, items, [user features])
    -> one row per (session, rank), sessions in input order, ranks 1..top (fewer only if the catalogue is).

    Pure: depends on `bundle` and `sessions` only; the local and Ray engines both call it.
    """
    n = sessions.num_rows
    items = window_matrix(bundle, sessions.column("items"))  # (B, W)
    # (B, W) event codes + 1, padded as the items are, for a learner that reads event types
    events = event_windows(sessions.column("item_events"), bundle.window) if bundle.event_names is not None else None
    ev = {}  # the learner's events keyword: set per chunk for a learner that reads event types
    known = (items >= FIRST_ITEM).sum(1)  # (B,)
    top = min(bundle.top, len(bundle.vocab_ids))
    ids = np.zeros((n, top), np.int64)
    scores = np.full((4, n, top), np.nan, np.float32)  # two-tower, supervised, Q, final
    model_rows = np.flatnonzero(known > 0)
    state = np.zeros((n, bundle.bandit.dim)) if bundle.bandit is not None else None  # (B, d) bandit context
    chunk = MODEL_CHUNK if bundle.pipeline is None else RETRIEVAL_CHUNK
    for lo in range(0, len(model_rows), chunk):
        rows = model_rows[lo:lo + chunk]
        # pad to a multiple of ROW_MULTIPLE rows (copies of the last): BLAS and faiss pick kernels by the number
        # of rows, and a batch of 1-3 or 33 sessions gets other last bits; so a session's scores never depend
        # on how sessions fall into batches (Ray's batches, a resume, --batch-size)
        padded = np.r_[rows, np.repeat(rows[-1:], -len(rows) % ROW_MULTIPLE)]  # (b',)
        n_rows = len(rows)
        x = torch.from_numpy(items[padded]).to(bundle.device)  # (b', W)
        if events is not None:
            ev = {"events": torch.from_numpy(events[padded]).to(bundle.device)}  # (b', W)
        c = _candidates(bundle, x, _user_features(bundle, sessions, padded), **ev)
        k = c.ids.shape[1]
        ids[rows, :k] = c.ids[:n_rows].cpu().numpy()
        for j, t in enumerate((c.two_tower, c.supervised, c.q, c.final)):
            scores[j, rows, :k] = t[:n_rows].float().cpu().numpy()
        if state is not None:
            state[rows] = bundle.learner.encode(x, **ev)[:n_rows].double().cpu().numpy()  # (b, D)
    fallback = (ids >= FIRST_ITEM).sum(1) == 0  # (B,) no known item, or no candidate found
    p = len(bundle.popular)
    ids[fallback] = 0
    ids[fallback, :p] = bundle.popular
    scores[:, fallback] = np.nan
    scores[3, fallback, :p] = bundle.popular_share

    valid = ids >= FIRST_ITEM  # (B, top), real items first in every row
    row_session = np.repeat(np.arange(n), valid.sum(1))  # (N,)
    rank = (np.cumsum(valid, axis=1))[valid].astype(np.int16)  # (N,) 1-based
    flat = ids[valid]  # (N,)
    if bundle.arm_probs is not None:
        probs = bundle.arm_probs[flat]  # (N, A)
    else:
        if fallback.any():  # the context of a session without a known item: the encoding of an unknown window
            pad = torch.full((1, bundle.window), OOV, dtype=torch.long, device=bundle.device)
            pad_ev = {} if events is None else {"events": torch.zeros_like(pad)}  # (1, W) no known event type
            state[fallback] = bundle.learner.encode(pad, **pad_ev).double().cpu().numpy()
        probs = bundle.bandit.probabilities_batch(state[row_session], bundle.arm_mask[flat])
    keys = session_keys(sessions)  # (B,)
    u = uniforms(keys[row_session], rank, bundle.seed)  # (N,)
    arm = draw_arms(probs, u)  # (N,)
    take = pa.array(row_session)
    cols = {"user_id": sessions.column("user_id").take(take)}
    if "session_id" in sessions.column_names:
        cols["session_id"] = sessions.column("session_id").take(take)
    cols["session_start"] = sessions.column("session_start").take(take)
    cols["session_events"] = pa.array(sessions.column("events").to_numpy()[row_session], pa.int32())
    cols["known_items"] = pa.array(known[row_session].astype(np.int32))
    cols["rank"] = pa.array(rank)
    cols["item_id"] = bundle.item_ids.take(pa.array(flat))
    for name, j in (("two_tower_score", 0), ("supervised_score", 1), ("q_value", 2), ("final_score", 3)):
        cols[name] = pa.array(scores[j][valid], pa.float32(), from_pandas=True)  # NaN -> null
    cols["fallback"] = pa.array(fallback[row_session])
    arm_index = pa.array(arm.astype(np.int32))
    cols["nudge_id"] = pa.DictionaryArray.from_arrays(arm_index, pa.array(bundle.arm_ids))
    family_names = sorted(set(bundle.arm_families))
    family = np.array([family_names.index(f) for f in bundle.arm_families], np.int32)[arm]
    cols["nudge_family"] = pa.DictionaryArray.from_arrays(pa.array(family), pa.array(family_names))
    nudge_propensity = probs[np.arange(len(arm)), arm]  # (N,) P(nudge | session, item)
    cols["propensity"] = pa.array(nudge_propensity, pa.float64())
    zeros = pa.array(np.zeros(len(arm), np.int32))
    cols["model_version"] = pa.DictionaryArray.from_arrays(zeros, pa.array([bundle.model_version]))
    cols["config_hash"] = pa.DictionaryArray.from_arrays(zeros, pa.array([bundle.config_hash]))
    # the item at each rank is the deterministic top-N of the blend (or of popularity): P(product) = 1
    product_propensity = np.ones(len(arm))  # (N,)
    cols["product_propensity"] = pa.array(product_propensity, pa.float64())
    cols["joint_propensity"] = pa.array(joint_propensity(product_propensity, nudge_propensity), pa.float64())
    if bundle.offers is not None:   # the session's offer by the offer learner, on each of its rows
        offer = decide_offers(bundle.offers, sessions, uniforms(keys, np.full(n, OFFER_RANK), bundle.seed))
        cols |= offer_columns(bundle.offers, offer, row_session)
    return pa.table(cols)
