// The result of a finished job: the mixer (a row per stem with its waveform, volume, mute,
// solo and download), the zip link and the quality report.

import { fetchBytes } from "./api.js";
import { bytes, capitalised, duration } from "./format.js";
import { Mixer } from "./mixer.js";
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
    this.rows = new Map();
    this.cleanups = [];
    this.mixer = null;
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
    const mixer = new Mixer();
    this.mixer = mixer;
    mixer.onEnded = () => {
      this.playButton.textContent = "Play";
      this.tick();
    };
    let loaded = 0;
    this.status.textContent = `Loading the stems for playing: 0 of ${job.stems.length}…`;
    try {
      const buffers = await Promise.all(
        job.stems.map(async (stem) => {
          const buffer = await mixer.decode(await fetchBytes(stem.url));
          loaded += 1;
          if (this.mixer === mixer) {
            this.status.textContent = `Loading the stems for playing: ${loaded} of ${job.stems.length}…`;
          }
          return buffer;
        }),
      );
      if (this.mixer !== mixer) return; // another job was opened meanwhile
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
      this.list.dataset.ready = "true";
    } catch (error) {
      if (this.mixer !== mixer) return;
      this.status.textContent =
        `The stems could not be loaded for playing (${error.message}); the download links still work.`;
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
