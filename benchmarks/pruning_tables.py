"""The Markdown tables of docs/results.md from a saved pruning study (``PruningResult`` JSON).

Usage: ``python benchmarks/pruning_tables.py benchmarks/results/pruning_vaswani_k50_full.json [--measure nDCG@10]``

Every number comes from ``PruningResult.statistics`` (10,000 bootstrap resamples and sign vectors, seed
0): per mode, the selected conditions' mean drop from the unpruned measure with its 95 % interval and
Holm-adjusted paired sign-flip p-value, the random sets' mean drop, the difference to the random sets
(their mean minus the condition's, per query) with its interval and Holm p, and the condition's rank
among itself and the random draws (1 = it lowers the measure most).
"""

from __future__ import annotations

import argparse
from typing import Any


def fmt(x: float) -> str:
    return f"{x:+.4f}".replace("-", "−")


def ci(v: Any) -> str:
    return f"[{fmt(v[0])}, {fmt(v[1])}]"


def p(x: float) -> str:
    return "1" if x >= 0.9995 else f"{x:.2g}"


def tables(result: Any, measure: str) -> str:
    rows = result.statistics(measure)
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    selected = [c for c in dict.fromkeys(r["condition"] for r in rows) if c != "random"]
    random = {(r["mode"], r["fraction"]): r for r in rows if r["condition"] == "random"}
    n_random = max((r["n_seeds"] for r in random.values()), default=0)
    out = []
    for mode in modes:
        head = ["fraction", "neurons", "condition", "drop [95 % CI]", "p (Holm)"]
        head += [f"random ({n_random}) drop", "− random [95 % CI]", "p (Holm)", "rank"]
        out += [f"{measure}, **{mode}** mode:", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in rows:
            if r["mode"] != mode or r["condition"] not in selected:
                continue
            rnd, vs = random.get((mode, r["fraction"])), r.get("vs_random")
            cells = [f"{100 * r['fraction']:g} %", str(r["n_neurons"]), r["condition"]]
            cells += [f"{fmt(r['drop'])} {ci(r['drop_ci'])}", p(r["p_holm"])]
            cells += [fmt(rnd["drop"]) if rnd else "–"]
            cells += (
                [
                    f"{fmt(vs['difference'])} {ci(vs['ci'])}",
                    p(vs["p_holm"]),
                    f"{vs['rank']} of {vs['n_random'] + 1}",
                ]
                if vs
                else ["–", "–", "–"]
            )
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    ap.add_argument(
        "result", help="a PruningResult JSON (pruning_study(...).save / benchmarks/pruning.py --out)"
    )
    ap.add_argument("--measure", default=None, help="one measure (default: each of the result's)")
    args = ap.parse_args()
    from mechir_nig.experiments.pruning import PruningResult

    res = PruningResult.load(args.result)
    unpruned = res.table()[0]
    print(
        f"{len(res.eval_queries)} evaluation queries; unpruned "
        + ", ".join(f"{m} {unpruned[m]:.4f}" for m in res.measures)
        + "\n"
    )
    for m in [args.measure] if args.measure else res.measures:
        print(tables(res, m))


if __name__ == "__main__":
    main()
