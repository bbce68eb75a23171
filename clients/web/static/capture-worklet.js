// AudioWorklet processor: microphone frames -> 16 kHz mono float32, posted in ~100 ms pieces.
// Runs on the audio thread. When the AudioContext already runs at 16 kHz (Chrome resamples the
// microphone for us) the samples pass through; otherwise (a browser that cannot open a 16 kHz context
// on this microphone) they are low-passed below 7.2 kHz by a 31-tap Hann-windowed sinc, against
// aliasing, and read at the 16 kHz positions by linear interpolation.
const TARGET_RATE = 16000;

// Windowed-sinc low-pass taps with unit gain at 0 Hz; `cutoff` in cycles per input sample (0: none).
function lowpass(cutoff, n) {
  if (cutoff <= 0) return Float32Array.of(1);
  const h = new Float32Array(n);
  const mid = (n - 1) / 2;
  let sum = 0;
  for (let k = 0; k < n; k++) {
    const t = k - mid;
    const sinc = t === 0 ? 2 * cutoff : Math.sin(2 * Math.PI * cutoff * t) / (Math.PI * t);
    h[k] = sinc * (0.5 - 0.5 * Math.cos((2 * Math.PI * k) / (n - 1)));
    sum += h[k];
  }
  for (let k = 0; k < n; k++) h[k] /= sum;
  return h;
}

class CaptureProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.ratio = sampleRate / TARGET_RATE; // input samples per output sample
    this.pos = 0; // fractional read position into `this.tail` + current block
    this.tail = new Float32Array(0); // input samples not consumed yet
    this.out = [];
    this.outLen = 0;
    this.piece = Math.round(TARGET_RATE / 10);
    this.fir = lowpass(this.ratio > 1 ? (0.45 * TARGET_RATE) / sampleRate : 0, 31);
    this.taps = this.fir.length;
    // "flush" (the page's Stop): post what is held, as {samples}, so the end of the speech is sent.
    this.port.onmessage = () => this.port.postMessage({ samples: this.take() });
  }

  process(inputs) {
    const input = inputs[0];
    if (!input || input.length === 0 || input[0].length === 0) return true;
    const n = input[0].length;
    const mono = new Float32Array(n);
    for (const channel of input) for (let i = 0; i < n; i++) mono[i] += channel[i] / input.length;
    if (this.ratio === 1) {
      this.push(mono);
    } else {
      const x = new Float32Array(this.tail.length + n);
      x.set(this.tail);
      x.set(mono, this.tail.length);
      const out = [];
      while (this.pos + 1 < x.length) {
        const i = Math.floor(this.pos);
        const frac = this.pos - i;
        out.push(this.smooth(x, i) * (1 - frac) + this.smooth(x, i + 1) * frac);
        this.pos += this.ratio;
      }
      const keep = Math.max(0, Math.floor(this.pos) - this.taps);
      this.tail = x.slice(keep);
      this.pos -= keep;
      this.push(Float32Array.from(out));
    }
    return true;
  }

  smooth(x, i) {
    let sum = 0;
    for (let k = 0; k < this.taps && i - k >= 0; k++) sum += this.fir[k] * x[i - k];
    return sum;
  }

  push(samples) {
    this.out.push(samples);
    this.outLen += samples.length;
    if (this.outLen >= this.piece) {
      const all = this.take();
      this.port.postMessage(all, [all.buffer]);
    }
  }

  take() {
    const all = new Float32Array(this.outLen);
    let at = 0;
    for (const s of this.out) {
      all.set(s, at);
      at += s.length;
    }
    this.out = [];
    this.outLen = 0;
    return all;
  }
}

registerProcessor("capture-processor", CaptureProcessor);
