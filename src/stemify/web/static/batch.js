// Several files dropped at once: one job each, listed with their upload and progress.

import { followJob, isFinished } from "./events.js";
import { capitalised, sentence } from "./format.js";

const $ = (id) => document.getElementById(id);

export class Batch {
  constructor({ onOpen }) {
    this.section = $("batch");
    this.list = $("batch-list");
    this.onOpen = onOpen;
    this.follows = [];
  }

  clear() {
    for (const follow of this.follows) follow.abort();
    this.follows = [];
    this.list.replaceChildren();
    this.section.hidden = true;
  }

  // A row for one file; returns its updaters.
  add(name) {
    this.section.hidden = false;
    const item = document.createElement("li");
    item.className = "batch-item";
    const label = document.createElement("span");
    label.className = "batch-name";
    label.textContent = name;
    const progress = document.createElement("progress");
    progress.max = 100;
    progress.value = 0;
    progress.setAttribute("aria-label", `Progress of ${name}`);
    const status = document.createElement("span");
    status.className = "batch-status";
    status.textContent = "Waiting to upload";
    const open = document.createElement("button");
    open.type = "button";
    open.textContent = "Open";
    open.hidden = true;
    open.setAttribute("aria-label", `Open ${name}`);
    item.append(label, progress, status, open);
    this.list.append(item);
    const show = (job) => {
      item.dataset.status = job.status;
      progress.value = job.progress;
      status.textContent = `${capitalised(job.status)} — ${Math.floor(job.progress)} %`;
    };
    return {
      uploading: (fraction) => {
        progress.value = fraction * 100;
        status.textContent = `Uploading — ${Math.floor(fraction * 100)} %`;
      },
      failed: (error) => {
        item.dataset.status = "refused";
        status.textContent = sentence(error.message);
      },
      follow: (job) => {
        item.dataset.jobId = job.id;
        open.hidden = false;
        open.addEventListener("click", () => this.onOpen(job.id));
        show(job);
        if (isFinished(job)) return;
        const follow = new AbortController();
        this.follows.push(follow);
        followJob(job.id, show, follow.signal).catch((error) => {
          status.textContent = sentence(error.message);
        });
      },
    };
  }
}
