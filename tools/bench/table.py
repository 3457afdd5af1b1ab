#!/usr/bin/env python3
"""A side-by-side table in BENCHMARKS.md's form from JSON lines on stdin, one per side and round:
`impl`, `audio_s`, `load_s`, `run_s` (or `separate_s`), `rtf`, `peak_rss_mib`. The ratio column
is each side's time over msaas's in the same round. Standard library only.

    ... | tools/bench/table.py
"""
import json
import sys


def main():
    runs = [json.loads(line) for line in sys.stdin if line.strip().startswith("{")]
    took = lambda run: run.get("run_s", run.get("separate_s"))
    ours = [took(r) for r in runs if r["impl"] == "msaas"]
    print("| round | side | run (RTF) | its time / msaas's | model load | peak RSS |")
    print("|---|---|---|---|---|---|")
    seen = {}
    for run in runs:
        seen[run["impl"]] = seen.get(run["impl"], 0) + 1
        n = seen[run["impl"]]
        base = ours[n - 1] if n <= len(ours) else None
        ratio = "—" if run["impl"] == "msaas" or not base else f"{took(run) / base:.2f}×"
        print(f"| {n} | {run['impl']} | {took(run):.2f} s ({run['rtf']:.3f}) | {ratio} | "
              f"{run['load_s']:.2f} s | {run['peak_rss_mib']:.0f} MiB |")


if __name__ == "__main__":
    sys.exit(main())
