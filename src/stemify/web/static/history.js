// The jobs of the current key, newest first: status, open, delete.

import { deleteJob, listJobs } from "./api.js";
import { capitalised, jobName, sentence, when } from "./format.js";

const $ = (id) => document.getElementById(id);

export class History {
  constructor({ onOpen, onDeleted }) {
    this.list = $("history");
    this.empty = $("history-empty");
    this.more = $("history-more");
    this.error = $("history-error");
    this.template = $("history-template");
    this.cursor = null;
    this.onOpen = onOpen;
    this.onDeleted = onDeleted;
    $("history-refresh").addEventListener("click", () => this.refresh());
    this.more.addEventListener("click", () => this.load(this.cursor));
  }

  clear() {
    this.list.replaceChildren();
    this.empty.hidden = true;
    this.more.hidden = true;
    this.error.textContent = "";
  }

  refresh() {
    return this.load(null);
  }

  async load(cursor) {
    this.error.textContent = "";
    let page;
    try {
      page = await listJobs(cursor);
    } catch (error) {
      this.error.textContent = `Your jobs could not be listed. ${sentence(error.message)}`;
      return;
    }
    if (!cursor) this.list.replaceChildren();
    for (const job of page.jobs) this.list.append(this.row(job));
    this.cursor = page.next_cursor;
    this.more.hidden = !this.cursor;
    this.empty.hidden = this.list.children.length > 0;
  }

  row(job) {
    const item = this.template.content.firstElementChild.cloneNode(true);
    const name = jobName(job);
    item.dataset.jobId = job.id;
    item.dataset.status = job.status;
    item.querySelector(".history-name").textContent = name;
    const status = item.querySelector(".history-status");
    status.textContent = capitalised(job.status);
    status.classList.add(`status-${job.status}`);
    item.querySelector(".history-time").textContent = when(job.created_at);
    const open = item.querySelector(".open");
    const remove = item.querySelector(".delete");
    open.setAttribute("aria-label", `Open ${name}`);
    remove.setAttribute("aria-label", `Delete ${name}`);
    open.addEventListener("click", () => this.onOpen(job.id));
    remove.addEventListener("click", async () => {
      remove.disabled = true;
      try {
        await deleteJob(job.id);
      } catch (error) {
        if (error.status !== 404) {
          this.error.textContent = `${name} could not be deleted. ${sentence(error.message)}`;
          remove.disabled = false;
          return;
        }
      }
      // Keyboard focus goes to the next job (or the refresh button), not to the page's top.
      const next = item.nextElementSibling || item.previousElementSibling;
      item.remove();
      (next ? next.querySelector(".open") : $("history-refresh")).focus();
      this.empty.hidden = this.list.children.length > 0;
      this.onDeleted(job.id);
    });
    return item;
  }
}
