// Talks to the stemify API: the key header, the one error shape, uploads with progress.

const API = "/api/v1";
const KEY_STORAGE = "stemify.apiKey";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export function savedKey() {
  return localStorage.getItem(KEY_STORAGE) || "";
}

export function saveKey(key) {
  if (key) localStorage.setItem(KEY_STORAGE, key);
  else localStorage.removeItem(KEY_STORAGE);
}

function headers(extra = {}) {
  const key = savedKey();
  return key ? { ...extra, "X-API-Key": key } : extra;
}

async function errorOf(response) {
  // Every API error is {"error": {"code", "message"}}; anything else (a proxy page) gets a
  // plain sentence with the status.
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) {
      return new ApiError(response.status, body.error.code, body.error.message);
    }
  } catch {
    // not JSON
  }
  return new ApiError(response.status, "http_error", `the server answered ${response.status}`);
}

export async function request(path, options = {}) {
  let response;
  try {
    response = await fetch(path.startsWith("/") ? path : `${API}/${path}`, {
      ...options,
      headers: headers(options.headers),
    });
  } catch {
    throw new ApiError(0, "network", "the server cannot be reached; check your connection");
  }
  if (!response.ok) throw await errorOf(response);
  return response;
}

export async function getJson(path) {
  return (await request(path)).json();
}

export const getConfig = () => getJson("/web/config");
export const getModels = () => getJson("models");
export const getJob = (id) => getJson(`jobs/${encodeURIComponent(id)}`);
export const listJobs = (cursor) =>
  getJson(`jobs?limit=10${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`);
export const cancelJob = (id) =>
  request(`jobs/${encodeURIComponent(id)}/cancel`, { method: "POST" });
export const deleteJob = (id) => request(`jobs/${encodeURIComponent(id)}`, { method: "DELETE" });

// Stem bytes for the player. The URL comes from the job as given (it may be signed); the key
// goes along when there is one, but only to this server: a stem link into the bucket or a CDN
// is signed itself, and the key must never leave for another origin (nor would the bucket's
// CORS rule allow the header).
export async function fetchBytes(url) {
  const target = new URL(url, location.href);
  if (target.origin === location.origin) return (await request(url)).arrayBuffer();
  let response;
  try {
    response = await fetch(target.href, { credentials: "omit" });
  } catch {
    throw new ApiError(
      0,
      "network",
      `the stems at ${target.origin} cannot be fetched (is the bucket's CORS rule set for this page?)`,
    );
  }
  if (!response.ok) {
    throw new ApiError(response.status, "http_error", `${target.origin} answered ${response.status}`);
  }
  return response.arrayBuffer();
}

// XMLHttpRequest, not fetch: only it reports upload progress, which a 500 MB file needs.
// Aborting `signal` stops the upload; the server then keeps nothing of it.
export function submitJob(form, onUploadProgress, signal) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    signal.addEventListener("abort", () => xhr.abort(), { once: true });
    xhr.addEventListener("abort", () =>
      reject(new ApiError(0, "aborted", "the upload was canceled; nothing was kept")));
    xhr.open("POST", `${API}/jobs`);
    for (const [name, value] of Object.entries(headers())) xhr.setRequestHeader(name, value);
    xhr.responseType = "json";
    xhr.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) onUploadProgress(event.loaded / event.total);
    });
    xhr.addEventListener("load", () => {
      const body = xhr.response;
      if (xhr.status === 200 || xhr.status === 202) resolve(body);
      else if (body && body.error) reject(new ApiError(xhr.status, body.error.code, body.error.message));
      else reject(new ApiError(xhr.status, "http_error", `the server answered ${xhr.status}`));
    });
    xhr.addEventListener("error", () =>
      reject(new ApiError(0, "network", "the upload failed: the server cannot be reached")));
    xhr.send(form);
  });
}
