"""The ZeRO-stage runs of zero_stages.sh beside their plans: python zero_table.py OUT."""
import json
import sys
from pathlib import Path

out = Path(sys.argv[1])
print("| case | plan peak GB (first step) | measured first step GB | measured later steps GB | plan vs later | s/step (last) | host GB planned |")
print("|---|---|---|---|---|---|---|")
for plan_file in sorted(out.glob("plan_*.json")):
    case = plan_file.stem[len("plan_"):]
    try:
        p = json.loads(plan_file.read_text())
    except ValueError:
        print(f"| {case} | plan failed | | | | | |")
        continue
    rows = []
    metrics = out / f"metrics_{case}.jsonl"
    if metrics.exists():
        for line in metrics.read_text().splitlines():
            r = json.loads(line)
            if "perf/peak_memory_gb" in r:
                rows.append(r)
    first = rows[0]["perf/peak_memory_gb"] if rows else None
    later = max(r["perf/peak_memory_gb"] for r in rows[1:]) if len(rows) > 1 else None
    step = rows[-1]["perf/step_time_s"] if rows else None
    host = sum(p.get("cpu", {}).values()) / 1e9
    gap = f"{(p['peak_bytes'] / 1e9 / later - 1) * 100:+.1f}%" if later else "n/a"
    fmt = lambda v: f"{v:.2f}" if v is not None else "n/a"  # noqa: E731
    print(f"| {case} | {p['peak_bytes'] / 1e9:.2f} ({p['first_step_peak_bytes'] / 1e9:.2f}) | {fmt(first)} | {fmt(later)} "
          f"| {gap} | {fmt(step)} | {host:.2f} |")
