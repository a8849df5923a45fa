// The result of a finished job: the mixer (a row per stem with its waveform, volume, mute,
// solo and download), the zip link and the quality report.

import { fetchBytes } from "./api.js";
import { bytes, capitalised, duration } from "./format.js";
import { Mixer } from "./mixer.js";
import { nativeRate, renderMix } from "./mixdown.js";
import { qualityLines } from "./quality.js";
import { keepDrawn } from "./waveform.js";

// What decoding takes in the browser: float32 stereo at the usual 48 kHz of an AudioContext.
const DECODED_BYTES_PER_S = 48000 * 2 * 4;

const $ = (id) => document.getElementById(id);

// Linear peak of the loudest stem, from the quality report (1, full scale, if unknown).
function loudestPeak(quality) {
  const peaks = Object.values((quality && quality.stems) || {})
    .map((q) => q.peak_dbfs)
    .filter((dbfs) => dbfs != null);
  return peaks.length ? Math.min(1, 10 ** (Math.max(...peaks) / 20)) : 1;
}

export class ResultView {
  constructor() {
    this.section = $("result");
    this.list = $("mixer");
    this.status = $("mixer-status");
    this.playButton = $("play-button");
    this.seek = $("seek");
    this.time = $("play-time");
    this.zip = $("zip-link");
    this.quality = $("quality");
    this.template = $("stem-template");
    this.mixButton = $("mix-button");
    this.mixStatus = $("mix-status");
    this.rows = new Map();
    this.cleanups = [];
    this.mixer = null;
    this.loading = null;
    this.mixName = "mix";
    this.mixButton.addEventListener("click", () => this.downloadMix());
    this.playButton.addEventListener("click", () => this.toggle());
    this.seek.addEventListener("input", () => {
      if (this.mixer) this.mixer.seek(Number(this.seek.value));
      this.tick();
    });
  }

  clear() {
    for (const cleanup of this.cleanups) cleanup();
    this.cleanups = [];
    if (this.mixer) this.mixer.close();
    this.mixer = null;
    this.loading = null;
    this.mixButton.disabled = true;
    this.mixStatus.textContent = "";
    this.rows.clear();
    this.list.replaceChildren();
    delete this.list.dataset.ready;
    this.quality.replaceChildren();
    this.status.textContent = "";
    this.playButton.disabled = true;
    this.playButton.textContent = "Play";
    this.seek.disabled = true;
    this.seek.value = "0";
    this.time.textContent = "0:00 / 0:00";
    this.section.hidden = true;
  }

  // playerMaxMb: the server's budget for decoded stems; past it, downloads only.
  show(job, playerMaxMb) {
    this.clear();
    for (const stem of job.stems) this.list.append(this.row(stem));
    this.zip.href = job.zip_url;
    for (const line of qualityLines(job.quality)) {
      const item = document.createElement("li");
      item.textContent = line;
      this.quality.append(item);
    }
    this.section.hidden = false;
    const length = (job.input && job.input.duration_s) || 0;
    const needMb = (length * job.stems.length * DECODED_BYTES_PER_S) / 1048576;
    if (needMb > playerMaxMb) {
      this.status.textContent =
        `Too long to play here: the stems would take ${Math.ceil(needMb)} MB of memory in the ` +
        `browser, more than the ${playerMaxMb} MB this server allows. Download them instead.`;
      return;
    }
    this.load(job);
  }

  row(stem) {
    const item = this.template.content.firstElementChild.cloneNode(true);
    const label = capitalised(stem.name);
    item.dataset.stem = stem.name;
    item.querySelector(".stem-name").textContent = label;
    const mute = item.querySelector(".mute");
    const solo = item.querySelector(".solo");
    const volume = item.querySelector("input[type=range]");
    mute.setAttribute("aria-label", `Mute ${label}`);
    solo.setAttribute("aria-label", `Solo ${label}`);
    item.querySelector(".volume-label").textContent = `${label} volume`;
    const download = item.querySelector(".download");
    download.href = stem.url;
    download.textContent = `Download (${bytes(stem.size)})`;
    download.setAttribute("aria-label", `Download ${label} (${bytes(stem.size)})`);
    const canvas = item.querySelector("canvas");
    canvas.setAttribute("aria-label", `Waveform of ${label}`);
    for (const control of [mute, solo, volume]) control.disabled = true;
    const toggle = (button, key) => {
      const on = button.getAttribute("aria-pressed") !== "true";
      button.setAttribute("aria-pressed", String(on));
      this.mixer.set(stem.name, { [key]: on });
      this.showGains();
    };
    mute.addEventListener("click", () => toggle(mute, "muted"));
    solo.addEventListener("click", () => toggle(solo, "solo"));
    volume.addEventListener("input", () => {
      this.mixer.set(stem.name, { volume: Number(volume.value) });
      this.showGains();
    });
    canvas.addEventListener("click", (event) => {
      if (!this.mixer || !this.mixer.duration) return;
      const box = canvas.getBoundingClientRect();
      this.mixer.seek(((event.clientX - box.left) / box.width) * this.mixer.duration);
      this.tick();
    });
    this.rows.set(stem.name, item);
    return item;
  }

  async load(job) {
    const loading = {};
    this.loading = loading;
    this.mixName = `${(job.input && job.input.name ? job.input.name : "song").replace(/\.[^.]*$/, "")}-mix.wav`;
    let loaded = 0;
    this.status.textContent = `Loading the stems for playing: 0 of ${job.stems.length}…`;
    let mixer = null;
    try {
      const files = await Promise.all(
        job.stems.map(async (stem) => {
          const bytes = await fetchBytes(stem.url);
          loaded += 1;
          if (this.loading === loading) {
            this.status.textContent = `Loading the stems for playing: ${loaded} of ${job.stems.length}…`;
          }
          return bytes;
        }),
      );
      if (this.loading !== loading) return; // another job was opened meanwhile
      mixer = new Mixer(nativeRate(files[0]));
      this.mixer = mixer;
      mixer.onEnded = () => {
        this.playButton.textContent = "Play";
        this.tick();
      };
      const buffers = await Promise.all(files.map((bytes) => mixer.decode(bytes)));
      if (this.mixer !== mixer) return;
      const fullScale = loudestPeak(job.quality);
      job.stems.forEach((stem, i) => {
        mixer.add(stem.name, buffers[i]);
        const item = this.rows.get(stem.name);
        for (const control of item.querySelectorAll("button, input")) control.disabled = false;
        this.cleanups.push(keepDrawn(item.querySelector("canvas"), buffers[i], fullScale));
      });
      this.showGains();
      this.seek.max = String(mixer.duration);
      this.seek.disabled = false;
      this.playButton.disabled = false;
      this.tick();
      this.status.textContent = "Ready to play.";
      this.mixButton.disabled = false;
      this.list.dataset.ready = "true";
    } catch (error) {
      if (this.loading !== loading || (mixer && this.mixer !== mixer)) return;
      this.status.textContent =
        `The stems could not be loaded for playing (${error.message}); the download links still work.`;
    }
  }

  // The stems at the gains set now, as one WAV, rendered here (OfflineAudioContext).
  async downloadMix() {
    const mixer = this.mixer;
    if (!mixer) return;
    this.mixButton.disabled = true;
    this.mixStatus.textContent = "Rendering the mix…";
    try {
      const url = URL.createObjectURL(await renderMix(mixer));
      const link = document.createElement("a");
      link.href = url;
      link.download = this.mixName;
      link.click();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
      this.mixStatus.textContent = `The mix is downloading as ${this.mixName}.`;
    } catch (error) {
      this.mixStatus.textContent = `The mix could not be rendered (${error.message}).`;
    } finally {
      if (this.mixer === mixer) this.mixButton.disabled = false;
    }
  }

  // Each row shows the gain its node has now (data-gain), so what is heard can be checked.
  showGains() {
    for (const [name, item] of this.rows) {
      const gain = this.mixer.gainOf(name);
      item.dataset.gain = String(gain);
      item.classList.toggle("silent", gain === 0);
    }
  }

  toggle() {
    const mixer = this.mixer;
    if (!mixer) return;
    if (mixer.playing) {
      mixer.pause();
      this.playButton.textContent = "Play";
    } else {
      mixer.play();
      this.playButton.textContent = "Pause";
      const frame = () => {
        this.tick();
        if (this.mixer === mixer && mixer.playing) requestAnimationFrame(frame);
      };
      requestAnimationFrame(frame);
    }
  }

  tick() {
    const mixer = this.mixer;
    if (!mixer) return;
    const at = mixer.position();
    this.time.textContent = `${duration(at)} / ${duration(mixer.duration)}`;
    if (document.activeElement !== this.seek) this.seek.value = String(at);
    const percent = mixer.duration ? (at / mixer.duration) * 100 : 0;
    for (const item of this.rows.values()) item.querySelector(".playhead").style.left = `${percent}%`;
  }
}
