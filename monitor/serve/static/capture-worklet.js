// The room's microphone in the page: an AudioWorklet that turns the capture into 100 ms chunks of 16 kHz int16.
// The AudioContext runs at 16 kHz, so the browser resamples the microphone; this only converts and batches.
class PcmCapture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.chunk = new Int16Array(1600);
    this.filled = 0;
  }

  process(inputs) {
    const channels = inputs[0];
    if (channels && channels.length) {
      const samples = channels[0];
      for (let i = 0; i < samples.length; i++) {
        let x = 0;
        for (let c = 0; c < channels.length; c++) x += channels[c][i];
        x = Math.max(-1, Math.min(1, x / channels.length));
        this.chunk[this.filled++] = x < 0 ? x * 32768 : x * 32767;
        if (this.filled === this.chunk.length) {
          this.port.postMessage(this.chunk, [this.chunk.buffer]);
          this.chunk = new Int16Array(1600);
          this.filled = 0;
        }
      }
    }
    return true;
  }
}

registerProcessor("pcm-capture", PcmCapture);
