"""Top-k inner-product search over the item tower's table: one small interface, an exact and a faiss index.

`search(queries (B, D), k) -> (scores (B, k), ids (B, k))`, best first. Ids are catalogue indices; padding
(0) and out-of-vocabulary (1) are never returned, because the indexes hold rows 2..I-1 only. When the index
holds fewer than k items, k is cut to its size (a small catalogue asked for 200 candidates gets all of them).

- `ExactIndex`: faiss's flat search when faiss is installed (blocked product with a heap per query), else
  the catalogue product (seqrec/catalogue.py's row-padded `scores`) and `torch.topk`, over chunks of
  queries so that the (chunk, I) score buffer (256 MiB by default), not (B, I), bounds memory.
- `FaissIndex` (faiss-cpu, the optional extra `seqrec[ann]`): `flat` (exact, faiss's own BLAS), `hnsw`
  (graph; `ef_search` trades speed for recall) or `ivf` (clusters; `nprobe` of `nlist` searched, nprobe =
  nlist being exact): for catalogues in the millions. An approximate search that finds fewer than k items
  pads its row with id 0 (padding) and score -inf, which the re-ranker never ranks above a real item.

HNSW and IVF search by Euclidean distance in D + 1 dimensions, not by inner product: each item v gets the
extra coordinate sqrt(M^2 - |v|^2) (M the largest item norm) and each query q a 0, so |q - v|^2 =
|q|^2 + M^2 - 2 q.v and the nearest items are exactly the largest inner products. k-means clusters and HNSW
graphs are built for distances; on inner products they place items badly (on a trained two-tower at 26,702
items, IVF needed 192 of 654 clusters for recall@200 0.967 by inner product, 20 of 245 for 0.961 this way,
1.6x the queries per second; experiments/bench_score.py). The scores returned are the inner products
recovered from the distances (within 1e-5 of the products themselves; recomputing them cost a fifth of
the search).
"""

from __future__ import annotations

import importlib.util
import math
from typing import Protocol

import numpy as np
import torch

from seqrec.datasets.schema import FIRST_ITEM  # rows 0 (padding) and 1 (OOV) are not indexed
from seqrec.models.catalogue import scores
from seqrec.retrieval.config import EXACT_BACKENDS, IndexConfig


class Index(Protocol):
    """What the pipeline needs from an index."""

    size: int  # items held

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, D) float queries -> (B, min(k, size)) scores, (B, min(k, size)) int64 item ids, best first."""
        ...


def _items(table: torch.Tensor) -> torch.Tensor:
    """The (I, D) item table without padding and OOV: (I - 2, D), contiguous float32."""
    if table.dim() != 2 or table.shape[0] <= FIRST_ITEM:
        raise ValueError(f"the item table must be (I, D) with I > 2, got shape {tuple(table.shape)}")
    return table[FIRST_ITEM:].detach().float().contiguous()


class ExactIndex:
    """Brute force, by one of two back-ends (`backend`; "auto" takes faiss on CPU when it is installed):

    - "faiss": faiss's flat inner-product search, which runs the product in cache-sized blocks and keeps
      each query's best k in a heap as it goes: about 2x the rate of the torch back-end at 26,702 items and
      k = 200 (experiments/bench_score.py);
    - "torch": for each chunk of queries, the catalogue product and torch.topk. A chunk holds `query_chunk`
      queries, by default as many as fit a `chunk_mib` score buffer (between 1 and 4096). Any device.
    """

    def __init__(self, table: torch.Tensor, query_chunk: int | None = None, chunk_mib: int = 256,
                 backend: str = "auto") -> None:
        if backend not in EXACT_BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(EXACT_BACKENDS)}, got {backend!r}")
        self.items = _items(table)  # (I - 2, D)
        self.size = self.items.shape[0]
        self.query_chunk = query_chunk or max(1, min(4096, chunk_mib * 2**20 // (4 * self.size)))
        if backend == "auto":
            backend = "faiss" if self.items.device.type == "cpu" and faiss_available() else "torch"
        self.backend = backend
        self.flat = None
        if backend == "faiss":
            self.flat = import_faiss().IndexFlatIP(self.items.shape[1])
            self.flat.add(self.items.cpu().numpy())

    @torch.no_grad()
    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        k = min(k, self.size)
        queries = queries.to(self.items.device, torch.float32)  # (B, D)
        if self.flat is not None:
            s, i = self.flat.search(np.ascontiguousarray(queries.cpu().numpy()), k)  # (B, k) each, best first
            return (torch.from_numpy(s).to(queries.device),
                    torch.from_numpy(i).long().add_(FIRST_ITEM).to(queries.device))
        out_s, out_i = [], []
        for lo in range(0, queries.shape[0], self.query_chunk):
            s = scores(queries[lo:lo + self.query_chunk], self.items)  # (b, I - 2)
            top = torch.topk(s, k, dim=1)  # sorted, best first
            out_s.append(top.values)  # (b, k)
            out_i.append(top.indices + FIRST_ITEM)  # (b, k) catalogue ids
        if not out_s:
            return queries.new_empty(0, k), torch.empty(0, k, dtype=torch.long, device=queries.device)
        return torch.cat(out_s), torch.cat(out_i)  # (B, k), (B, k)


def faiss_available() -> bool:
    """Whether faiss can be imported (the optional extra seqrec[ann])."""
    return importlib.util.find_spec("faiss") is not None


def import_faiss():
    """faiss, or an ImportError that says how to install it (the optional extra seqrec[ann])."""
    try:
        import faiss
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the faiss index needs faiss-cpu: pip install 'seqrec[ann]' "
                          "(or pip install -c constraints.txt faiss-cpu)") from e
    return faiss


class FaissIndex:
    """faiss index over rows 2..I-1 of the table: flat (inner product), HNSW or IVF (Euclidean in D + 1
    dimensions, equivalent to inner product; see the module docstring). See IndexConfig for the knobs."""

    def __init__(self, table: torch.Tensor, cfg: IndexConfig | None = None) -> None:
        faiss = import_faiss()
        cfg = cfg or IndexConfig(kind="faiss")
        items = _items(table).cpu().numpy()  # (I - 2, D) float32
        self.size, d = items.shape
        self.cfg = cfg
        self.augmented = cfg.faiss_type != "flat"
        if self.augmented:
            norms2 = np.square(items, dtype=np.float64).sum(1)  # (I - 2,)
            self.max_norm2 = float(norms2.max())  # M^2
            extra = np.sqrt(np.maximum(self.max_norm2 - norms2, 0.0)).astype(np.float32)  # (I - 2,)
            items = np.hstack([items, extra[:, None]])  # (I - 2, D + 1)
        if cfg.faiss_type == "flat":
            index = faiss.IndexFlatIP(d)
        elif cfg.faiss_type == "hnsw":
            index = faiss.IndexHNSWFlat(d + 1, cfg.hnsw_m)
            index.hnsw.efSearch = cfg.ef_search
        else:
            # auto: 1.5 sqrt(n) clusters, at most one per 39 items (faiss's minimum training points per centroid)
            self.nlist = min(cfg.nlist or max(1, min(round(1.5 * math.sqrt(self.size)), self.size // 39)),
                             self.size)
            self.quantizer = faiss.IndexFlatL2(d + 1)  # kept referenced: the IVF index does not own it
            index = faiss.IndexIVFFlat(self.quantizer, d + 1, self.nlist)
            index.train(items)
            index.nprobe = min(cfg.nprobe, self.nlist)
        index.add(items)
        self.index = index

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        k = min(k, self.size)
        q = np.ascontiguousarray(queries.detach().cpu().numpy(), dtype=np.float32)  # (B, D)
        if self.augmented:
            q = np.hstack([q, np.zeros((len(q), 1), np.float32)])  # (B, D + 1)
        if self.cfg.faiss_type == "hnsw":
            self.index.hnsw.efSearch = max(self.cfg.ef_search, k)  # HNSW returns at most efSearch results
        s, i = self.index.search(q, k)  # (B, k) each; i = -1 where fewer than k were found
        found = torch.from_numpy(i >= 0)  # (B, k)
        rows = torch.from_numpy(np.maximum(i, 0)).long()  # (B, k) rows of self.items
        if self.augmented:  # |q - v|^2 = |q|^2 + M^2 - 2 q.v -> q.v, in faiss's order (nearest first)
            q2 = np.square(q, dtype=np.float64).sum(1, keepdims=True)  # (B, 1)
            sc = torch.from_numpy(((q2 + self.max_norm2 - s) / 2).astype(np.float32))  # (B, k)
        else:
            sc = torch.from_numpy(s)
        sc = sc.masked_fill(~found, -torch.inf)  # (B, k)
        ids = torch.where(found, rows + FIRST_ITEM, 0)  # (B, k); padding where none
        return sc.to(queries.device), ids.to(queries.device)


def build_index(table: torch.Tensor, cfg: IndexConfig) -> ExactIndex | FaissIndex:
    """The index `cfg` describes over the (I, D) item table."""
    if cfg.kind == "exact":
        return ExactIndex(table, chunk_mib=cfg.chunk_mib, backend=cfg.exact_backend)
    return FaissIndex(table, cfg)
