// The stem player: one AudioBufferSourceNode per stem, all started at the same context time
// and offset (sample-exact sync), each through its own gain (volume, solo, mute). The mix
// export renders the same graph in an OfflineAudioContext, so what is exported is what the
// gains say is heard.

/** The gain a track gets: its volume if it is heard (soloed, or nothing soloed; not muted). */
export function audibleGain(track, tracks) {
  const anySolo = tracks.some((t) => t.solo);
  const heard = (anySolo ? track.solo : true) && !track.mute;
  return heard ? track.volume : 0;
}

export class Mixer {
  constructor(context) {
    this.context = context;
    this.tracks = [];
    this.sources = [];
    this.playing = false;
    this.offset = 0;
    this.startedAt = 0;
    this.master = context.createGain();
    this.analyser = context.createAnalyser();
    this.analyser.fftSize = 2048;
    this.master.connect(this.analyser);
    this.analyser.connect(context.destination);
    this.onended = null;
  }

  /** Adds a decoded stem; `bytes` (the file as the API sent it) stays for downloads. */
  add(name, buffer, bytes, filename, type) {
    const gain = this.context.createGain();
    gain.connect(this.master);
    const track = { name, buffer, bytes, filename, type, gain, volume: 1, solo: false, mute: false };
    this.tracks.push(track);
    this.applyGains();
    return track;
  }

  get duration() {
    return this.tracks.reduce((longest, t) => Math.max(longest, t.buffer.duration), 0);
  }

  /** Seconds into the song. */
  position() {
    if (!this.playing) return this.offset;
    return Math.min(this.duration, this.context.currentTime - this.startedAt);
  }

  async play() {
    if (this.playing || this.tracks.length === 0) return;
    if (this.context.state === "suspended") await this.context.resume();
    if (this.offset >= this.duration) this.offset = 0;
    const when = this.context.currentTime + 0.05;
    this.sources = this.tracks.map((track) => {
      const source = this.context.createBufferSource();
      source.buffer = track.buffer;
      source.connect(track.gain);
      return source;
    });
    for (const source of this.sources) source.start(when, this.offset);
    this.startedAt = when - this.offset;
    this.playing = true;
    const first = this.sources[0];
    first.onended = () => {
      if (this.playing && this.sources[0] === first) {
        this.stopSources();
        this.playing = false;
        this.offset = 0;
        if (this.onended) this.onended();
      }
    };
  }

  pause() {
    if (!this.playing) return;
    this.offset = this.position();
    this.stopSources();
    this.playing = false;
  }

  seek(seconds) {
    const wasPlaying = this.playing;
    this.pause();
    this.offset = Math.max(0, Math.min(seconds, this.duration));
    if (wasPlaying) this.play();
  }

  stopSources() {
    for (const source of this.sources) {
      source.onended = null;
      try {
        source.stop();
      } catch {
        // Not started yet: nothing to stop.
      }
      source.disconnect();
    }
    this.sources = [];
  }

  applyGains() {
    const now = this.context.currentTime;
    for (const track of this.tracks) {
      track.gain.gain.setValueAtTime(audibleGain(track, this.tracks), now);
    }
  }

  /** Loudness of what is playing now: RMS of the analyser's last window. */
  level() {
    const samples = new Float32Array(this.analyser.fftSize);
    this.analyser.getFloatTimeDomainData(samples);
    let sum = 0;
    for (const x of samples) sum += x * x;
    return Math.sqrt(sum / samples.length);
  }

  /** The current mix (the stems at their gains), rendered offline: an AudioBuffer. */
  async renderMix() {
    const rate = this.tracks[0].buffer.sampleRate;
    const length = this.tracks.reduce((n, t) => Math.max(n, t.buffer.length), 0);
    const channels = this.tracks.reduce((n, t) => Math.max(n, t.buffer.numberOfChannels), 1);
    const offline = new OfflineAudioContext(channels, length, rate);
    for (const track of this.tracks) {
      const source = offline.createBufferSource();
      source.buffer = track.buffer;
      const gain = offline.createGain();
      gain.gain.value = audibleGain(track, this.tracks);
      source.connect(gain);
      gain.connect(offline.destination);
      source.start(0);
    }
    return offline.startRendering();
  }

  close() {
    this.pause();
    this.context.close();
  }
}

/** Peaks of `buffer` drawn into `canvas`, one column per pixel. */
export function drawWaveform(canvas, buffer, color) {
  const ratio = window.devicePixelRatio || 1;
  const width = Math.max(1, Math.floor(canvas.clientWidth * ratio));
  const height = Math.max(1, Math.floor(canvas.clientHeight * ratio));
  canvas.width = width;
  canvas.height = height;
  const g = canvas.getContext("2d");
  g.clearRect(0, 0, width, height);
  g.fillStyle = color;
  const channels = [];
  for (let c = 0; c < buffer.numberOfChannels; c++) channels.push(buffer.getChannelData(c));
  const perColumn = Math.max(1, Math.floor(buffer.length / width));
  const middle = height / 2;
  for (let x = 0; x < width; x++) {
    let low = 0;
    let high = 0;
    const start = x * perColumn;
    const end = Math.min(buffer.length, start + perColumn);
    for (const data of channels) {
      for (let i = start; i < end; i++) {
        const v = data[i];
        if (v < low) low = v;
        if (v > high) high = v;
      }
    }
    const top = middle - Math.min(1, high) * middle;
    const bottom = middle - Math.max(-1, low) * middle;
    g.fillRect(x, top, 1, Math.max(1, bottom - top));
  }
}

/** 16-bit PCM WAV of an AudioBuffer (interleaved, clamped). */
export function encodeWav(buffer) {
  const channels = buffer.numberOfChannels;
  const frames = buffer.length;
  const bytes = new ArrayBuffer(44 + frames * channels * 2);
  const view = new DataView(bytes);
  const text = (at, s) => {
    for (let i = 0; i < s.length; i++) view.setUint8(at + i, s.charCodeAt(i));
  };
  text(0, "RIFF");
  view.setUint32(4, 36 + frames * channels * 2, true);
  text(8, "WAVE");
  text(12, "fmt ");
  view.setUint32(16, 16, true);
  view.setUint16(20, 1, true);
  view.setUint16(22, channels, true);
  view.setUint32(24, buffer.sampleRate, true);
  view.setUint32(28, buffer.sampleRate * channels * 2, true);
  view.setUint16(32, channels * 2, true);
  view.setUint16(34, 16, true);
  text(36, "data");
  view.setUint32(40, frames * channels * 2, true);
  const data = [];
  for (let c = 0; c < channels; c++) data.push(buffer.getChannelData(c));
  let at = 44;
  for (let i = 0; i < frames; i++) {
    for (let c = 0; c < channels; c++) {
      const x = Math.max(-1, Math.min(1, data[c][i]));
      view.setInt16(at, x < 0 ? x * 0x8000 : x * 0x7fff, true);
      at += 2;
    }
  }
  return bytes;
}

/** `m:ss` of a number of seconds. */
export function clock(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}
