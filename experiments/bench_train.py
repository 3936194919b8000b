"""Benchmark training and evaluation speed of the learners against the bare matrix product of the output layer.

For SASRec, SASRec-SQN (and GRU4Rec and SASRec-SA2C) at each catalogue size: training samples per second
of `Learner.update` on synthetic batches (batch 256, width 64, window 10), evaluation states per second
(`Learner.scores` + `target_ranks` over batches of 1024 states, no_grad, eval mode) and peak memory. In the
same process, just before and just after the training steps, a bare `torch.mm` of each catalogue-wide shape
a step runs is timed; the rate the step's catalogue-wide products alone would allow at that speed is the
bound, and the achieved fraction of it is printed (target: 0.70 or more at 26,702 items). Each
configuration runs in a fresh process, so every row has its own peak RSS (torch itself included: the
baseline after `import torch` is printed under the table).

On CPU, glibc hands big temporaries ((B, I) logits: 27 MB at 26,702 items, 100 MB at 100,000) back to the
OS and page-faults them in again at every step; --retain-heap (on by default, as in `seqrec train`) removes
that cost; --no-retain-heap shows the rate with it ("page-faulted MiB/step" in the per-row lines). The
forward product runs much slower when I is not a multiple of 8 (26,702 is not), which the bound includes
since it times the same shape; the learner writes that product into a buffer whose rows are padded to 64
floats (seqrec/catalogue.py), which is about 1.7x faster. So that the padding cannot flatter the figure, a
"strict" bound is printed beside the issue's one: the same count of products, with the forward one timed
at the fastest of its layouts. There are three: plain, rows padded, and the double-Q target's (the arg-max of
Q(s') over the catalogue, seqrec/catalogue.scores_argmax): ARGMAX_BLOCK items at a time, transposed, into a
buffer that stays in cache, about 1.4x faster than the padded product.

On CUDA an epoch over a synthetic RC15-sized set (1.1 million transitions, batch 256) is timed too (the
issue's target: under 10 s); on CPU only with --epoch, since it takes minutes there.

    python experiments/bench_train.py                          # 26,702 and 100,000 items, all models
    python experiments/bench_train.py --catalogues 500 --steps 2 --batch 32            # smoke run
    python experiments/bench_train.py --variants sasrec --catalogues 26702 --profile    # where does a step go

Catalogue-wide products (B, D) x (D, I) per training step, read from rl/qlearning.py (each costs 2*B*D*I
flops; nothing else in a step is that large at I >> D):
  ce   (SASRec, GRU4Rec): forward logits = state @ E.T (1, "fwd"); backward of it: grad wrt the state
       G @ E (B, I) x (I, D) (1, "grad_state") and grad wrt the tied item table G.T @ state (I, B) x (B, D)
       (1, "grad_weight").                                                               -> 3 = 1 + 1 + 1
  sqn / sac: the above, plus the no-grad Q values of the next state from the learning network, for the
       arg-max (forward 1; computed block by block in cache, scores_argmax, the (B, I) matrix never written);
       the taken action's Q and the other network's value of the arg-max are gathered rows (q_at), not
       catalogue products.                                                               -> 4 = 2 + 1 + 1
  sa2c / snqn: sqn plus net.q(state) for the negatives' arg-max (forward 1).             -> 5 = 3 + 1 + 1
  d3rlpy-dqn (d3rlpy 2.8.1's DQN on our SASRec encoder, through rl/d3rlpy_bridge.D3rlpyLearner): the taken
       action's Q is read from the full Q(s) (forward 1, with its two backward products), and the target
       network runs twice on the next state, once for the arg-max and once to value it (forward 2).
                                                                                         -> 5 = 3 + 1 + 1
       Its Q head is a separate (I, D) layer (not the tied item table), and the step also pays a (B, I)
       one-hot of the actions; compare it with sasrec-sqn, our Q-learning at the same batch and catalogue:

    python experiments/bench_train.py --catalogues 26702 --variants sasrec-sqn,d3rlpy-dqn
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

import torch
from seqrec.datasets.schema import FIRST_ITEM
from seqrec.rl.qlearning.learner import Learner
from seqrec.rl.qlearning.losses import HeadConfig

from seqrec.models.catalogue import ARGMAX_BLOCK, ROW_ALIGN
from seqrec.models.device import pick_device, retain_heap
from seqrec.models.encoders import EncoderConfig
from seqrec.training.metrics import target_ranks

# model name -> (encoder kind, head variant)
MODELS = {"gru4rec": ("gru", "ce"), "sasrec": ("sasrec", "ce"), "sasrec-sqn": ("sasrec", "sqn"),
          "sasrec-snqn": ("sasrec", "snqn"), "sasrec-sa2c": ("sasrec", "sa2c"),
          "d3rlpy-dqn": ("sasrec", "d3rlpy.dqn"),
          # the repeat-aware mixture (`[head] copy = true, copy_aux = 1`, as next_item.toml): the same products
          "sasrec-copy": ("sasrec", "ce+copy"), "gru4rec-copy": ("gru", "ce+copy"),
          "sasrec-sqn-copy": ("sasrec", "sqn+copy"),
          # the Taobao step of next_item.toml: item categories and the mixture's category component as well
          "sasrec-copy-category": ("sasrec", "ce+copy+category")}
COPY = "+copy"
CATEGORY = "+category"
BENCH_CATEGORIES = 1000  # random category codes 1..1000 for the +category variants (Taobao's slice: 3,000 or so)
# catalogue-wide products per training step by head variant: (fwd, grad_state, grad_weight); see the docstring
MATMULS = {"ce": (1, 1, 1), "sqn": (2, 1, 1), "sac": (2, 1, 1), "snqn": (3, 1, 1), "sa2c": (3, 1, 1),
           "d3rlpy.dqn": (3, 1, 1)}
SHAPES = ("fwd", "grad_state", "grad_weight")
RC15_TRANSITIONS = 1_100_000  # RC15: ~200,000 sessions, 1.1 million events, one transition per event
RC15_SESSION_LEN = 5.5
PURCHASE_RATE = 0.04
RESULT = "@@result "


def synthetic_transitions(n: int, num_items: int, window: int, seed: int,
                          device: torch.device) -> dict[str, torch.Tensor]:
    """n transitions shaped like the replay buffer's: left-padded windows of real item ids, the next window
    (the action appended), rewards 0.2 (click) / 1.0 (purchase), done at the end of a session."""
    g = torch.Generator().manual_seed(seed)
    items = torch.randint(FIRST_ITEM, num_items, (n, window + 1), generator=g)  # (n, W+1), last = action
    length = torch.randint(0, window + 1, (n,), generator=g)  # (n,) real items in the state, 0 = empty history
    col = torch.arange(window + 1)
    items[col.unsqueeze(0) < (window - length).unsqueeze(1)] = 0  # left padding; the action column stays
    reward = torch.where(torch.rand(n, generator=g) < PURCHASE_RATE, 1.0, 0.2)
    done = torch.rand(n, generator=g) < 1.0 / RC15_SESSION_LEN
    out = {"state": items[:, :-1], "next_state": items[:, 1:], "action": items[:, -1],
           "reward": reward, "done": done}
    return {k: v.contiguous().to(device) for k, v in out.items()}


def take(data: dict[str, torch.Tensor], idx: torch.Tensor | slice) -> dict[str, torch.Tensor]:
    return {k: v[idx] for k, v in data.items()}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn, device: torch.device, samples: int, min_sample_s: float = 0.005) -> list[float]:
    """Seconds per call of fn, `samples` samples, each averaging enough calls to last min_sample_s."""
    fn()
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    reps = max(1, math.ceil(min_sample_s / max(time.perf_counter() - t, 1e-9)))
    out = []
    for _ in range(samples):
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        sync(device)
        out.append((time.perf_counter() - t) / reps)
    return out


def matmul_samples(b: int, d: int, items: int, device: torch.device, samples: int) -> dict[str, list[float]]:
    """Per-call seconds of the three catalogue-wide products, on tensors laid out as in training: the (I, D)
    table is row-major, the forward reads it transposed, backward writes the (I, D) weight gradient."""
    state, weight = torch.randn(b, d, device=device), torch.randn(items, d, device=device)
    grad = torch.randn(b, items, device=device)
    # Outputs go to buffers allocated once: the bound is the product itself, not the allocator (a fresh
    # (B, I) tensor of 100 MB costs ~25 ms of page faults on CPU, which training does pay; see --retain-heap).
    out_fwd, out_state = torch.empty(b, items, device=device), torch.empty(b, d, device=device)
    out_weight = torch.empty(items, d, device=device)
    padded = torch.empty(b, -(-items // ROW_ALIGN) * ROW_ALIGN, device=device)[:, :items]  # (B, I) view
    block = torch.empty(min(ARGMAX_BLOCK, items), b, device=device)  # (block, B) one block of items, transposed

    def fwd_blocked() -> None:  # fwd as scores_argmax runs it: (block, D) x (D, B) products into a cached buffer
        for lo in range(0, items, ARGMAX_BLOCK):
            torch.mm(weight[lo:lo + ARGMAX_BLOCK], state.t(), out=block[:min(ARGMAX_BLOCK, items - lo)])
    fns = {"fwd": lambda: torch.mm(state, weight.t(), out=out_fwd),          # (B, D) x (D, I)
           "grad_state": lambda: torch.mm(grad, weight, out=out_state),     # (B, I) x (I, D)
           "grad_weight": lambda: torch.mm(grad.t(), state, out=out_weight),  # (I, B) x (B, D)
           "fwd_padded": lambda: torch.mm(state, weight.t(), out=padded),     # fwd, rows padded as we do
           "fwd_blocked": fwd_blocked}                                         # fwd, in blocks, transposed
    return {k: time_calls(f, device, samples) for k, f in fns.items()}


def median(xs: list[float]) -> float:
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def rss_mib() -> float:
    """Current resident set size in MiB (Linux /proc), for the baseline after import torch."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def make_learner(variant: str, enc: EncoderConfig, batch: int, device: torch.device) -> torch.nn.Module:
    """Our Learner with a head variant, or a d3rlpy algorithm on the same encoder (same lr 0.005, gamma 0.5)."""
    if variant.startswith("d3rlpy."):
        from seqrec.rl.d3rlpy_bridge.bridge import D3rlpyLearner
        from seqrec.rl.d3rlpy_bridge.config import D3rlpyConfig

        return D3rlpyLearner(variant, enc, D3rlpyConfig(), batch_size=batch, lr=0.005, gamma=0.5, device=device)
    if variant.endswith(COPY + CATEGORY):
        head = HeadConfig(variant=variant.removesuffix(COPY + CATEGORY), copy=True, copy_aux=1.0, copy_category=True)
        learner = Learner(enc, head, lr=0.005).to(device)
        g = torch.Generator().manual_seed(0)
        codes = torch.randint(1, BENCH_CATEGORIES + 1, (enc.num_items,), generator=g)
        codes[:FIRST_ITEM] = 0  # padding and OOV have none
        learner.set_item_categories(codes)
        learner.set_item_counts(torch.randint(0, 5, (enc.num_items,), generator=g))
        return learner
    if variant.endswith(COPY):
        head = HeadConfig(variant=variant.removesuffix(COPY), copy=True, copy_aux=1.0)
    else:
        head = HeadConfig(variant=variant)
    return Learner(enc, head, lr=0.005).to(device)


def run_one(model: str, items: int, args: argparse.Namespace, device: torch.device) -> dict:
    """Measure one configuration in this process; returns the row as a dict."""
    retained = retain_heap() if args.retain_heap else False
    baseline = rss_mib()
    kind, variant = MODELS[model]
    torch.manual_seed(args.seed)
    enc = EncoderConfig(kind=kind, num_items=items, max_len=args.window, dim=args.dim, blocks=1, heads=1,
                        dropout=0.1, categories=BENCH_CATEGORIES + 1 if variant.endswith(CATEGORY) else 0)
    learner = make_learner(variant, enc, args.batch, device)
    learner.train()
    b = args.batch
    pool = synthetic_transitions(4 * b, items, args.window, args.seed, device)
    batches = [take(pool, slice(i * b, (i + 1) * b)) for i in range(4)]

    for step in range(args.warmup):
        learner.update(batches[step % 4], step, args.seed)
    mm = matmul_samples(b, args.dim, items, device, args.mm_samples)
    mm_before = {k: median(v) for k, v in mm.items()}
    sync(device)
    step_s = []
    faults = minor_faults()
    t0 = time.perf_counter()
    for i in range(args.steps):
        t = time.perf_counter()
        learner.update(batches[i % 4], args.warmup + i, args.seed)  # .item() inside: synchronous on CUDA
        step_s.append(time.perf_counter() - t)
    train_s = time.perf_counter() - t0
    faults = minor_faults() - faults
    after = matmul_samples(b, args.dim, items, device, args.mm_samples)
    # a busy machine shows as bare products that changed speed while the steps ran
    drift = max(abs(median(after[k]) / mm_before[k] - 1.0) for k in SHAPES)
    for k, v in after.items():
        mm[k] += v
    t_mm = {k: median(v) for k, v in mm.items()}
    counts = dict(zip(SHAPES, MATMULS[variant.removesuffix(CATEGORY).removesuffix(COPY)]))
    bound_step_s = sum(counts[k] * t_mm[k] for k in SHAPES)
    # the strict bound: the forward product at the fastest of its output layouts
    best = {**t_mm, "fwd": min(t_mm["fwd"], t_mm["fwd_padded"], t_mm["fwd_blocked"])}
    strict_step_s = sum(counts[k] * best[k] for k in SHAPES)
    flops = 2 * b * args.dim * items

    profile = None
    if args.profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with torch_profile(activities=acts, record_shapes=True) as prof:
            for i in range(args.profile_steps):
                learner.update(batches[i % 4], 10_000 + i, args.seed)
        sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        profile = prof.key_averages(group_by_input_shape=True).table(sort_by=sort, row_limit=25,
                                                                     max_name_column_width=40)

    epoch_s = None
    if args.epoch:
        data = synthetic_transitions(args.epoch_transitions, items, args.window, args.seed + 1, device)
        n = args.epoch_transitions
        sync(device)
        t = time.perf_counter()
        perm = torch.randperm(n, device=device)
        for step, start in enumerate(range(0, n, b)):
            learner.update(take(data, perm[start:start + b]), 20_000 + step, args.seed)
        sync(device)
        epoch_s = time.perf_counter() - t
        del data

    learner.eval()
    eval_data = synthetic_transitions(args.eval_batches * 1024, items, args.window, args.seed + 2, device)
    evals = [take(eval_data, slice(i * 1024, (i + 1) * 1024)) for i in range(args.eval_batches)]
    with torch.no_grad():
        target_ranks(learner.scores(evals[0]["state"]), evals[0]["action"])  # warm-up
        sync(device)
        t = time.perf_counter()
        for e in evals:
            ranks = target_ranks(learner.scores(e["state"]), e["action"])
        ranks.sum().item()
        sync(device)
        eval_s = time.perf_counter() - t

    peak_gpu = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"model": model, "items": items, "variant": variant, "batch": b, "steps": args.steps,
            "samples_per_s": b * args.steps / train_s, "median_step_s": median(step_s),
            "bound_samples_per_s": b / bound_step_s, "fraction": (b * args.steps / train_s) / (b / bound_step_s),
            "strict_bound_samples_per_s": b / strict_step_s,
            "strict_fraction": (b * args.steps / train_s) / (b / strict_step_s),
            # the same statistic on both sides (medians): the wall mean above also counts noise spikes
            "median_fraction": bound_step_s / median(step_s),
            "matmuls": counts, "t_mm": t_mm, "gflops": {k: flops / t_mm[k] / 1e9 for k in t_mm},
            "eval_states_per_s": args.eval_batches * 1024 / eval_s, "epoch_s": epoch_s,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "baseline_rss_mib": baseline, "peak_gpu_mib": peak_gpu, "profile": profile,
            "faulted_mib_per_step": faults * os.sysconf("SC_PAGE_SIZE") / 2**20 / args.steps,
            "mm_drift": drift, "retained_heap": retained}


def fmt_row_line(r: dict) -> str:
    g = r["gflops"]
    epoch = f"  epoch {r['epoch_s']:.1f} s" if r["epoch_s"] is not None else ""
    gpu = f"  peak GPU {r['peak_gpu_mib']:,.0f} MiB" if r["peak_gpu_mib"] is not None else ""
    return (f"{r['model']:12s} {r['items']:>8,} items  {r['samples_per_s']:>9,.0f} samples/s  "
            f"bound {r['bound_samples_per_s']:>9,.0f} ({sum(r['matmuls'].values())} matmuls)  "
            f"fraction {r['fraction']:.2f} (strict {r['strict_fraction']:.2f}, "
            f"median step {r['median_fraction']:.2f})  "
            f"median step {r['median_step_s'] * 1e3:.1f} ms  "
            f"eval {r['eval_states_per_s']:>9,.0f} states/s  peak {r['peak_rss_mib']:,.0f} MiB{gpu}{epoch}  "
            f"page-faulted {r['faulted_mib_per_step']:,.0f} MiB/step  "
            f"matmul GFLOP/s fwd {g['fwd']:.0f} fwd_padded {g['fwd_padded']:.0f} fwd_blocked {g['fwd_blocked']:.0f} "
            f"grad_state {g['grad_state']:.0f} grad_weight {g['grad_weight']:.0f}"
            f"  (drift {r['mm_drift']:.0%})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--catalogues", default="26702,100000", help="comma-separated catalogue sizes I")
    ap.add_argument("--variants", default="gru4rec,sasrec,sasrec-sqn,sasrec-sa2c",
                    help=f"comma-separated models: {', '.join(MODELS)}")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--window", type=int, default=10)
    ap.add_argument("--steps", type=int, default=30, help="timed training steps per configuration")
    ap.add_argument("--warmup", type=int, default=3, help="untimed training steps first")
    ap.add_argument("--mm-samples", type=int, default=15, help="samples of each bare matmul, before and after")
    ap.add_argument("--eval-batches", type=int, default=10, help="timed evaluation batches of 1024 states")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--epoch", action=argparse.BooleanOptionalAction, default=None,
                    help="time one epoch of a synthetic RC15-sized set (default: on CUDA only)")
    ap.add_argument("--epoch-transitions", type=int, default=RC15_TRANSITIONS)
    ap.add_argument("--retain-heap", action=argparse.BooleanOptionalAction, default=True,
                    help="glibc mallopt: keep freed memory (no mmap/trim), as `seqrec train` does (default on)")
    ap.add_argument("--profile", action="store_true", help="print a torch.profiler table of a few steps per row")
    ap.add_argument("--profile-steps", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: "model:items", run in-process
    args = ap.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    if args.epoch is None:
        args.epoch = device.type == "cuda"

    if args.one is not None:  # child: one configuration, result as one JSON line
        model, items = args.one.split(":")
        print(RESULT + json.dumps(run_one(model, int(items), args, device)), flush=True)
        return

    models = [m for m in args.variants.split(",") if m]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)}")
    catalogues = [int(s) for s in args.catalogues.split(",")]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"torch {torch.__version__}  device {name}  threads {torch.get_num_threads()}  batch {args.batch}  "
          f"dim {args.dim}  window {args.window}  steps {args.steps} (+{args.warmup} warm-up)  "
          f"heap {'retained (mallopt)' if args.retain_heap else 'default malloc'}  "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    passthrough = sys.argv[1:]
    rows = []
    for items in catalogues:
        for model in models:
            cmd = [sys.executable, os.path.abspath(__file__), *passthrough, "--one", f"{model}:{items}",
                   "--threads", str(torch.get_num_threads()), "--device", device.type,
                   "--epoch" if args.epoch else "--no-epoch"]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                sys.stderr.write(proc.stderr)
                raise SystemExit(f"{model} at {items:,} items failed")
            r = json.loads(next(s for s in proc.stdout.splitlines() if s.startswith(RESULT))[len(RESULT):])
            rows.append(r)
            print(fmt_row_line(r), flush=True)
            if r["profile"]:
                print(r["profile"], flush=True)

    gpu = device.type == "cuda"
    epoch = args.epoch
    head = ["model", "catalogue", "samples/s", "bound samples/s", "fraction of bound", "strict fraction",
            "median-step fraction", "eval states/s",
            "peak RSS MiB"] + (["peak GPU MiB"] if gpu else []) + (["epoch s"] if epoch else [])
    print("\n| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        cells = [r["model"], f"{r['items']:,}", f"{r['samples_per_s']:,.0f}", f"{r['bound_samples_per_s']:,.0f}",
                 f"{r['fraction']:.2f}", f"{r['strict_fraction']:.2f}", f"{r['median_fraction']:.2f}",
                 f"{r['eval_states_per_s']:,.0f}",
                 f"{r['peak_rss_mib']:,.0f}"]
        cells += [f"{r['peak_gpu_mib']:,.0f}"] if gpu else []
        cells += [f"{r['epoch_s']:.1f}"] if epoch else []
        print("| " + " | ".join(cells) + " |")
    print()
    for items in catalogues:
        same = [r for r in rows if r["items"] == items]
        g = {k: median([r["gflops"][k] for r in same]) for k in (*SHAPES, "fwd_padded", "fwd_blocked")}
        t = {k: median([r["t_mm"][k] for r in same]) for k in (*SHAPES, "fwd_padded", "fwd_blocked")}
        print(f"bare matmul at I={items:,} (B={args.batch}, D={args.dim}, {2 * args.batch * args.dim * items / 1e9:.2f}"
              f" GFLOP each; median over rows): " + ", ".join(
                  f"{k} {t[k] * 1e3:.2f} ms = {g[k]:.0f} GFLOP/s" for k in (*SHAPES, "fwd_padded", "fwd_blocked")))
    print("fraction = mean samples/s over the timed steps (wall clock) / bound; median-step fraction = the "
          "median step's rate / bound, medians on both sides (the bare products are medians too).")
    print("bound = batch / sum over products (count x bare time of the plain product of that shape); strict: "
          "the forward product at the fastest of its three layouts (plain, rows padded as seqrec/catalogue.py writes "
          "the CE logits, or in transposed blocks as its scores_argmax computes the double-Q arg-max). Products per "
          "step: "
          + ", ".join(f"{m} {sum(MATMULS[MODELS[m][1].removesuffix(CATEGORY).removesuffix(COPY)])}" for m in models)
          + f". RSS after import torch: {median([r['baseline_rss_mib'] for r in rows]):,.0f} MiB (in every peak).")
    busy = [f"{r['model']} at {r['items']:,}" for r in rows if r["mm_drift"] > 0.25 and r["t_mm"]["fwd"] > 1e-3]
    if busy:
        print(f"WARNING: the bare matmul changed speed by more than 25% around the steps of {', '.join(busy)}: "
              "the machine was busy (or the kernel is unstable at this shape): read those rows with care.")
    print("eval states/s = ranked targets per second (one state each); sessions/s = states/s / events per "
          f"session ({RC15_SESSION_LEN} in RC15).")


if __name__ == "__main__":
    main()
