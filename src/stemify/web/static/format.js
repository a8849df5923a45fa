// Numbers as people read them.

export function duration(seconds) {
  if (seconds == null || !Number.isFinite(seconds)) return "";
  const total = Math.max(0, Math.round(seconds));
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = String(total % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${s}` : `${m}:${s}`;
}

export function remaining(seconds) {
  // 0 comes with the first report of a stage, before there is a rate: not worth showing.
  if (seconds == null || !Number.isFinite(seconds) || seconds <= 0) return "";
  if (seconds < 60) return `about ${Math.max(1, Math.round(seconds))} s left`;
  const minutes = Math.round(seconds / 60);
  return minutes < 90 ? `about ${minutes} min left` : `about ${(seconds / 3600).toFixed(1)} h left`;
}

export function bytes(size) {
  if (size == null) return "";
  if (size < 1e6) return `${Math.max(1, Math.round(size / 1e3))} kB`;
  if (size < 1e9) return `${(size / 1e6).toFixed(1)} MB`;
  return `${(size / 1e9).toFixed(2)} GB`;
}

export function capitalised(text) {
  return text ? text[0].toUpperCase() + text.slice(1).replaceAll("_", " ") : "";
}

// A server message ("upload is larger than the 500 MB limit") as a sentence.
export function sentence(text) {
  if (!text) return "";
  const capital = text[0].toUpperCase() + text.slice(1);
  return /[.!?…]$/.test(capital) ? capital : `${capital}.`;
}

export function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "";
}

// The name a person knows the job by: the file, else the link, else its id.
export function jobName(job) {
  return (job.input && (job.input.name || job.input.url)) || `job ${job.id}`;
}
