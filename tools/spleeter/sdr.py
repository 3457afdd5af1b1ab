#!/usr/bin/env python3
"""SDR of the Spleeter model on a song with known stems (dev/benchmark only; needs numpy,
soundfile and museval — the reference venv — plus ffmpeg and espeak-ng).

  make-song: accompaniment = guitar.ogg + song.ogg of a Fretsonfire song (Debian package
             fretsonfire-songs-muldjord, CC BY-SA 3.0), vocals = espeak-ng reading a text,
             both 44.1 kHz stereo; writes mix.wav, vocals.wav, accompaniment.wav (f32).
  score:     museval SDR (median over 1 s frames, BSSEval v4) of estimated stems against the
             references, next to the trivial estimate mix/2 for every stem.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import soundfile

RATE = 44100
TEXT = (
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was "
    "the age of foolishness, it was the epoch of belief, it was the epoch of incredulity, it "
    "was the season of Light, it was the season of Darkness, it was the spring of hope, it was "
    "the winter of despair, we had everything before us, we had nothing before us, we were all "
    "going direct to Heaven, we were all going direct the other way. "
)


def decode(path, start, seconds):
    cmd = ["ffmpeg", "-v", "error", "-ss", str(start), "-t", str(seconds), "-i", path,
           "-ac", "2", "-ar", str(RATE), "-f", "f32le", "-"]
    raw = subprocess.run(cmd, check=True, capture_output=True).stdout
    return np.frombuffer(raw, dtype="<f4").reshape(-1, 2)


def speech(seconds):
    with tempfile.TemporaryDirectory() as tmp:
        wav = os.path.join(tmp, "voice.wav")
        subprocess.run(["espeak-ng", "-v", "en-us+f3", "-s", "150", "-p", "60", "-w", wav, TEXT * 4],
                       check=True, capture_output=True)
        cmd = ["ffmpeg", "-v", "error", "-i", wav, "-ac", "2", "-ar", str(RATE), "-f", "f32le", "-"]
        raw = subprocess.run(cmd, check=True, capture_output=True).stdout
    voice = np.frombuffer(raw, dtype="<f4").reshape(-1, 2)
    n = int(seconds * RATE)
    if len(voice) < n:
        voice = np.concatenate([voice, np.zeros((n - len(voice), 2), np.float32)])
    return voice[:n]


def rms(x):
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def make_song(args):
    acc = decode(os.path.join(args.song_dir, "guitar.ogg"), args.start, args.seconds)
    acc = acc + decode(os.path.join(args.song_dir, "song.ogg"), args.start, args.seconds)
    n = min(len(acc), int(args.seconds * RATE))
    acc = acc[:n]
    voice = speech(args.seconds)[:n]
    voice = voice * (rms(acc) / max(rms(voice), 1e-9)) * 10 ** (args.vocal_db / 20)  # vocals vs backing level
    mix = acc + voice
    peak = np.abs(mix).max()
    if peak > 0.99:
        scale = 0.99 / peak
        mix, acc, voice = mix * scale, acc * scale, voice * scale
    os.makedirs(args.out, exist_ok=True)
    for name, data in (("mix", mix), ("vocals", voice), ("accompaniment", acc)):
        soundfile.write(os.path.join(args.out, f"{name}.wav"), data.astype(np.float32), RATE, subtype="FLOAT")
    print(f"wrote {args.out}: {n / RATE:.1f} s, vocals {args.vocal_db:+.1f} dB vs accompaniment")


def score(args):
    import museval

    refs = {s: soundfile.read(os.path.join(args.refs, f"{s}.wav"), dtype="float32")[0] for s in ("vocals", "accompaniment")}
    mix = soundfile.read(os.path.join(args.refs, "mix.wav"), dtype="float32")[0]
    n = min(len(mix), *(len(soundfile.read(os.path.join(d, "vocals.wav"))[0]) for d in args.estimates))
    sources = ["vocals", "accompaniment"]
    references = np.stack([refs[s][:n] for s in sources])
    result = {}

    def sdr_of(estimates):
        sdr, _, _, _ = museval.evaluate(references, estimates, win=RATE, hop=RATE)
        return {s: float(np.nanmedian(sdr[i])) for i, s in enumerate(sources)}

    result["mix/2"] = sdr_of(np.stack([mix[:n] / 2, mix[:n] / 2]))
    for label, d in zip(args.labels, args.estimates):
        est = np.stack([soundfile.read(os.path.join(d, f"{s}.wav"), dtype="float32")[0][:n] for s in sources])
        result[label] = sdr_of(est)
    print(json.dumps(result))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("make-song")
    p.add_argument("--song-dir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--start", type=float, default=30.0)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--vocal-db", type=float, default=0.0)
    p = sub.add_parser("score")
    p.add_argument("--refs", required=True)
    p.add_argument("--estimates", nargs="+", required=True)
    p.add_argument("--labels", nargs="+", required=True)
    args = parser.parse_args()
    return make_song(args) if args.command == "make-song" else score(args)


if __name__ == "__main__":
    sys.exit(main())
