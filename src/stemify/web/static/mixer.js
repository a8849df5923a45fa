// Plays stems in sync: one AudioContext, one GainNode per stem, every source started at the
// same context time. Volume, mute and solo only change gains, so the stems never drift apart.

export class Mixer {
  // sampleRate: the stems' own (see mixdown.nativeRate), so decoding does not resample them.
  constructor(sampleRate = null) {
    this.context = new AudioContext(sampleRate ? { sampleRate } : {});
    this.master = this.context.createGain();
    this.master.connect(this.context.destination);
    this.tracks = new Map(); // name -> {buffer, gain, volume, muted, solo}
    this.sources = [];
    this.offset = 0; // seconds into the song while paused
    this.startedAt = null; // context time at which offset 0 played, while playing
    this.duration = 0;
    this.onEnded = () => {};
  }

  add(name, buffer) {
    const gain = this.context.createGain();
    gain.connect(this.master);
    this.tracks.set(name, { buffer, gain, volume: 1, muted: false, solo: false });
    this.duration = Math.max(this.duration, buffer.duration);
    this.applyGains();
  }

  decode(bytes) {
    return this.context.decodeAudioData(bytes);
  }

  get playing() {
    return this.startedAt !== null;
  }

  position() {
    if (!this.playing) return this.offset;
    return Math.min(this.duration, this.context.currentTime - this.startedAt);
  }

  // Synchronous, so a second click cannot start a second set of sources. Sources scheduled
  // while the context is still resuming start when it runs: its clock stands still until then.
  play() {
    if (this.playing || !this.tracks.size) return;
    this.context.resume().catch(() => {});
    if (this.offset >= this.duration) this.offset = 0;
    // A little ahead, so every source is scheduled before the first one sounds.
    const when = this.context.currentTime + 0.05;
    this.sources = [];
    for (const track of this.tracks.values()) {
      const source = this.context.createBufferSource();
      source.buffer = track.buffer;
      source.connect(track.gain);
      source.start(when, this.offset);
      this.sources.push(source);
    }
    this.startedAt = when - this.offset;
    const first = this.sources[0];
    first.addEventListener("ended", () => {
      if (this.sources[0] !== first) return; // stopped by pause or seek, not the end
      this.stopSources();
      this.offset = 0;
      this.onEnded();
    });
  }

  pause() {
    if (!this.playing) return;
    this.offset = this.position();
    this.stopSources();
  }

  seek(seconds) {
    const wasPlaying = this.playing;
    this.pause();
    this.offset = Math.max(0, Math.min(this.duration, seconds));
    if (wasPlaying) this.play();
  }

  stopSources() {
    const sources = this.sources;
    this.sources = [];
    this.startedAt = null;
    for (const source of sources) source.stop();
  }

  set(name, change) {
    Object.assign(this.tracks.get(name), change);
    this.applyGains();
  }

  // The gain a stem has now, read from its node.
  gainOf(name) {
    return this.tracks.get(name).gain.gain.value;
  }

  applyGains() {
    const soloing = [...this.tracks.values()].some((t) => t.solo);
    for (const track of this.tracks.values()) {
      const silent = track.muted || (soloing && !track.solo);
      track.gain.gain.value = silent ? 0 : track.volume;
    }
  }

  close() {
    this.stopSources();
    this.context.close();
  }
}
