// The submission form: a file (dropped or picked) or a link, the model, which stems, the format.

import { capitalised } from "./format.js";

const $ = (id) => document.getElementById(id);

export class JobForm {
  constructor() {
    this.form = $("job-form");
    this.file = $("file-input");
    this.url = $("url-input");
    this.model = $("model-select");
    this.description = $("model-description");
    this.stemChoices = $("stem-choices");
    this.twoStem = $("two-stem-choice");
    this.twoStemSelect = $("two-stem-select");
    this.format = $("format-select");
    this.submit = $("submit-button");
    this.models = [];
    this.dropZone();
    // One source at a time: picking a file clears the link and typing a link clears the file.
    this.file.addEventListener("change", () => {
      if (this.file.files.length) this.url.value = "";
    });
    this.url.addEventListener("input", () => {
      if (this.url.value) this.file.value = "";
    });
    this.model.addEventListener("change", () => this.showModel());
    for (const radio of this.form.elements["stem-mode"]) {
      radio.addEventListener("change", () => this.showStemMode());
    }
  }

  dropZone() {
    const zone = $("drop-zone");
    zone.addEventListener("dragover", (event) => {
      event.preventDefault();
      zone.classList.add("dragging");
    });
    zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      zone.classList.remove("dragging");
      if (!event.dataTransfer.files.length) return;
      this.file.files = event.dataTransfer.files; // several files: one job each
      this.url.value = "";
    });
  }

  // Installed models can run, and one still downloading (its jobs wait for it); the server's
  // default comes first selected. A second call keeps what the person chose.
  setModels(models, defaultModel) {
    const chosen = this.model.value;
    this.models = models.filter((m) => m.installed || m.state === "downloading");
    this.model.replaceChildren();
    for (const m of this.models) {
      const option = document.createElement("option");
      option.value = m.name;
      option.textContent = m.state === "downloading" ? `${m.name} (downloading)` : m.name;
      option.selected = chosen ? m.name === chosen : m.name === defaultModel;
      this.model.append(option);
    }
    this.submit.disabled = !this.models.length;
    this.showModel();
    return this.models.length;
  }

  selectedModel() {
    return this.models.find((m) => m.name === this.model.value);
  }

  showModel() {
    const model = this.selectedModel();
    if (!model) {
      this.description.textContent = "";
      return;
    }
    const stems = model.sources.length ? ` Stems: ${model.sources.join(", ")}.` : "";
    this.description.textContent = `${capitalised(model.description)}.${stems}`;
    this.stemChoices.replaceChildren();
    this.twoStemSelect.replaceChildren();
    for (const source of model.sources) {
      const label = document.createElement("label");
      const box = document.createElement("input");
      box.type = "checkbox";
      box.value = source;
      box.checked = true;
      label.append(box, ` ${capitalised(source)}`);
      this.stemChoices.append(label);
      const option = document.createElement("option");
      option.value = source;
      option.textContent = capitalised(source);
      option.selected = source === "vocals";
      this.twoStemSelect.append(option);
    }
    this.showStemMode();
  }

  stemMode() {
    return this.form.elements["stem-mode"].value;
  }

  showStemMode() {
    this.stemChoices.hidden = this.stemMode() !== "some";
    this.twoStem.hidden = this.stemMode() !== "two";
  }

  // One {name, data} per job (a file each, or the link), or an Error whose message tells the
  // person what to fix; nothing is sent when one file of several is too large.
  build(maxUploadMb) {
    const files = [...this.file.files];
    const url = this.url.value.trim();
    if (!files.length && !url) throw new Error("Choose a file or paste a link first.");
    for (const file of files) {
      // The server counts MB as MiB.
      if (maxUploadMb && file.size > maxUploadMb * 1048576) {
        const size = (file.size / 1048576).toFixed(0);
        throw new Error(`The file ${file.name} is ${size} MB; this server takes files up to ${maxUploadMb} MB.`);
      }
    }
    if (!files.length) return [{ name: url, data: this.options(new FormData(), "url", url) }];
    return files.map((file) => ({
      name: file.name,
      data: this.options(new FormData(), "file", file),
    }));
  }

  options(data, field, value) {
    if (value instanceof File) data.append(field, value, value.name);
    else data.append(field, value);
    data.append("model", this.model.value);
    const mode = this.stemMode();
    if (mode === "some") {
      const chosen = [...this.stemChoices.querySelectorAll("input:checked")].map((b) => b.value);
      if (!chosen.length) throw new Error("Pick at least one stem.");
      data.append("stems", chosen.join(","));
    } else if (mode === "two") {
      data.append("two_stems", this.twoStemSelect.value);
    }
    data.append("output_format", this.format.value);
    return data;
  }
}
