"""The twenty-eighth run's sweep in one table and one picture: call 1's fixed and strided series
(callAF1/sweep/scaling.csv) and call 2's dense series (the table its log printed: the device returned
the log, not that call's CSV), drawn by ``engine.bench_scaling.plot`` with the slopes it fits.

    .venv/bin/python docs/runs/twentyeighth/merge_sweep.py   # writes docs/scaling_h200.csv and .png
"""

import csv
from pathlib import Path
from types import SimpleNamespace

from megastride.engine.bench_scaling import plot, slopes

HERE = Path(__file__).resolve().parent
DOCS = HERE.parents[1]
FIELDS = ("kind", "seq_len", "status", "step_s", "tokens_per_s", "mfu", "peak_gb", "plan_gb", "plan_error_pct",
          "recomputed_blocks", "keep_attention")


def _number(text: str):
    text = text.replace(",", "").rstrip("%")
    return None if text in ("—", "") else float(text)


def rows():
    out = []
    with open(HERE / "callAF1" / "sweep" / "scaling.csv") as f:
        for r in csv.DictReader(f):
            out.append({k: r[k] for k in FIELDS})
    for line in (HERE / "callAF2" / "sweep.log").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| dense |"):
            kind, n, _batch, status, step, tok, mfu, peak, plan, err = cells[:10]
            out.append(dict(kind=kind, seq_len=n.replace(",", ""), status=status, step_s=_number(step),
                            tokens_per_s=_number(tok), mfu=_number(mfu), peak_gb=_number(peak), plan_gb=_number(plan),
                            plan_error_pct=_number(err), recomputed_blocks="", keep_attention=""))
    for r in out:
        r["seq_len"] = int(r["seq_len"])
        r["step_s"] = float(r["step_s"]) if r["step_s"] not in (None, "") else None
    return sorted(out, key=lambda r: (["dense", "fixed", "strided"].index(r["kind"]), r["seq_len"]))


def main() -> None:
    table = rows()
    with open(DOCS / "scaling_h200.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(table)
    objs = [SimpleNamespace(**r) for r in table]
    print("slopes from 16,384 tokens:", {k: round(v, 2) for k, v in slopes(objs).items() if v is not None})
    plot(objs, DOCS / "scaling_h200.png")
    print("wrote", DOCS / "scaling_h200.csv", DOCS / "scaling_h200.png")


if __name__ == "__main__":
    main()
