// Follows a job over Server-Sent Events. fetch() reads the stream rather than EventSource,
// because EventSource cannot send the API key header (and a key in the URL would end up in
// logs).

import { request } from "./api.js";

const FINISHED = new Set(["succeeded", "failed", "canceled", "expired"]);
const RETRY_MS = 1000;
const MAX_RETRY_MS = 8000;
const RETRYABLE = new Set([0, 429, 502, 503, 504]); // 0: the network, not the server

export function isFinished(job) {
  return FINISHED.has(job.status);
}

// Yields {event, data} for each message of an SSE byte stream.
export async function* readEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let heldCR = ""; // a CR ending a chunk may be half of a CRLF split across chunks
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    let text = heldCR + value;
    heldCR = text.endsWith("\r") ? "\r" : "";
    if (heldCR) text = text.slice(0, -1);
    buffer += text.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue; // keep-alive comment
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") event = text;
        else if (field === "data") data.push(text);
      }
      if (data.length) yield { event, data: data.join("\n") };
    }
  }
}

const sleep = (ms, signal) =>
  new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
  });

// Calls onJob with every new state until the job finishes; returns the last state, or null if
// the job was deleted. A dropped stream is reopened (the first event re-sends the state); an API
// error (404, 401) ends it by throwing.
export async function followJob(id, onJob, signal) {
  let wait = RETRY_MS;
  while (!signal.aborted) {
    try {
      const response = await request(`jobs/${encodeURIComponent(id)}/events`, { signal });
      for await (const { event, data } of readEvents(response.body)) {
        if (event === "deleted") return null;
        if (event !== "job") continue;
        const job = JSON.parse(data);
        wait = RETRY_MS;
        onJob(job);
        if (isFinished(job)) return job;
      }
    } catch (error) {
      if (signal.aborted) break;
      if (!RETRYABLE.has(error.status ?? 0)) throw error;
    }
    await sleep(wait, signal);
    wait = Math.min(wait * 2, MAX_RETRY_MS);
  }
  return null;
}
