// The quality report in plain words, one sentence per line.

import { capitalised } from "./format.js";

// One decimal, a real minus sign, and no "−0.0".
const signed = (value) => (Math.abs(value) < 0.05 ? "0.0" : value.toFixed(1).replace("-", "−"));
const dB = (value) => `${signed(value)} dB`;

function stemSentence(name, q) {
  if (q.peak_dbfs == null) return `${capitalised(name)}: silent.`;
  const parts = [`peaks at ${dB(q.peak_dbfs)}FS`];
  if (q.lufs != null) parts.push(`loudness ${signed(q.lufs)} LUFS`);
  if (q.clipped_fraction > 0) {
    const percent = q.clipped_fraction * 100;
    parts.push(`${percent < 0.01 ? "under 0.01" : percent.toFixed(2)} % of samples clipped before the level was limited`);
  } else {
    parts.push("no clipping");
  }
  return `${capitalised(name)}: ${parts.join(", ")}.`;
}

function mixtureSentence(snr) {
  if (snr == null) return null;
  const figure = `(mixture SNR ${dB(snr)})`;
  if (snr >= 40) return `The stems add back up to the original almost exactly ${figure}.`;
  if (snr >= 20) return `The stems add back up to the original closely ${figure}.`;
  return `The stems do not add back up to the original well ${figure}: some of the sound was lost or changed.`;
}

export function qualityLines(quality) {
  if (!quality) return ["No quality report for this job."];
  const lines = [];
  const mixture = mixtureSentence(quality.mixture_snr_db);
  if (mixture) lines.push(mixture);
  for (const [name, q] of Object.entries(quality.stems || {})) lines.push(stemSentence(name, q));
  return lines;
}
