#!/usr/bin/env python3
"""A side-by-side table in BENCHMARKS.md's form from JSON lines on stdin, one per side and round:
`impl`, `load_s`, `run_s` (or `separate_s`), `rtf`, `peak_rss_mib`. The ratio column is each
side's time over msaas's in the same round. With --sdr (the JSON `tools/spleeter/sdr.py score`
prints) an SDR column is added; --label IMPL=NAME maps a side to its name there. Standard library
only.

    ... | tools/bench/table.py [--sdr sdr.json --label "spleeter (Deezer, TensorFlow)=spleeter"]
"""
import argparse
import json
import sys


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sdr", help="SDR scores by label, with the trivial estimate as mix/2")
    parser.add_argument("--label", action="append", default=[], metavar="IMPL=NAME")
    args = parser.parse_args()
    labels = dict(pair.split("=", 1) for pair in args.label)
    sdr = None
    if args.sdr:
        with open(args.sdr) as f:
            sdr = json.load(f)
    runs = [json.loads(line) for line in sys.stdin if line.strip().startswith("{")]
    took = lambda run: run.get("run_s", run.get("separate_s"))
    ours = [took(r) for r in runs if r["impl"] == "msaas"]
    sdr_head, sdr_rule = (" SDR vocals / accompaniment |", "---|") if sdr is not None else ("", "")
    print(f"| round | side | run (RTF) | its time / msaas's | model load | peak RSS |{sdr_head}")
    print(f"|---|---|---|---|---|---|{sdr_rule}")
    seen = {}
    for run in runs:
        seen[run["impl"]] = seen.get(run["impl"], 0) + 1
        n = seen[run["impl"]]
        base = ours[n - 1] if n <= len(ours) else None
        ratio = "—" if run["impl"] == "msaas" or not base else f"{took(run) / base:.2f}×"
        row = (f"| {n} | {run['impl']} | {took(run):.2f} s ({run['rtf']:.3f}) | {ratio} | "
               f"{run['load_s']:.2f} s | {run['peak_rss_mib']:.0f} MiB |")
        if sdr is not None:
            row += f" {sdr_text(sdr.get(labels.get(run['impl'], run['impl'])))} |"
        print(row)
    if sdr is not None and "mix/2" in sdr:
        print(f"| | mix / 2 (trivial estimate) | | | | | {sdr_text(sdr['mix/2'])} |")


def sdr_text(score):
    return f"{score['vocals']:.2f} / {score['accompaniment']:.2f} dB" if score else ""


if __name__ == "__main__":
    sys.exit(main())
