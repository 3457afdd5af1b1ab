#!/usr/bin/env python3
"""Helpers of loadtest/run (Python standard library only).

  tools.py free-port                         a free TCP port on 127.0.0.1
  tools.py clips DIR COUNT SECONDS           COUNT stereo 44.1 kHz WAV clips (tones + noise)
  tools.py wait-http URL TIMEOUT_S           until URL answers 200
  tools.py s3-bucket ENDPOINT BUCKET REGION  creates the bucket (SigV4; AWS_* env credentials)
  tools.py poll-metrics URL CSV STOP_FILE    appends msaas_queue_* samples every second until STOP_FILE exists
  tools.py report SUMMARY_JSON QUEUE_CSV OUT_MD TITLE   the markdown report
"""

import csv
import datetime
import hashlib
import hmac
import json
import math
import os
import random
import re
import socket
import struct
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import wave


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        print(sock.getsockname()[1])


def clips(directory, count, seconds):
    """Different clips (so no two uploads are the same bytes): a few tones under 11 kHz with
    a tremolo and a little noise, like the end-to-end tests' "songs"."""
    os.makedirs(directory, exist_ok=True)
    rate = 44100
    frames = int(rate * float(seconds))
    for index in range(int(count)):
        rng = random.Random(index)
        tones = [rng.uniform(110.0, 3000.0) for _ in range(4)]
        path = os.path.join(directory, f"clip-{index:02d}.wav")
        samples = bytearray()
        for n in range(frames):
            t = n / rate
            tremolo = 0.6 + 0.4 * math.sin(2 * math.pi * 0.5 * t)
            left = sum(math.sin(2 * math.pi * f * t) for f in tones[:2]) * 0.2 * tremolo
            right = sum(math.sin(2 * math.pi * f * t) for f in tones[2:]) * 0.2 * tremolo
            left += rng.uniform(-0.02, 0.02)
            right += rng.uniform(-0.02, 0.02)
            samples += struct.pack("<hh", int(left * 32767), int(right * 32767))
        with wave.open(path, "wb") as out:
            out.setnchannels(2)
            out.setsampwidth(2)
            out.setframerate(rate)
            out.writeframes(bytes(samples))
        print(path)


def wait_http(url, timeout_s):
    deadline = time.monotonic() + float(timeout_s)
    last = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
                last = response.status
        except (urllib.error.URLError, ConnectionError, OSError) as err:
            last = err
        time.sleep(0.2)
    sys.exit(f"{url} did not answer 200 within {timeout_s}s (last: {last})")


def _sign(key, message):
    return hmac.new(key, message.encode(), hashlib.sha256).digest()


def s3_bucket(endpoint, bucket, region):
    """PUT /{bucket} with AWS Signature V4 (path style); an existing bucket is fine."""
    access_key = os.environ["AWS_ACCESS_KEY_ID"]
    secret_key = os.environ["AWS_SECRET_ACCESS_KEY"]
    url = urllib.parse.urlsplit(endpoint)
    host = url.netloc
    now = datetime.datetime.now(datetime.timezone.utc)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    day = now.strftime("%Y%m%d")
    payload_hash = hashlib.sha256(b"").hexdigest()
    path = f"/{bucket}"
    canonical = "\n".join([
        "PUT", path, "",
        f"host:{host}", f"x-amz-content-sha256:{payload_hash}", f"x-amz-date:{amz_date}", "",
        "host;x-amz-content-sha256;x-amz-date", payload_hash,
    ])
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    key = _sign(_sign(_sign(_sign(("AWS4" + secret_key).encode(), day), region), "s3"), "aws4_request")
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    request = urllib.request.Request(f"{url.scheme}://{host}{path}", method="PUT", data=b"")
    request.add_header("x-amz-date", amz_date)
    request.add_header("x-amz-content-sha256", payload_hash)
    request.add_header("Authorization",
                       f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, "
                       f"SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature={signature}")
    try:
        with urllib.request.urlopen(request, timeout=10):
            pass
    except urllib.error.HTTPError as err:
        body = err.read().decode(errors="replace")
        if "BucketAlreadyOwnedByYou" not in body and "BucketAlreadyExists" not in body:
            sys.exit(f"cannot create bucket {bucket} at {endpoint}: {err.code} {body[:300]}")


QUEUE_LINE = re.compile(r'^(msaas_queue_[a-z_]+|msaas_stage_in_flight)\{([^}]*)\}\s+([0-9.eE+-]+)$')


def poll_metrics(url, csv_path, stop_file):
    """One sample a second of every msaas_queue_* and msaas_stage_in_flight series (by stage)."""
    started = time.monotonic()
    with open(csv_path, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["seconds", "metric", "stage", "value"])
        while not os.path.exists(stop_file):
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    text = response.read().decode(errors="replace")
                elapsed = round(time.monotonic() - started, 1)
                for line in text.splitlines():
                    match = QUEUE_LINE.match(line.strip())
                    if not match:
                        continue
                    labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2)))
                    if "stage" in labels:
                        writer.writerow([elapsed, match.group(1), labels["stage"], match.group(3)])
                out.flush()
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(1.0)


def _values(summary, name):
    return summary.get("metrics", {}).get(name, {}).get("values", {})


def report(summary_path, queue_csv, out_md, title):
    with open(summary_path) as handle:
        summary = json.load(handle)
    duration_ms = summary.get("state", {}).get("testRunDurationMs", 0)
    lines = [f"# Load test: {title}", ""]
    lines.append(f"Run: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}, "
                 f"{duration_ms / 1000:.1f} s, summary JSON `{os.path.basename(summary_path)}`.")
    lines.append("")
    uploads = _values(summary, "uploads_accepted")
    done = _values(summary, "jobs_done")
    failed = _values(summary, "jobs_failed")
    requests = _values(summary, "http_reqs")
    lines += ["| measure | value |", "|---|---|"]
    lines.append(f"| uploads accepted | {uploads.get('count', 0)} ({uploads.get('rate', 0):.2f}/s) |")
    lines.append(f"| jobs done / failed | {done.get('count', 0)} / {failed.get('count', 0)} |")
    if done.get("count") and duration_ms:
        lines.append(f"| jobs done per second | {done['count'] / (duration_ms / 1000):.2f} |")
    lines.append(f"| HTTP requests | {requests.get('count', 0)} ({requests.get('rate', 0):.1f}/s) |")
    lines.append(f"| HTTP failure rate | {_values(summary, 'http_req_failed').get('rate', 0) * 100:.2f}% |")
    lines.append("")
    lines += ["| latency | p50 | p95 | p99 | max |", "|---|---|---|---|---|"]
    for name, unit in [("http_req_duration{name:upload}", "ms"), ("http_req_duration{name:status}", "ms"),
                       ("http_req_duration{name:list}", "ms"), ("http_req_duration{name:stem}", "ms"),
                       ("job_seconds", "s")]:
        values = _values(summary, name)
        if not values:
            continue
        cells = [f"{values.get(stat, float('nan')):.1f}" for stat in ("med", "p(95)", "p(99)", "max")]
        label = name.replace("http_req_duration", "request").replace("job_seconds", "job, upload to stems")
        lines.append(f"| {label} ({unit}) | " + " | ".join(cells) + " |")
    lines.append("")
    lines += ["| threshold | result |", "|---|---|"]
    all_ok = True
    for name, metric in sorted(summary.get("metrics", {}).items()):
        for expression, verdict in metric.get("thresholds", {}).items():
            all_ok = all_ok and verdict.get("ok", False)
            lines.append(f"| `{name}` {expression} | {'pass' if verdict.get('ok') else 'FAIL'} |")
    lines.append("")
    lines.append(_queue_section(queue_csv))
    with open(out_md, "w") as out:
        out.write("\n".join(lines) + "\n")
    print(out_md)
    return all_ok


STAGE_ORDER = ["decode", "separate", "encode"]


def _series(rows, metric):
    """{seconds: {stage: value}} of one metric."""
    by_time = {}
    for row in rows:
        if row["metric"] == metric:
            by_time.setdefault(float(row["seconds"]), {})[row["stage"]] = float(row["value"])
    return by_time


def _queue_section(queue_csv):
    rows = []
    if os.path.exists(queue_csv):
        with open(queue_csv) as handle:
            rows = list(csv.DictReader(handle))
    waiting = _series(rows, "msaas_queue_waiting")
    pending = _series(rows, "msaas_queue_pending")
    in_flight = _series(rows, "msaas_stage_in_flight")
    if not waiting:
        out = ["## Queue depth", "",
               "No `msaas_queue_waiting` series on /metrics during the run (the service did not "
               "export it), so no queue depth over time."]
        if in_flight:
            out += ["", "| stage | busy % (`msaas_stage_in_flight` > 0) |", "|---|---|"]
            for stage in sorted({s for v in in_flight.values() for s in v},
                                key=lambda s: STAGE_ORDER.index(s) if s in STAGE_ORDER else 9):
                busy = [v.get(stage, 0.0) for v in in_flight.values()]
                out.append(f"| {stage} | {100.0 * sum(1 for b in busy if b > 0) / len(busy):.0f} |")
        return "\n".join(out)
    stages = sorted({stage for values in waiting.values() for stage in values},
                    key=lambda s: STAGE_ORDER.index(s) if s in STAGE_ORDER else len(STAGE_ORDER))
    times = sorted(waiting)
    out = ["## Queue depth per stage (/metrics, sampled every second)", "",
           "waiting = `msaas_queue_waiting` (not yet delivered), pending = `msaas_queue_pending` "
           "(delivered, not acked), busy = `msaas_stage_in_flight` (stage runs in progress); "
           "busy % = share of samples with at least one run in progress.", ""]
    out += ["| stage | max waiting | mean waiting | max pending | busy % |", "|---|---|---|---|---|"]
    for stage in stages:
        values = [waiting[t].get(stage, 0.0) for t in times]
        pend = [values_at.get(stage, 0.0) for values_at in pending.values()] or [0.0]
        busy = [values_at.get(stage, 0.0) for values_at in in_flight.values()]
        busy_share = f"{100.0 * sum(1 for v in busy if v > 0) / len(busy):.0f}" if busy else "-"
        out.append(f"| {stage} | {max(values):.0f} | {sum(values) / len(values):.2f} | "
                   f"{max(pend):.0f} | {busy_share} |")
    out += ["", "Waiting over time:", "", "| t (s) | " + " | ".join(stages) + " |",
            "|---" * (len(stages) + 1) + "|"]
    step = max(1, len(times) // 20)
    for t in times[::step]:
        out.append(f"| {t:.0f} | " + " | ".join(f"{waiting[t].get(s, 0.0):.0f}" for s in stages) + " |")
    return "\n".join(out)


def main(argv):
    if len(argv) < 2:
        sys.exit(__doc__)
    command, args = argv[1], argv[2:]
    if command == "free-port":
        free_port()
    elif command == "clips":
        clips(*args)
    elif command == "wait-http":
        wait_http(*args)
    elif command == "s3-bucket":
        s3_bucket(*args)
    elif command == "poll-metrics":
        poll_metrics(*args)
    elif command == "report":
        sys.exit(0 if report(*args) else 3)
    else:
        sys.exit(f"unknown command {command}\n{__doc__}")


if __name__ == "__main__":
    main(sys.argv)
