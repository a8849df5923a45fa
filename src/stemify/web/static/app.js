// Wires the page together: the key (when the server needs one), the form, the job on screen and
// the history.

import { getConfig, getJob, getModels, saveKey, savedKey, submitJob } from "./api.js";
import { Batch } from "./batch.js";
import { JobForm } from "./form.js";
import { sentence } from "./format.js";
import { History } from "./history.js";
import { JobView } from "./jobview.js";

const $ = (id) => document.getElementById(id);

const formError = $("form-error");
const modelState = $("model-state");
const MODEL_POLL_MS = 1000;
let modelPoll = null;
const keySection = $("key-section");
const keyInput = $("api-key");
let config = { auth_required: false, max_upload_mb: 0, player_max_mb: 0 };

const form = new JobForm();
const jobList = new History({
  onOpen: openJob,
  onDeleted: (id) => view.forget(id),
});
const batch = new Batch({ onOpen: openJob });
const view = new JobView({
  onFinished: () => jobList.refresh(),
  onError: needKey,
  playerMaxMb: () => config.player_max_mb,
});

function needKey(error) {
  if (error.status !== 401) return;
  keySection.hidden = false;
  keyInput.focus();
}

async function openJob(id) {
  formError.textContent = "";
  try {
    view.open(await getJob(id));
  } catch (error) {
    view.hide();
    formError.textContent = sentence(error.message);
    needKey(error);
  }
}

// Models and history need the key when auth is on; without one, say so instead of failing.
async function load() {
  formError.textContent = "";
  jobList.clear();
  if (config.auth_required && !savedKey()) {
    form.setModels([], null);
    formError.textContent = "Enter your API key above to start.";
    return;
  }
  try {
    await showModels();
  } catch (error) {
    form.setModels([], null);
    formError.textContent = sentence(error.message);
    needKey(error);
    return;
  }
  await jobList.refresh();
  const shown = new URLSearchParams(location.hash.slice(1)).get("job");
  if (shown) await openJob(shown);
}

// The default model's state: downloading (with percent, polled until it arrives) or missing
// (with the server's reason); nothing to say once it is installed.
async function showModels() {
  clearTimeout(modelPoll);
  const catalogue = await getModels();
  const usable = form.setModels(catalogue.models, catalogue.default_model);
  const model = catalogue.models.find((m) => m.name === catalogue.default_model);
  const state = model ? model.state : "missing";
  modelState.dataset.state = state;
  modelState.hidden = state === "installed";
  if (state === "downloading") {
    const percent = model.percent == null ? "" : ` — ${Math.floor(model.percent)} %`;
    modelState.textContent =
      `Downloading the model ${model.name}${percent}. Songs sent now wait for it and start when it has arrived.`;
    modelPoll = setTimeout(() => showModels().catch(() => {}), MODEL_POLL_MS);
  } else if (state === "missing") {
    const reason = model && model.reason ? sentence(model.reason) : "It is not installed.";
    modelState.textContent = `The model ${catalogue.default_model} is missing. ${reason}`;
  }
  if (!usable) {
    formError.textContent =
      `No model is installed on the server: run "stemify models pull ${catalogue.default_model}" there.`;
  } else if (formError.textContent.startsWith("No model is installed")) {
    formError.textContent = "";
  }
}

async function submit(event) {
  event.preventDefault();
  formError.textContent = "";
  let jobs;
  try {
    jobs = form.build(config.max_upload_mb);
  } catch (error) {
    formError.textContent = error.message; // the page's own sentence
    return;
  }
  form.submit.disabled = true;
  batch.clear();
  try {
    if (jobs.length === 1) await submitOne(jobs[0]);
    else await submitSeveral(jobs);
  } finally {
    form.submit.disabled = false;
  }
}

async function submitOne({ name, data }) {
  const upload = new AbortController();
  view.startUpload(name, upload);
  try {
    const job = await submitJob(data, (fraction) => view.showUpload(fraction), upload.signal);
    jobList.refresh();
    view.open(job);
  } catch (error) {
    view.hide();
    formError.textContent = sentence(error.message);
    needKey(error);
  }
}

// One upload after the other (the line is shared); a refused file does not stop the others.
async function submitSeveral(jobs) {
  const rows = jobs.map(({ name }) => batch.add(name));
  for (const [i, { data }] of jobs.entries()) {
    try {
      const job = await submitJob(data, rows[i].uploading, new AbortController().signal);
      rows[i].follow(job);
    } catch (error) {
      rows[i].failed(error);
      needKey(error);
    }
  }
  jobList.refresh();
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  saveKey(keyInput.value.trim());
  load();
});
$("key-forget").addEventListener("click", () => {
  keyInput.value = "";
  saveKey("");
  view.hide();
  load();
});
form.form.addEventListener("submit", submit);

async function start() {
  try {
    config = await getConfig();
  } catch (error) {
    formError.textContent = sentence(error.message);
    return;
  }
  keySection.hidden = !config.auth_required;
  keyInput.value = savedKey();
  await load();
  document.body.dataset.ready = "true";
}

start();
