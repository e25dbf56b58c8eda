"""Draws bench/results.png from bench/results.json: drain and enqueue rates, medians with min-max bars.

Runs in the bench's own `report` virtualenv (matplotlib is no dependency of workqueue):
    bench/.venvs/report/bin/python bench/plot.py bench/results.json bench/results.png
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import matplotlib.ticker

ENQUEUE_LABELS = {
    "inprocess_batch": "workqueue Queue.enqueue, batches of 500",
    "inprocess_single": "workqueue Queue.enqueue, 1 job/call",
    "http_array500": "workqueue HTTP, arrays of 500",
    "http_single_wrk": "workqueue HTTP, 1 job/POST (wrk)",
    "http_single_aiohttp": "workqueue HTTP, 1 job/POST (aiohttp client)",
    "ceiling_wrk": "bare aiohttp ceiling (wrk)",
    "ceiling_aiohttp": "bare aiohttp ceiling (aiohttp client)",
}


def bars(ax, rows, title, colors):
    rows = rows[::-1]  # top to bottom as listed
    names = [r[0] for r in rows]
    med = [r[1]["median"] for r in rows]
    lo = [r[1]["median"] - r[1]["min"] for r in rows]
    hi = [r[1]["max"] - r[1]["median"] for r in rows]
    ax.barh(names, med, xerr=[lo, hi], color=colors[::-1], capsize=3, error_kw={"elinewidth": 1})
    top = max(r[1]["max"] for r in rows)
    for y, r in enumerate(rows):
        ax.text(r[1]["max"] + top * 0.015, y, f"{r[1]['median']:,.0f}", va="center", fontsize=8)
    ax.set_xlim(0, top * 1.15)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:,.0f}"))
    ax.set_title(title, fontsize=11)
    ax.set_xlabel("jobs per second (median; bars: min-max)")
    ax.grid(axis="x", alpha=0.3)
    ax.tick_params(axis="y", labelsize=8)


def main() -> None:
    src, dst = sys.argv[1], sys.argv[2]
    with open(src) as f:
        data = json.load(f)
    labels = data["labels"]
    drain = data["summary"].get("drain", {})
    drain_rows = [(labels[k], drain[k]["rate"]) for k in labels if k in drain]
    enq = data["enqueue"]
    enq_rows = [(ENQUEUE_LABELS[k], enq[k]) for k in ENQUEUE_LABELS if k in enq]
    enq_rows += [(f"{labels[k]} ({data['fill_notes'][k].split(',')[0]})", enq[k]) for k in labels
                 if k in enq and not k.startswith("workqueue")]
    wq, peer, ceil = "#2b6cb0", "#a0aec0", "#ed8936"
    fig, axes = plt.subplots(1, 2, figsize=(15, 6.2), gridspec_kw={"width_ratios": [1, 1.15]})
    n = data["config"]["jobs"]
    slots = data["config"]["concurrency"]
    if drain_rows:  # none in a run of other scenarios only (e.g. --scenarios scale)
        bars(axes[0], drain_rows, f"Drain: {n:,} queued no-op jobs, 1 worker process, {slots} slots",
             [wq if name.startswith("workqueue") else peer for name, _ in drain_rows])
    if enq_rows:
        bars(axes[1], enq_rows, "Enqueue: each system's fastest client path",
             [ceil if "ceiling" in name else wq if name.startswith("workqueue") else peer for name, _ in enq_rows])
    m = data["machine"]
    fig.suptitle(f"workqueue vs Python job queues on Redis — {data['date'][:10]}, {m['cpus']} CPUs {m['cpu_model']}, "
                 f"{m['redis_server']}, medians of {data['config']['rounds']} round(s)", fontsize=10)
    fig.tight_layout()
    fig.savefig(dst, dpi=110)


if __name__ == "__main__":
    main()
