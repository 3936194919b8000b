"""Retrieval indexes: exactly the brute-force top-k (exact, faiss flat, exhaustive IVF), never padding or OOV,
and approximate search padded honestly when it finds fewer than k items."""

import importlib.util

import pytest
import torch

from seqrec.retrieval.config import IndexConfig
from seqrec.retrieval.index import ExactIndex, FaissIndex, build_index

needs_faiss = pytest.mark.skipif(importlib.util.find_spec("faiss") is None,
                                 reason="faiss-cpu is not installed (the optional extra: pip install 'seqrec[ann]')")


@pytest.fixture
def table_and_queries() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    table = torch.randn(500, 16, generator=g)  # (I, D)
    queries = torch.randn(37, 16, generator=g)  # (B, D)
    # padding and OOV rows that every query would rank first if they were indexed
    table[0] = table[1] = queries.mean(0) * 100
    return table, queries


def brute_force(table: torch.Tensor, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Score every real item (rows 2..I-1) and sort: the reference the indexes must reproduce."""
    s = queries.double() @ table[2:].double().T  # (B, I - 2)
    order = torch.argsort(s, dim=1, descending=True)[:, :k]
    return s.gather(1, order).float(), order + 2


BACKENDS = ["torch", pytest.param("faiss", marks=needs_faiss)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_exact_index_returns_the_brute_force_top_k_across_query_chunks(table_and_queries, backend):
    table, queries = table_and_queries
    index = ExactIndex(table, query_chunk=8, backend=backend)  # torch: four full chunks of 37 and a partial one
    assert index.backend == backend
    scores, ids = index.search(queries, 25)
    ref_scores, ref_ids = brute_force(table, queries, 25)
    assert ids.shape == scores.shape == (37, 25) and ids.dtype == torch.long
    assert torch.equal(ids, ref_ids)
    torch.testing.assert_close(scores, ref_scores, rtol=1e-5, atol=1e-5)
    assert bool((ids >= 2).all())  # pad and OOV never returned, though they score highest


@pytest.mark.parametrize("backend", BACKENDS)
def test_k_beyond_the_catalogue_returns_every_real_item_once(table_and_queries, backend):
    table, queries = table_and_queries
    scores, ids = ExactIndex(table[:12], backend=backend).search(queries[:3], 200)
    assert ids.shape == (3, 10)
    assert all(sorted(row.tolist()) == list(range(2, 12)) for row in ids)
    assert bool((scores[:, :-1] >= scores[:, 1:]).all())


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_query_batch_and_bad_tables(backend):
    assert ExactIndex(torch.randn(5, 4), backend=backend).search(torch.empty(0, 4), 3)[1].shape == (0, 3)
    with pytest.raises(ValueError, match="I > 2"):
        ExactIndex(torch.randn(2, 4), backend=backend)
    with pytest.raises(ValueError, match="backend must be one of auto, faiss, torch"):
        ExactIndex(torch.randn(5, 4), backend="numpy")


def test_auto_backend_is_faiss_exactly_when_it_is_installed():
    want = "faiss" if importlib.util.find_spec("faiss") is not None else "torch"
    assert ExactIndex(torch.randn(5, 4)).backend == want
    assert build_index(torch.randn(5, 4), IndexConfig(kind="exact", exact_backend="torch")).backend == "torch"


@needs_faiss
@pytest.mark.parametrize("cfg", [IndexConfig(kind="faiss", faiss_type="flat"),
                                 IndexConfig(kind="faiss", faiss_type="ivf", nlist=8, nprobe=8)],
                         ids=["flat", "ivf-exhaustive"])
def test_exact_faiss_indexes_return_the_brute_force_top_k(table_and_queries, cfg):
    table, queries = table_and_queries
    index = build_index(table, cfg)
    assert isinstance(index, FaissIndex) and index.size == 498
    scores, ids = index.search(queries, 25)
    ref_scores, ref_ids = brute_force(table, queries, 25)
    assert torch.equal(ids, ref_ids)
    torch.testing.assert_close(scores, ref_scores, rtol=1e-4, atol=1e-4)


@needs_faiss
def test_hnsw_recall_and_its_knob(table_and_queries):
    table, queries = table_and_queries
    _, ref = brute_force(table, queries, 50)
    _, ids = FaissIndex(table, IndexConfig(kind="faiss", faiss_type="hnsw", hnsw_m=16, ef_search=400)).search(
        queries, 50)
    recall = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(ids, ref)) / ref.numel()
    assert recall >= 0.98 and bool((ids >= 2).all())


@needs_faiss
@pytest.mark.parametrize("faiss_type", ["ivf", "hnsw"])
def test_approximate_indexes_find_large_inner_products_when_item_norms_differ(table_and_queries, faiss_type):
    """Items whose norms differ 100-fold: the nearest neighbours by plain distance would be wrong, the
    D + 1-dimensional search must still return the largest inner products, scored exactly, best first."""
    table, queries = table_and_queries
    g = torch.Generator().manual_seed(1)
    table = table * torch.exp(torch.empty(500, 1).uniform_(-2.3, 2.3, generator=g))  # norms x 0.1 .. 10
    cfg = IndexConfig(kind="faiss", faiss_type=faiss_type, nlist=8, nprobe=8, ef_search=400)
    scores, ids = FaissIndex(table, cfg).search(queries, 50)
    ref_scores, ref = brute_force(table, queries, 50)
    recall = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(ids, ref)) / ref.numel()
    assert recall == 1.0 if faiss_type == "ivf" else recall >= 0.98
    exact = (queries.unsqueeze(1) * table[ids]).sum(-1)  # (B, 50) the true inner products of what was found
    torch.testing.assert_close(scores, exact, rtol=1e-5, atol=1e-4)
    assert bool((scores[:, :-1] >= scores[:, 1:] - 1e-3).all())


@needs_faiss
def test_approximate_search_pads_with_padding_id_and_minus_infinity(table_and_queries):
    table, queries = table_and_queries
    index = FaissIndex(table, IndexConfig(kind="faiss", faiss_type="ivf", nlist=12, nprobe=1))
    scores, ids = index.search(queries, 200)  # one cluster of ~40 items cannot fill 200
    missing = ids == 0
    assert bool(missing.any()) and bool(torch.isinf(scores[missing]).all())
    assert bool((ids[~missing] >= 2).all()) and bool(torch.isfinite(scores[~missing]).all())
    found = ~missing
    assert bool((found[:, :-1] >= found[:, 1:]).all())  # real results first, padding after


def test_build_index_dispatches_on_kind(table_and_queries):
    table, _ = table_and_queries
    assert isinstance(build_index(table, IndexConfig()), ExactIndex)
    with pytest.raises(ValueError, match="kind must be one of"):
        IndexConfig(kind="annoy")


def test_exact_index_sizes_its_query_chunks_by_the_memory_budget():
    table = torch.randn(1024 + 2, 4)  # 1,024 real items: a query's scores take 4 KiB
    assert ExactIndex(table, chunk_mib=1).query_chunk == 256
    assert ExactIndex(table, chunk_mib=1024).query_chunk == 4096  # capped
    assert build_index(table, IndexConfig(chunk_mib=2)).query_chunk == 512
