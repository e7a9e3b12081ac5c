"""Peak memory of building 10k judged pairs (with texts) from a streamed corpus, as the corpus grows.

Usage: ``python benchmarks/streaming.py [--root /tmp/mechir_nig_synthetic] [--sizes 100000,500000,2000000]
[--eager-sizes 100000,500000] [--words 60] [--k 100] [--repeats 3]``, or for lookups by id in a local corpus
``python benchmarks/streaming.py --lookups [--lookup-docs 2000000] [--lookup-words 8] [--lookup-ids 10000]
[--repeats 3]``

"Texts held" is the number of document texts in memory after each step (the distinct ids looked up
for the lazy path, the whole corpus for the eager one): the top-100 candidates of 1,000 queries name
fewer distinct documents in a small corpus, where random runs overlap more. For each corpus size a
synthetic TSV collection (``benchmarks/make_synthetic_corpus.py``: 1,000 queries,
10,000 judged documents drawn from the whole corpus, a 100-deep run; written once under ``--root``
and reused) is loaded in a fresh child process per configuration and measurement:

* ``lazy``: ``load_collection(folder, lazy=True)`` then ``judged_pairs(col)`` (10,000 pairs with their
  texts: one pass over ``docs.tsv`` keeping the judged ids), then ``scoreddocs_candidates(col, k)``
  (the run streamed, a top-``k`` heap per query, texts of the candidates looked up in one more pass);
* ``eager`` (the default ``load_collection(folder)``, every document in a dict), for comparison.

Per configuration (row), an RSS child measures peak RSS (``VmHWM``, minus the RSS after the imports)
and the wall times of the two steps; it runs ``--repeats`` times (default 3), the rows alternated round
by round (row 1, row 2, ..., row 1, row 2, ...) after every corpus file was read once (page cache), and
the table prints the median [min - max] of each time and of each peak RSS. One more child per row
measures the peak of Python allocations with ``tracemalloc`` (slower, so not timed; one run: the same
input makes the same allocations). The pairs, their text bytes and the candidates are checked the same in
every run and both modes of a corpus (a difference stops the script). The claim checked: the lazy peak
follows the texts held and the offset index (8 bytes per document), not the corpus's texts; the ratios
largest / smallest corpus are printed (the time ratio of medians, with the range of per-round ratios).

``--lookups`` times ``docs.get_many`` on a lazily loaded local TSV corpus (``--lookup-docs`` short
documents of ``--lookup-words`` words, written once under ``--root``): two calls of ``--lookup-ids``
distinct random ids each, *before* (one streaming pass over the file per call, as ``get_many`` did before
the offset index: ``read_texts(path, "docs", only=ids)``) and *after* (``OffsetIndex``: the first call
builds the index in one pass, the second seeks). Runs alternate before/after, ``--repeats`` times (a fresh
index each time; the file is read once first so that both find it in the page cache); the answers are
checked equal, and the median and the range are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(__file__))
from _common import Seconds, alternate, repeats  # noqa: E402
from _common import header as header_line  # noqa: E402
from make_synthetic_corpus import DEFAULT_ROOT, ensure_corpus  # noqa: E402

CHILD = """
import json, sys, time, tracemalloc
from mechir_nig.data import judged_pairs, load_collection, scoreddocs_candidates

folder, mode, measure, k = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

def hwm():  # peak RSS of this process in KiB (starts afresh at exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

base = hwm()
out = {"base_kib": base}
if measure == "trace":
    tracemalloc.start()
t0 = time.perf_counter()
col = load_collection(folder, lazy=(mode == "lazy"))
pairs = judged_pairs(col)
held = lambda: col.docs.cached if mode == "lazy" else len(col.docs)  # texts in memory
out.update(pairs=len(pairs), text_bytes=sum(len(p.doc.encode()) for p in pairs),
           pairs_s=time.perf_counter() - t0, pairs_hwm_kib=hwm(), pairs_held=held())
if measure == "trace":
    out["pairs_trace"] = tracemalloc.get_traced_memory()[1]
    tracemalloc.reset_peak()
t1 = time.perf_counter()
run = scoreddocs_candidates(col, k=k)
out.update(candidates=sum(len(r) for r in run.values()), candidates_s=time.perf_counter() - t1,
           all_hwm_kib=hwm(), all_held=held())
if measure == "trace":
    out["candidates_trace"] = tracemalloc.get_traced_memory()[1]
print(json.dumps(out))
"""


def child(folder: str, mode: str, measure: str, k: int) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    res = subprocess.run(
        [sys.executable, "-c", CHILD, folder, mode, measure, str(k)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if res.returncode != 0:
        raise SystemExit(f"child {mode}/{measure} on {folder} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def lookups(root: str, n_docs: int, words: int, n_ids: int, repeats: int) -> None:
    """Print before/after timings of two ``get_many`` calls of ``n_ids`` ids each on an ``n_docs`` corpus."""
    import random
    import statistics
    import time

    from mechir_nig.data.formats import read_texts
    from mechir_nig.data.formats.offsets import OffsetIndex

    folder = os.path.join(root, f"lookup_{n_docs}")
    meta = ensure_corpus(folder, n_docs, words=words, queries=100)
    path = os.path.join(folder, "docs.tsv")
    ids = [f"D{i}" for i in random.Random(0).sample(range(n_docs), 2 * n_ids)]
    calls = [ids[:n_ids], ids[n_ids:]]
    with open(path, "rb") as f:  # warm the page cache for both
        while f.read(1 << 24):
            pass

    def before() -> tuple[list[float], list[dict[str, str]]]:
        times, answers = [], []
        for call in calls:
            t0 = time.perf_counter()
            answers.append(dict(read_texts(path, "docs", only=frozenset(call))))
            times.append(time.perf_counter() - t0)
        return times, answers

    def after() -> tuple[list[float], list[dict[str, str]]]:
        index, times, answers = OffsetIndex(path, min_bytes=0), [], []
        for call in calls:
            t0 = time.perf_counter()
            answers.append(index.get_many(call))
            times.append(time.perf_counter() - t0)
        assert index.seeks and index.builds == 1 and index.indexed == n_docs
        return times, answers

    runs: dict[str, list[list[float]]] = {"before": [], "after": []}
    last: list[dict[str, str]] = []
    for _ in range(repeats):  # alternate the two
        for name, fn in (("before", before), ("after", after)):
            times, answers = fn()
            runs[name].append(times)
            assert [len(a) for a in answers] == [n_ids, n_ids], (name, [len(a) for a in answers])
            if name == "after":
                assert answers == last, "the index answers differ from a scan"
            last = answers
    header_line("lazy corpus lookups (--lookups)")
    print(
        f"\nget_many of {n_ids:,} random ids, twice, in a {n_docs:,}-document TSV corpus "
        f"({meta['docs_bytes'] / 2**20:,.0f} MiB, ~{words} words per document); {repeats} alternated runs, "
        "median [min - max] seconds"
    )
    print("| lookup | first call | second call | both |")
    print("| --- | ---: | ---: | ---: |")
    for name, label in (("before", "scan per call (before)"), ("after", "offset index (after)")):
        cols = [[t[0] for t in runs[name]], [t[1] for t in runs[name]], [sum(t) for t in runs[name]]]
        cells = " | ".join(f"{statistics.median(c):.2f} [{min(c):.2f} - {max(c):.2f}]" for c in cols)
        print(f"| {label} | {cells} |", flush=True)
    second = statistics.median(t[1] for t in runs["before"]) / statistics.median(t[1] for t in runs["after"])
    print(f"second call: {second:.0f}x faster with the index")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=str(DEFAULT_ROOT), help="where the corpora are written (docs_N)")
    ap.add_argument("--sizes", default="100000,500000,2000000", help="corpus sizes for the lazy path")
    ap.add_argument("--eager-sizes", default="100000,500000", help="corpus sizes for the eager path")
    ap.add_argument("--words", type=int, default=60, help="mean words per document")
    ap.add_argument("--k", type=int, default=100, help="candidates per query from the streamed run")
    ap.add_argument("--lookups", action="store_true", help="time get_many by id instead (before/after)")
    ap.add_argument("--lookup-docs", type=int, default=2_000_000, help="corpus size for --lookups")
    ap.add_argument("--lookup-words", type=int, default=8, help="mean words per document for --lookups")
    ap.add_argument("--lookup-ids", type=int, default=10_000, help="ids per get_many call for --lookups")
    ap.add_argument(
        "--repeats",
        type=repeats,
        default=3,
        help="alternated runs per row (and per method for --lookups); >= 3",
    )
    args = ap.parse_args()
    if args.lookups:
        lookups(args.root, args.lookup_docs, args.lookup_words, args.lookup_ids, args.repeats)
        return
    sizes = [int(s) for s in args.sizes.split(",") if s]
    eager_sizes = [int(s) for s in args.eager_sizes.split(",") if s]
    configs = [("lazy", n) for n in sizes] + [("eager", n) for n in eager_sizes]
    metas = {
        n: ensure_corpus(os.path.join(args.root, f"docs_{n}"), n, words=args.words)
        for n in sorted({n for _, n in configs})
    }
    for n in metas:  # read each corpus once, so that the first round finds it in the page cache too
        for name in ("docs.tsv", "run.txt"):
            with open(os.path.join(args.root, f"docs_{n}", name), "rb") as f:
                while f.read(1 << 24):
                    pass

    header_line(
        f"10,000 judged pairs with texts from a synthetic TSV corpus (~{args.words} words per document), "
        f"then the top-{args.k} candidates per query from a 100-deep run"
    )
    print(
        f"  timing: each row's RSS child (a fresh process) runs {args.repeats} times, the rows alternated "
        f"round by round (row 1, row 2, ..., row 1, row 2, ...; the corpora read once before, so every round "
        "finds them in the page cache); round lines show the pairs step's time",
        flush=True,
    )
    rss_runs: dict[tuple[str, int], list[dict]] = {c: [] for c in configs}

    def timed(mode: str, n: int):
        def fn() -> Seconds:
            r = child(os.path.join(args.root, f"docs_{n}"), mode, "rss", args.k)
            rss_runs[mode, n].append(r)
            return Seconds(r["pairs_s"])

        return fn

    alternate({f"{m} {n:,}": timed(m, n) for m, n in configs}, repeats=args.repeats, warmup=0)
    # tracemalloc: one (untimed, slower) child per row; the Python allocations of the same input are the
    # same each run, so one run is the figure
    trace = {(m, n): child(os.path.join(args.root, f"docs_{n}"), m, "trace", args.k) for m, n in configs}

    # the same corpus gives the same pairs and candidates in every run and both modes
    answers = {
        (m, n): {(r["pairs"], r["text_bytes"], r["candidates"]) for r in [*rss_runs[m, n], trace[m, n]]}
        for m, n in configs
    }
    for n in metas:
        same = set().union(*(answers[m, k] for m, k in configs if k == n))
        if len(same) != 1:  # a timing of different answers is no timing
            raise SystemExit(
                f"{n:,} documents: the runs and modes gave different (pairs, text bytes, candidates): {sorted(same)}"
            )
        print(
            f"  {n:,} documents: same (pairs, text bytes, candidates) in every run and mode: {sorted(same)}"
        )

    def above_imports(r: dict, key: str) -> float:
        """MiB of peak RSS ``key`` above the RSS after the imports."""
        return (r[key] - r["base_kib"]) / 1024

    def ratio(key: Callable[[dict], float], hi: tuple[str, int], lo: tuple[str, int]) -> float:
        """Median of ``key`` over the runs of row ``hi`` / over those of row ``lo``."""
        return statistics.median(map(key, rss_runs[hi])) / statistics.median(map(key, rss_runs[lo]))

    def cell(runs: list[dict], key: str) -> str:
        v = [r[key] for r in runs]
        return f"{statistics.median(v):.2f} s [{min(v):.2f} - {max(v):.2f}]"

    def rss_cell(runs: list[dict], key: str) -> str:
        v = [above_imports(r, key) for r in runs]
        return f"{statistics.median(v):.1f} MiB [{min(v):.1f} - {max(v):.1f}]"

    mib = 2**20
    print(
        f"\nfresh process per run; times and peak RSS: median [min - max] of {args.repeats} alternated runs; "
        "tracemalloc peak: one run (deterministic)"
    )
    print(
        "| mode | documents | docs.tsv | texts held, pairs | tracemalloc peak, pairs | peak RSS above imports, "
        f"pairs | time, pairs | texts held, + top-{args.k} | tracemalloc peak, + top-{args.k} "
        f"| peak RSS, + top-{args.k} | time, + top-{args.k} |"
    )
    print("| --- |" + " ---: |" * 10)
    for mode, n in configs:
        runs, tr = rss_runs[mode, n], trace[mode, n]
        print(
            f"| {mode} | {n:,} | {metas[n]['docs_bytes'] / mib:,.0f} MiB | {runs[0]['pairs_held']:,} "
            f"| {tr['pairs_trace'] / mib:.1f} MiB | {rss_cell(runs, 'pairs_hwm_kib')} "
            f"| {cell(runs, 'pairs_s')} | {runs[0]['all_held']:,} | {tr['candidates_trace'] / mib:.1f} MiB "
            f"| {rss_cell(runs, 'all_hwm_kib')} | {cell(runs, 'candidates_s')} |",
            flush=True,
        )
    for mode, ns in (("lazy", sizes), ("eager", eager_sizes)):
        if len(ns) < 2:
            continue
        lo, hi = (mode, min(ns)), (mode, max(ns))
        per_round = [a["pairs_s"] / b["pairs_s"] for a, b in zip(rss_runs[hi], rss_runs[lo], strict=True)]
        print(
            f"{mode}: {max(ns):,} / {min(ns):,} documents ({max(ns) / min(ns):g}x the corpus): "
            f"tracemalloc peak ratio {trace[hi]['pairs_trace'] / trace[lo]['pairs_trace']:.2f} (pairs), "
            f"{trace[hi]['candidates_trace'] / trace[lo]['candidates_trace']:.2f} (+ candidates); peak RSS above "
            f"imports ratio of medians {ratio(lambda r: above_imports(r, 'pairs_hwm_kib'), hi, lo):.2f} (pairs), "
            f"{ratio(lambda r: above_imports(r, 'all_hwm_kib'), hi, lo):.2f} (+ candidates); "
            f"time ratio of medians {ratio(lambda r: r['pairs_s'], hi, lo):.1f} "
            f"(pairs; per round {min(per_round):.1f} - {max(per_round):.1f})"
        )


if __name__ == "__main__":
    main()
