// Wires the page together: the key (when the server needs one), the form, the job on screen and
// the history.

import { getConfig, getJob, getModels, saveKey, savedKey, submitJob } from "./api.js";
import { JobForm } from "./form.js";
import { sentence } from "./format.js";
import { History } from "./history.js";
import { JobView } from "./jobview.js";

const $ = (id) => document.getElementById(id);

const formError = $("form-error");
const keySection = $("key-section");
const keyInput = $("api-key");
let config = { auth_required: false, max_upload_mb: 0, player_max_mb: 0 };

const form = new JobForm();
const jobList = new History({
  onOpen: openJob,
  onDeleted: (id) => view.forget(id),
});
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
    const catalogue = await getModels();
    if (!form.setModels(catalogue.models, catalogue.default_model)) {
      formError.textContent =
        `No model is installed on the server: run "stemify models pull ${catalogue.default_model}" there.`;
    }
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

async function submit(event) {
  event.preventDefault();
  formError.textContent = "";
  let data;
  try {
    data = form.build(config.max_upload_mb);
  } catch (error) {
    formError.textContent = error.message; // the page's own sentence
    return;
  }
  form.submit.disabled = true;
  const upload = new AbortController();
  view.startUpload(form.sourceName(), upload);
  try {
    const job = await submitJob(data, (fraction) => view.showUpload(fraction), upload.signal);
    jobList.refresh();
    view.open(job);
  } catch (error) {
    view.hide();
    formError.textContent = sentence(error.message);
    needKey(error);
  } finally {
    form.submit.disabled = false;
  }
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
