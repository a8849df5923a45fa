// Draws an AudioBuffer as a waveform: one min/max bar per pixel column of the mono mix,
// scaled so that `fullScale` (the loudest stem's peak) fills the height: quiet songs stay
// visible and the stems keep their relative sizes.

function peaks(buffer, columns) {
  const channels = [];
  for (let c = 0; c < buffer.numberOfChannels; c++) channels.push(buffer.getChannelData(c));
  const per = buffer.length / columns;
  const result = new Float32Array(columns * 2);
  for (let x = 0; x < columns; x++) {
    const start = Math.floor(x * per);
    const end = Math.min(buffer.length, Math.max(start + 1, Math.floor((x + 1) * per)));
    let low = 0;
    let high = 0;
    for (let i = start; i < end; i++) {
      let sample = 0;
      for (const data of channels) sample += data[i];
      sample /= channels.length;
      if (sample < low) low = sample;
      if (sample > high) high = sample;
    }
    result[2 * x] = low;
    result[2 * x + 1] = high;
  }
  return result;
}

export function drawWaveform(canvas, buffer, fullScale = 1) {
  const ratio = window.devicePixelRatio || 1;
  const width = Math.max(1, Math.round(canvas.clientWidth * ratio));
  const height = Math.max(1, Math.round(canvas.clientHeight * ratio));
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext("2d");
  context.clearRect(0, 0, width, height);
  context.fillStyle = getComputedStyle(canvas).color;
  const bars = peaks(buffer, width);
  const middle = height / 2;
  const scale = middle / (fullScale > 0 ? fullScale : 1);
  for (let x = 0; x < width; x++) {
    const top = Math.max(0, middle - bars[2 * x + 1] * scale);
    const bottom = Math.min(height, middle - bars[2 * x] * scale);
    context.fillRect(x, top, 1, Math.max(1, bottom - top));
  }
}

// Redraws when the canvas changes size (a phone turned, a window resized).
export function keepDrawn(canvas, buffer, fullScale = 1) {
  let lastWidth = 0;
  const observer = new ResizeObserver(() => {
    if (canvas.clientWidth !== lastWidth) {
      lastWidth = canvas.clientWidth;
      drawWaveform(canvas, buffer, fullScale);
    }
  });
  observer.observe(canvas);
  return () => observer.disconnect();
}
