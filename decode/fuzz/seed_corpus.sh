#!/usr/bin/env bash
# Seeds the fuzz corpus with tiny valid files of every format decode supports, so the fuzzer
# starts inside each demuxer and decoder instead of having to discover their magic bytes.
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p corpus/decode
src="aevalsrc=0.4*sin(2*PI*440*t)|0.3*sin(2*PI*660*t):s=44100:d=0.05"
gen() { ffmpeg -y -v error -f lavfi -i "$src" "$@"; }
gen -c:a pcm_s16le corpus/decode/s16.wav
gen -c:a pcm_f32le corpus/decode/f32.wav
gen -c:a pcm_s16be corpus/decode/s16.aiff
gen -c:a flac corpus/decode/a.flac
gen -c:a libmp3lame -b:a 64k corpus/decode/a.mp3
gen -c:a libvorbis corpus/decode/a.ogg
gen -c:a aac -b:a 64k corpus/decode/aac.m4a
gen -c:a alac corpus/decode/alac.m4a
ls -l corpus/decode
