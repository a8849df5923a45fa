// "Download this mix": the stems at the gains the mixer has now (volume, mute, solo), rendered
// in the browser by an OfflineAudioContext and written as a 16-bit WAV. No server work: the
// page already holds the decoded stems, and the same gains are what the person hears.

// The sample rate written in a WAV (fmt chunk) or FLAC (STREAMINFO) header, so the player
// decodes at the stems' own rate and the mix is their exact sum, not a resampled one.
export function nativeRate(bytes) {
  const view = new DataView(bytes);
  const tag = (at) => String.fromCharCode(...new Uint8Array(bytes, at, 4));
  if (bytes.byteLength >= 28 && tag(0) === "RIFF" && tag(8) === "WAVE") {
    for (let at = 12; at + 16 <= bytes.byteLength; at += 8 + view.getUint32(at + 4, true)) {
      if (tag(at) === "fmt ") return view.getUint32(at + 12, true);
    }
  }
  if (bytes.byteLength >= 22 && tag(0) === "fLaC") {
    // STREAMINFO, the first metadata block: the rate is 20 bits 10 bytes into its body.
    return (view.getUint32(18) >>> 12) || null;
  }
  return null; // mp3: the browser's own rate
}

export async function renderMix(mixer) {
  const tracks = [...mixer.tracks.values()];
  const length = Math.max(...tracks.map((t) => t.buffer.length));
  const channels = Math.max(...tracks.map((t) => t.buffer.numberOfChannels));
  const offline = new OfflineAudioContext(channels, length, mixer.context.sampleRate);
  for (const track of tracks) {
    const level = track.gain.gain.value;
    if (level === 0) continue;
    const gain = offline.createGain();
    gain.gain.value = level;
    gain.connect(offline.destination);
    const source = offline.createBufferSource();
    source.buffer = track.buffer;
    source.connect(gain);
    source.start(0);
  }
  return wav(await offline.startRendering());
}

// 16-bit PCM, interleaved; samples past full scale are clipped (as a player would).
export function wav(buffer) {
  const channels = buffer.numberOfChannels;
  const frames = buffer.length;
  const data = frames * channels * 2;
  const out = new DataView(new ArrayBuffer(44 + data));
  const text = (at, s) => [...s].forEach((c, i) => out.setUint8(at + i, c.charCodeAt(0)));
  text(0, "RIFF");
  out.setUint32(4, 36 + data, true);
  text(8, "WAVE");
  text(12, "fmt ");
  out.setUint32(16, 16, true);
  out.setUint16(20, 1, true); // PCM
  out.setUint16(22, channels, true);
  out.setUint32(24, buffer.sampleRate, true);
  out.setUint32(28, buffer.sampleRate * channels * 2, true);
  out.setUint16(32, channels * 2, true);
  out.setUint16(34, 16, true);
  text(36, "data");
  out.setUint32(40, data, true);
  const planes = Array.from({ length: channels }, (_, c) => buffer.getChannelData(c));
  let at = 44;
  for (let i = 0; i < frames; i += 1) {
    for (const plane of planes) {
      out.setInt16(at, Math.max(-32768, Math.min(32767, Math.round(plane[i] * 32768))), true);
      at += 2;
    }
  }
  return new Blob([out], { type: "audio/wav" });
}
