// One job on screen: its name, progress (stage, percent, ETA), cancel, error, and its result.

import { cancelJob } from "./api.js";
import { followJob, isFinished } from "./events.js";
import { capitalised, jobName, remaining, sentence } from "./format.js";
import { ResultView } from "./result.js";

const STAGES = {
  downloading: "Downloading the link",
  decoding: "Reading the audio",
  separating: "Separating",
  encoding: "Writing the stems",
  storing: "Saving the stems",
};

const $ = (id) => document.getElementById(id);

function statusText(job) {
  const percent = `${Math.floor(job.progress)} %`;
  switch (job.status) {
    case "queued":
      if (job.stage === "waiting_for_model") {
        return `Waiting for the model ${job.model} to finish downloading — ${percent}`;
      }
      return `Waiting for a free worker — ${percent}`;
    case "running": {
      const stage = STAGES[job.stage] || "Working";
      const eta = remaining(job.eta_s);
      return [stage, percent, eta].filter(Boolean).join(" — ");
    }
    case "succeeded":
      return job.cache_hit ? "Done — 100 % (the same song was separated before)" : "Done — 100 %";
    case "canceled":
      return "Canceled.";
    case "expired":
      return "Expired: the stems of this job were deleted.";
    default:
      return "Failed.";
  }
}

export class JobView {
  constructor({ onFinished, onError, playerMaxMb }) {
    this.section = $("job-section");
    this.name = $("job-name");
    this.progress = $("job-progress");
    this.status = $("job-status");
    this.announce = $("job-announce");
    this.announced = "";
    this.cancel = $("cancel-button");
    this.error = $("job-error");
    this.result = new ResultView();
    this.follow = null;
    this.jobId = null;
    this.onFinished = onFinished;
    this.onError = onError;
    this.playerMaxMb = playerMaxMb;
    this.cancel.addEventListener("click", () => this.requestCancel());
  }

  reset(name) {
    if (this.follow) this.follow.abort();
    this.follow = null;
    this.upload = null;
    this.jobId = null;
    this.result.clear();
    this.section.hidden = false;
    this.name.textContent = name;
    this.announced = "";
    this.announce.textContent = "";
    this.error.textContent = "";
    this.cancel.hidden = true;
    this.cancel.disabled = false;
  }

  // upload: the AbortController of the upload, which the cancel button then stops.
  startUpload(name, upload) {
    this.reset(name);
    this.upload = upload;
    this.cancel.hidden = false;
    this.showUpload(0);
  }

  showUpload(fraction) {
    this.progress.value = fraction * 100;
    this.status.textContent = `Uploading — ${Math.floor(fraction * 100)} %`;
  }

  hide() {
    this.reset("");
    this.section.hidden = true;
    history.replaceState(null, "", location.pathname);
  }

  async open(job) {
    this.reset(jobName(job));
    this.jobId = job.id;
    // In the address, so a reload or a bookmark opens the job again.
    history.replaceState(null, "", `#job=${encodeURIComponent(job.id)}`);
    this.render(job);
    this.section.scrollIntoView({ block: "nearest" });
    if (isFinished(job)) {
      this.finish(job);
      return;
    }
    const follow = new AbortController();
    this.follow = follow;
    try {
      const last = await followJob(job.id, (update) => this.render(update), follow.signal);
      if (follow.signal.aborted) return;
      if (last === null) {
        this.status.textContent = "This job was deleted.";
        this.cancel.hidden = true;
      } else {
        this.finish(last);
        this.onFinished(last); // only for a job that finished while on screen
      }
    } catch (error) {
      if (follow.signal.aborted) return;
      this.error.textContent = sentence(error.message);
      this.onError(error);
    }
  }

  render(job) {
    this.progress.value = job.progress;
    this.status.textContent = statusText(job);
    this.cancel.hidden = isFinished(job);
    // A screen reader hears each stage once, not every percent.
    const moment = `${job.status} ${job.stage}`;
    if (moment !== this.announced) {
      this.announced = moment;
      this.announce.textContent = statusText(job);
    }
  }

  finish(job) {
    this.render(job);
    if (job.status === "failed" && job.error) {
      this.error.textContent = `${capitalised(job.error.code)}: ${sentence(job.error.message)}`;
    }
    if (job.status === "succeeded") this.result.show(job, this.playerMaxMb());
  }

  async requestCancel() {
    if (this.upload) {
      this.upload.abort();
      return;
    }
    if (!this.jobId) return;
    this.cancel.disabled = true;
    this.status.textContent = "Canceling…";
    try {
      await cancelJob(this.jobId);
    } catch (error) {
      this.error.textContent = sentence(error.message);
      this.cancel.disabled = false;
    }
  }

  forget(jobId) {
    if (this.jobId === jobId) this.hide();
  }
}
