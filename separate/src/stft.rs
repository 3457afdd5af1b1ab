//! Short-time Fourier transform with the semantics of `torch.stft` / `torch.istft`, which
//! every model family here was trained with: periodic Hann window of `n_fft` samples,
//! onesided bins (`n_fft / 2 + 1`), optional centring (pad `n_fft / 2` on both sides with
//! zeros or a reflection), optional `normalized` scaling by `1 / sqrt(n_fft)`.
//!
//! Layout: a [`Spectrogram`] holds one channel, frame-major — `data[frame * bins + bin]` —
//! because that is the order the FFT produces and consumes, so no transposition happens here;
//! families that need bin-major tensors transpose while filling their model input.
//!
//! Long inputs: [`Stft::forward_frames`] computes any range of frames straight from the
//! (virtually padded) signal, and [`OverlapAdd`] inverts frames as they come, so a caller can
//! walk a track of any length holding only a few frames of spectrum at a time.

use std::ops::Range;
use std::sync::Arc;

use realfft::num_complex::Complex;
use realfft::{ComplexToReal, RealFftPlanner, RealToComplex};

pub type Complex32 = Complex<f32>;

/// How a centred STFT pads the signal by `n_fft / 2` on both sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PadMode {
    /// Zeros (`pad_mode='constant'`).
    #[default]
    Constant,
    /// Mirror without repeating the edge sample (`pad_mode='reflect'`, torch's default).
    Reflect,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StftConfig {
    pub n_fft: usize,
    pub hop: usize,
    #[serde(default = "default_center")]
    pub center: bool,
    #[serde(default)]
    pub pad_mode: PadMode,
    /// Scale the forward transform by `1 / sqrt(n_fft)` (and the inverse by its reciprocal).
    #[serde(default)]
    pub normalized: bool,
}

fn default_center() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StftError {
    #[error("invalid STFT parameters: {0}")]
    InvalidConfig(String),
    #[error("signal of {len} samples is too short: {reason}")]
    SignalTooShort { len: usize, reason: String },
    #[error("spectrogram shape mismatch: {0}")]
    Shape(String),
    #[error(
        "window overlap-add is (near) zero at sample {sample}: the window / hop pair cannot be inverted"
    )]
    WindowEnvelope { sample: usize },
}

/// One channel's spectrogram, frame-major: `data[frame * bins + bin]`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Spectrogram {
    pub frames: usize,
    pub bins: usize,
    pub data: Vec<Complex32>,
}

impl Spectrogram {
    pub fn zeros(frames: usize, bins: usize) -> Self {
        Self {
            frames,
            bins,
            data: vec![Complex32::new(0.0, 0.0); frames * bins],
        }
    }

    /// The bins of one frame.
    pub fn frame(&self, frame: usize) -> &[Complex32] {
        &self.data[frame * self.bins..(frame + 1) * self.bins]
    }

    pub fn frame_mut(&mut self, frame: usize) -> &mut [Complex32] {
        &mut self.data[frame * self.bins..(frame + 1) * self.bins]
    }
}

/// A planned STFT of fixed parameters. Cheap to share: planning happens once in [`Stft::new`].
#[derive(Clone)]
pub struct Stft {
    config: StftConfig,
    window: Arc<[f32]>,
    forward: Arc<dyn RealToComplex<f32>>,
    inverse: Arc<dyn ComplexToReal<f32>>,
}

impl std::fmt::Debug for Stft {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stft")
            .field("config", &self.config)
            .finish()
    }
}

/// `torch.hann_window(n)` (periodic): `0.5 - 0.5 cos(2πk / n)`.
pub fn hann_window(n: usize) -> Vec<f32> {
    (0..n)
        .map(|k| (0.5 - 0.5 * (2.0 * std::f64::consts::PI * k as f64 / n as f64).cos()) as f32)
        .collect()
}

impl Stft {
    pub fn new(config: StftConfig) -> Result<Self, StftError> {
        if config.n_fft < 2 || config.hop == 0 {
            return Err(StftError::InvalidConfig(format!(
                "n_fft must be ≥ 2 and hop ≥ 1 (got n_fft {}, hop {})",
                config.n_fft, config.hop
            )));
        }
        if config.hop > config.n_fft {
            return Err(StftError::InvalidConfig(format!(
                "hop {} is longer than the window {}: frames would not overlap-add",
                config.hop, config.n_fft
            )));
        }
        let mut planner = RealFftPlanner::<f32>::new();
        Ok(Self {
            config,
            window: hann_window(config.n_fft).into(),
            forward: planner.plan_fft_forward(config.n_fft),
            inverse: planner.plan_fft_inverse(config.n_fft),
        })
    }

    pub fn config(&self) -> &StftConfig {
        &self.config
    }

    /// Onesided bins: `n_fft / 2 + 1`.
    pub fn bins(&self) -> usize {
        self.config.n_fft / 2 + 1
    }

    pub fn window(&self) -> &[f32] {
        &self.window
    }

    fn pad(&self) -> usize {
        if self.config.center {
            self.config.n_fft / 2
        } else {
            0
        }
    }

    /// Frames of a signal of `len` samples: `1 + len / hop` when centred (as torch).
    pub fn num_frames(&self, len: usize) -> Result<usize, StftError> {
        let padded = len + 2 * self.pad();
        if self.config.center && self.config.pad_mode == PadMode::Reflect && len <= self.pad() {
            return Err(StftError::SignalTooShort {
                len,
                reason: format!(
                    "reflect padding of {} needs more samples than that",
                    self.pad()
                ),
            });
        }
        if padded < self.config.n_fft {
            return Err(StftError::SignalTooShort {
                len,
                reason: format!(
                    "an uncentred STFT needs at least n_fft = {}",
                    self.config.n_fft
                ),
            });
        }
        Ok(1 + (padded - self.config.n_fft) / self.config.hop)
    }

    /// Sample `i` of the padded signal.
    fn padded_sample(&self, signal: &[f32], i: usize) -> f32 {
        let pad = self.pad();
        let len = signal.len();
        if i >= pad && i - pad < len {
            return signal[i - pad];
        }
        match self.config.pad_mode {
            PadMode::Constant => 0.0,
            PadMode::Reflect => {
                // Left of the signal: x[pad - i]; right of it: x[2(len-1) - (i - pad)].
                // `num_frames` guaranteed pad < len, so both indices are in range.
                if i < pad {
                    signal[pad - i]
                } else {
                    signal[2 * (len - 1) - (i - pad)]
                }
            }
        }
    }

    /// The whole spectrogram of one channel.
    pub fn forward(&self, signal: &[f32]) -> Result<Spectrogram, StftError> {
        let frames = self.num_frames(signal.len())?;
        let mut spec = Spectrogram::zeros(frames, self.bins());
        self.forward_frames(signal, 0..frames, &mut spec.data)?;
        Ok(spec)
    }

    /// Frames `frames` of `signal`'s spectrogram into `out` (frame-major, `frames.len() * bins`
    /// values). Frames past the signal's last frame are written as zeros, which is what
    /// zero-padding the spectrogram (as Spleeter's partitioning does) means.
    pub fn forward_frames(
        &self,
        signal: &[f32],
        frames: Range<usize>,
        out: &mut [Complex32],
    ) -> Result<(), StftError> {
        let bins = self.bins();
        let total = self.num_frames(signal.len())?;
        if out.len() != frames.len() * bins {
            return Err(StftError::Shape(format!(
                "output holds {} values, {} frames of {bins} bins need {}",
                out.len(),
                frames.len(),
                frames.len() * bins
            )));
        }
        let n_fft = self.config.n_fft;
        let pad = self.pad();
        let scale = if self.config.normalized {
            1.0 / (n_fft as f32).sqrt()
        } else {
            1.0
        };
        let mut buffer = self.forward.make_input_vec();
        let mut scratch = self.forward.make_scratch_vec();
        for (frame, dest) in frames.zip(out.chunks_exact_mut(bins)) {
            if frame >= total {
                dest.fill(Complex32::new(0.0, 0.0));
                continue;
            }
            let start = frame * self.config.hop;
            if start >= pad && start - pad + n_fft <= signal.len() {
                let segment = &signal[start - pad..start - pad + n_fft];
                for ((b, &x), &w) in buffer.iter_mut().zip(segment).zip(self.window.iter()) {
                    *b = x * w;
                }
            } else {
                for (n, (b, &w)) in buffer.iter_mut().zip(self.window.iter()).enumerate() {
                    *b = self.padded_sample(signal, start + n) * w;
                }
            }
            self.forward
                .process_with_scratch(&mut buffer, dest, &mut scratch)
                .map_err(|e| StftError::Shape(e.to_string()))?;
            if scale != 1.0 {
                dest.iter_mut().for_each(|c| *c *= scale);
            }
        }
        Ok(())
    }

    /// Inverse of a whole spectrogram (`torch.istft`): `length` = `None` gives torch's default
    /// length, `hop * (frames - 1)` when centred.
    pub fn inverse(
        &self,
        spec: &Spectrogram,
        length: Option<usize>,
    ) -> Result<Vec<f32>, StftError> {
        let mut ola = OverlapAdd::new(self.clone(), spec.frames, length)?;
        ola.add_frames(0, &spec.data)?;
        ola.finish()
    }
}

/// Streaming `torch.istft`: frames are inverse-transformed, windowed and added into the
/// output as they come (in any order), then [`OverlapAdd::finish`] divides by the window's
/// squared overlap-add. Holds only the output signal.
pub struct OverlapAdd {
    stft: Stft,
    total_frames: usize,
    length: usize,
    output: Vec<f32>,
    buffer: Vec<Complex32>,
    frame_out: Vec<f32>,
    scratch: Vec<Complex32>,
}

impl OverlapAdd {
    /// Prepares the inverse of a `total_frames`-frame spectrogram into `length` samples
    /// (`None`: torch's default length).
    pub fn new(stft: Stft, total_frames: usize, length: Option<usize>) -> Result<Self, StftError> {
        if total_frames == 0 {
            return Err(StftError::Shape(
                "a spectrogram needs at least one frame".into(),
            ));
        }
        let config = stft.config;
        let full = config.n_fft + config.hop * (total_frames - 1);
        let length = length.unwrap_or(full - 2 * stft.pad());
        Ok(Self {
            buffer: stft.inverse.make_input_vec(),
            frame_out: stft.inverse.make_output_vec(),
            scratch: stft.inverse.make_scratch_vec(),
            output: vec![0.0; length],
            stft,
            total_frames,
            length,
        })
    }

    /// Adds frames `first_frame..` (frame-major, `bins` values each).
    pub fn add_frames(
        &mut self,
        first_frame: usize,
        frames: &[Complex32],
    ) -> Result<(), StftError> {
        let bins = self.stft.bins();
        if !frames.len().is_multiple_of(bins)
            || first_frame + frames.len() / bins > self.total_frames
        {
            return Err(StftError::Shape(format!(
                "{} values from frame {first_frame} do not fit {} frames of {bins} bins",
                frames.len(),
                self.total_frames
            )));
        }
        let n_fft = self.stft.config.n_fft;
        let hop = self.stft.config.hop;
        let pad = self.stft.pad();
        // irfft divides by n; a normalized transform also undoes its forward 1/sqrt(n).
        let scale = if self.stft.config.normalized {
            1.0 / (n_fft as f32).sqrt()
        } else {
            1.0 / n_fft as f32
        };
        for (k, spectrum) in frames.chunks_exact(bins).enumerate() {
            let frame = first_frame + k;
            self.buffer.copy_from_slice(spectrum);
            // A real signal's DC and Nyquist bins are real; torch's irfft ignores their
            // imaginary parts, so do the same.
            self.buffer[0].im = 0.0;
            if n_fft.is_multiple_of(2) {
                self.buffer[bins - 1].im = 0.0;
            }
            self.stft
                .inverse
                .process_with_scratch(&mut self.buffer, &mut self.frame_out, &mut self.scratch)
                .map_err(|e| StftError::Shape(e.to_string()))?;
            let start = frame * hop;
            for (n, (&y, &w)) in self
                .frame_out
                .iter()
                .zip(self.stft.window.iter())
                .enumerate()
            {
                let padded_index = start + n;
                if padded_index < pad {
                    continue;
                }
                let i = padded_index - pad;
                if i >= self.length {
                    break;
                }
                self.output[i] += y * scale * w;
            }
        }
        Ok(())
    }

    /// Divides by the window envelope and returns the signal.
    pub fn finish(mut self) -> Result<Vec<f32>, StftError> {
        let config = self.stft.config;
        let pad = self.stft.pad();
        let full = config.n_fft + config.hop * (self.total_frames - 1);
        for (i, sample) in self.output.iter_mut().enumerate() {
            let padded_index = i + pad;
            if padded_index >= full {
                // Past the last frame: torch pads with zeros.
                *sample = 0.0;
                continue;
            }
            // Frames t covering padded_index: t*hop <= padded_index < t*hop + n_fft.
            let last = (padded_index / config.hop).min(self.total_frames - 1);
            let first = (padded_index + 1)
                .saturating_sub(config.n_fft)
                .div_ceil(config.hop);
            let envelope: f32 = (first..=last)
                .map(|t| {
                    let w = self.stft.window[padded_index - t * config.hop];
                    w * w
                })
                .sum();
            if envelope <= 1e-11 {
                return Err(StftError::WindowEnvelope { sample: i });
            }
            *sample /= envelope;
        }
        Ok(self.output)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signal(len: usize, seed: u64) -> Vec<f32> {
        let mut state = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..len)
            .map(|i| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let noise = ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5;
                0.5 * (i as f32 * 0.031).sin() + noise
            })
            .collect()
    }

    fn config(n_fft: usize, hop: usize, pad_mode: PadMode, normalized: bool) -> StftConfig {
        StftConfig {
            n_fft,
            hop,
            center: true,
            pad_mode,
            normalized,
        }
    }

    /// Textbook DFT of the padded, windowed frames, in f64.
    fn naive_stft(x: &[f32], cfg: StftConfig) -> Vec<Vec<(f64, f64)>> {
        let n = cfg.n_fft;
        let pad = if cfg.center { n / 2 } else { 0 };
        let len = x.len() as isize;
        let padded: Vec<f64> = (-(pad as isize)..len + pad as isize)
            .map(|i| {
                if (0..len).contains(&i) {
                    f64::from(x[i as usize])
                } else {
                    match cfg.pad_mode {
                        PadMode::Constant => 0.0,
                        PadMode::Reflect => {
                            let j = if i < 0 { -i } else { 2 * (len - 1) - i };
                            f64::from(x[j as usize])
                        }
                    }
                }
            })
            .collect();
        let frames = 1 + (padded.len() - n) / cfg.hop;
        let scale = if cfg.normalized {
            1.0 / (n as f64).sqrt()
        } else {
            1.0
        };
        (0..frames)
            .map(|t| {
                (0..=n / 2)
                    .map(|k| {
                        let mut acc = (0.0, 0.0);
                        for m in 0..n {
                            let w = 0.5
                                - 0.5 * (2.0 * std::f64::consts::PI * m as f64 / n as f64).cos();
                            let v = padded[t * cfg.hop + m] * w;
                            let angle = -2.0 * std::f64::consts::PI * (k * m) as f64 / n as f64;
                            acc.0 += v * angle.cos();
                            acc.1 += v * angle.sin();
                        }
                        (acc.0 * scale, acc.1 * scale)
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn forward_matches_a_naive_dft() {
        for (pad_mode, normalized) in [
            (PadMode::Constant, false),
            (PadMode::Reflect, true),
            (PadMode::Reflect, false),
        ] {
            let cfg = config(64, 16, pad_mode, normalized);
            let x = signal(301, 7);
            let stft = Stft::new(cfg).expect("valid config");
            let spec = stft.forward(&x).expect("stft");
            let expected = naive_stft(&x, cfg);
            assert_eq!(spec.frames, 1 + 301 / 16);
            assert_eq!(spec.frames, expected.len());
            assert_eq!(spec.bins, 33);
            for (t, frame) in expected.iter().enumerate() {
                for (k, &(re, im)) in frame.iter().enumerate() {
                    let got = spec.frame(t)[k];
                    assert!(
                        (f64::from(got.re) - re).abs() < 1e-4
                            && (f64::from(got.im) - im).abs() < 1e-4,
                        "{pad_mode:?} normalized={normalized} frame {t} bin {k}: {got} vs {re}+{im}i"
                    );
                }
            }
        }
    }

    #[test]
    fn inverse_reconstructs_the_signal() {
        for (n_fft, hop, pad_mode, normalized) in [
            (64, 16, PadMode::Constant, false),
            (64, 16, PadMode::Reflect, true),
            (4096, 1024, PadMode::Constant, false),
            (48, 12, PadMode::Reflect, false),
        ] {
            let x = signal(10_007, 3);
            let stft = Stft::new(config(n_fft, hop, pad_mode, normalized)).expect("valid config");
            let spec = stft.forward(&x).expect("stft");
            let y = stft.inverse(&spec, Some(x.len())).expect("istft");
            assert_eq!(y.len(), x.len());
            let err = x
                .iter()
                .zip(&y)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(err < 1e-5, "n_fft {n_fft} hop {hop}: max error {err}");
        }
    }

    #[test]
    fn default_length_is_torchs() {
        let stft = Stft::new(config(64, 16, PadMode::Constant, false)).expect("valid config");
        let x = signal(1000, 1);
        let spec = stft.forward(&x).expect("stft");
        let y = stft.inverse(&spec, None).expect("istft");
        // torch: n_fft + hop * (frames - 1) - 2 * (n_fft / 2) = hop * (frames - 1).
        assert_eq!(y.len(), 16 * (spec.frames - 1));
        assert!(x.iter().zip(&y).all(|(a, b)| (a - b).abs() < 1e-5));
        // A longer requested length is zero past the last frame.
        let longer = stft.inverse(&spec, Some(1100)).expect("istft");
        assert!(longer[1000 + 64..].iter().all(|&v| v == 0.0));
    }

    #[test]
    fn frames_can_be_computed_and_inverted_piecewise() {
        let stft = Stft::new(config(64, 16, PadMode::Reflect, true)).expect("valid config");
        let x = signal(777, 5);
        let whole = stft.forward(&x).expect("stft");
        let bins = stft.bins();
        let mut ola = OverlapAdd::new(stft.clone(), whole.frames, Some(x.len())).expect("ola");
        // Backwards and in uneven pieces, with frames past the end reading as zeros.
        let mut start = whole.frames;
        while start > 0 {
            let first = start.saturating_sub(7);
            let mut piece = vec![Complex32::new(0.0, 0.0); (start - first) * bins];
            stft.forward_frames(&x, first..start, &mut piece)
                .expect("frames");
            assert_eq!(piece, whole.data[first * bins..start * bins]);
            ola.add_frames(first, &piece).expect("add");
            start = first;
        }
        let mut beyond = vec![Complex32::new(1.0, 1.0); 2 * bins];
        stft.forward_frames(&x, whole.frames..whole.frames + 2, &mut beyond)
            .expect("frames");
        assert!(beyond.iter().all(|c| c.re == 0.0 && c.im == 0.0));
        let y = ola.finish().expect("finish");
        assert!(x.iter().zip(&y).all(|(a, b)| (a - b).abs() < 1e-5));
    }

    #[test]
    fn bad_parameters_and_inputs_are_typed_errors() {
        assert!(matches!(
            Stft::new(config(64, 0, PadMode::Constant, false)),
            Err(StftError::InvalidConfig(_))
        ));
        assert!(matches!(
            Stft::new(config(64, 65, PadMode::Constant, false)),
            Err(StftError::InvalidConfig(_))
        ));
        let reflect = Stft::new(config(64, 16, PadMode::Reflect, false)).expect("valid config");
        assert!(matches!(
            reflect.forward(&[0.0; 32]),
            Err(StftError::SignalTooShort { .. })
        ));
        // hop == n_fft with a Hann window leaves zeros in the envelope.
        let gappy = Stft::new(config(64, 64, PadMode::Constant, false)).expect("valid config");
        let spec = gappy.forward(&signal(640, 2)).expect("stft");
        assert!(matches!(
            gappy.inverse(&spec, None),
            Err(StftError::WindowEnvelope { .. })
        ));
    }
}
