//! The one sample-rate converter every stage uses: decode brings sources to the models' rate,
//! encode takes stems back to the source's rate on request (`--output-rate source`).
//!
//! Band-limited resampling with a Blackman-Harris² windowed sinc. For rate pairs with a small
//! common block (every common audio rate: 48 000 ↔ 44 100 has blocks of 160 ↔ 147 frames) it
//! runs rubato's synchronous FFT resampler: the filter is applied by FFT overlap-add on blocks
//! of ~1 000+ frames, so its taps (the whole block, longer than the 256 of the sinc path) cost
//! O(log n) per sample, and the ratio is exact. Other pairs fall back to rubato's asynchronous
//! sinc resampler (256 taps, cubic interpolation between 256 oversampled points). Both work on
//! chunks, so a decoder can feed it packet by packet and never hold the source-rate PCM whole.

use rubato::audioadapter_buffers::direct::SequentialSliceOfVecs;
use rubato::{
    Async, Fft, FixedAsync, FixedSync, Indexing, Resampler, SincInterpolationParameters,
    SincInterpolationType, WindowFunction,
};

use crate::pcm::Pcm;

/// Input frames per sinc-resampler call: large enough to amortise the call, small enough to
/// keep the working set in cache.
const CHUNK_FRAMES: usize = 1024;
/// Taps of the windowed sinc filter (a multiple of 8, as rubato requires).
const SINC_LEN: usize = 256;
/// Smallest FFT block (frames, on the shorter side) the FFT path uses: its filter has as many
/// taps as the input block, and the cutoff moves towards Nyquist as the block grows.
const FFT_BLOCK_MIN: usize = 1024;
/// Largest FFT block (frames, either side): rate pairs whose smallest exact block is longer
/// (nearly coprime rates such as 44 101 → 44 100) use the sinc path instead.
const FFT_BLOCK_MAX: usize = 16_384;
/// FFT blocks per resampler call.
const FFT_BLOCKS_PER_CALL: usize = 2;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResampleError {
    #[error("cannot resample {from} Hz to {to} Hz with {channels} channel(s): {reason}")]
    Construction {
        from: u32,
        to: u32,
        channels: usize,
        reason: String,
    },
    #[error("resampler expected {expected} channel(s), got {actual}")]
    ChannelMismatch { expected: usize, actual: usize },
    #[error("channels differ in length ({0} vs {1} frames)")]
    RaggedChannels(usize, usize),
    #[error("resampling failed: {0}")]
    Process(String),
}

/// A streaming resampler: [`push`](Self::push) planar chunks of any length, then
/// [`finish`](Self::finish). The output is aligned with the input (the filter's delay is
/// trimmed) and has exactly `round(input_frames * to / from)` frames in all.
pub struct StreamResampler {
    resampler: Box<dyn Resampler<f32>>,
    from_rate: u32,
    to_rate: u32,
    /// Input received but not yet consumed by the resampler (at most one chunk).
    pending: Vec<Vec<f32>>,
    /// One output chunk, reused.
    scratch: Vec<Vec<f32>>,
    /// Output frames still to drop: the filter's startup delay.
    delay_left: usize,
    frames_in: u64,
    frames_out: u64,
}

impl std::fmt::Debug for StreamResampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamResampler")
            .field("from_rate", &self.from_rate)
            .field("to_rate", &self.to_rate)
            .field("channels", &self.pending.len())
            .field("frames_in", &self.frames_in)
            .field("frames_out", &self.frames_out)
            .finish()
    }
}

impl StreamResampler {
    pub fn new(from_rate: u32, to_rate: u32, channels: usize) -> Result<Self, ResampleError> {
        Self::with_fft_blocks(from_rate, to_rate, channels, fft_blocks(from_rate, to_rate))
    }

    /// `fft_blocks`: the FFT path's (input, output) block, or `None` for the sinc path.
    fn with_fft_blocks(
        from_rate: u32,
        to_rate: u32,
        channels: usize,
        fft_blocks: Option<(usize, usize)>,
    ) -> Result<Self, ResampleError> {
        let construction = |reason: String| ResampleError::Construction {
            from: from_rate,
            to: to_rate,
            channels,
            reason,
        };
        if from_rate == 0 || to_rate == 0 {
            return Err(construction("sample rates must be positive".into()));
        }
        if channels == 0 {
            return Err(construction("no channels".into()));
        }
        let (resampler, primer, delay_left) = match fft_blocks {
            Some((block_in, block_out)) => {
                let resampler = Fft::<f32>::new_custom(
                    from_rate as usize,
                    to_rate as usize,
                    block_in * FFT_BLOCKS_PER_CALL,
                    FFT_BLOCKS_PER_CALL,
                    channels,
                    WindowFunction::BlackmanHarris2,
                    FixedSync::Input,
                )
                .map_err(|err| construction(err.to_string()))?;
                // The filter is centred on tap `block_in / 2`, which is `block_out / 2` whole
                // output frames (both blocks are even): no primer needed to align.
                debug_assert_eq!(resampler.output_delay(), block_out / 2);
                let delay = resampler.output_delay();
                (Box::new(resampler) as Box<dyn Resampler<f32>>, 0, delay)
            }
            None => {
                let (primer, delay) = aligned_delay(from_rate, to_rate);
                let resampler = sinc_resampler(from_rate, to_rate, channels)
                    .map_err(|err| construction(err.to_string()))?;
                (
                    Box::new(resampler) as Box<dyn Resampler<f32>>,
                    primer,
                    delay,
                )
            }
        };
        let scratch = vec![vec![0.0; resampler.output_frames_max()]; channels];
        let mut pending = vec![Vec::with_capacity(2 * resampler.input_frames_max()); channels];
        for channel in &mut pending {
            channel.resize(primer, 0.0);
        }
        Ok(Self {
            resampler,
            from_rate,
            to_rate,
            pending,
            scratch,
            delay_left,
            frames_in: 0,
            frames_out: 0,
        })
    }

    pub fn channels(&self) -> usize {
        self.pending.len()
    }

    /// Feeds planar input (`input[c]` is channel `c`) and appends the output that is ready
    /// to `output` (one `Vec` per channel).
    pub fn push<S: AsRef<[f32]>>(
        &mut self,
        input: &[S],
        output: &mut [Vec<f32>],
    ) -> Result<(), ResampleError> {
        self.check_channels(input.len())?;
        self.check_channels(output.len())?;
        let frames = input.first().map_or(0, |c| c.as_ref().len());
        if let Some(other) = input
            .iter()
            .map(|c| c.as_ref().len())
            .find(|&n| n != frames)
        {
            return Err(ResampleError::RaggedChannels(frames, other));
        }
        self.frames_in += frames as u64;
        let mut offset = 0;
        while offset < frames {
            let needed = self.resampler.input_frames_next();
            let have = self.pending[0].len();
            let take = (needed - have.min(needed)).min(frames - offset);
            for (pending, channel) in self.pending.iter_mut().zip(input) {
                pending.extend_from_slice(&channel.as_ref()[offset..offset + take]);
            }
            offset += take;
            if self.pending[0].len() >= needed {
                self.run_chunk(None, output)?;
            }
        }
        Ok(())
    }

    /// Flushes the tail: after this, `output` holds exactly `round(frames_in * to / from)`
    /// frames from this resampler.
    pub fn finish(mut self, output: &mut [Vec<f32>]) -> Result<(), ResampleError> {
        self.check_channels(output.len())?;
        let ratio = f64::from(self.to_rate) / f64::from(self.from_rate);
        let expected = (self.frames_in as f64 * ratio).round() as u64;
        let mut partial = self.pending[0].len();
        while self.frames_out < expected {
            let needed = self.resampler.input_frames_next();
            for pending in &mut self.pending {
                pending.resize(needed, 0.0);
            }
            self.run_chunk(Some(partial), output)?;
            partial = 0;
        }
        // The last chunk may overshoot the exact length; drop what is past it.
        let excess = usize::try_from(self.frames_out - expected)
            .map_err(|_| ResampleError::Process("output length overflow".into()))?;
        for channel in output.iter_mut() {
            let keep = channel.len().saturating_sub(excess);
            channel.truncate(keep);
        }
        Ok(())
    }

    fn check_channels(&self, actual: usize) -> Result<(), ResampleError> {
        if actual == self.pending.len() {
            Ok(())
        } else {
            Err(ResampleError::ChannelMismatch {
                expected: self.pending.len(),
                actual,
            })
        }
    }

    /// Runs the resampler on `pending` (exactly one chunk; `partial` real frames of it when
    /// flushing) and appends the output past the startup delay.
    fn run_chunk(
        &mut self,
        partial: Option<usize>,
        output: &mut [Vec<f32>],
    ) -> Result<(), ResampleError> {
        let channels = self.pending.len();
        let frames = self.pending[0].len();
        let scratch_frames = self.scratch[0].len();
        let input = SequentialSliceOfVecs::new(&self.pending, channels, frames)
            .map_err(|err| ResampleError::Process(err.to_string()))?;
        let mut out = SequentialSliceOfVecs::new_mut(&mut self.scratch, channels, scratch_frames)
            .map_err(|err| ResampleError::Process(err.to_string()))?;
        let indexing = Indexing {
            partial_len: partial,
            ..Indexing::default()
        };
        let (consumed, produced) = self
            .resampler
            .process_into_buffer(&input, &mut out, Some(&indexing))
            .map_err(|err| ResampleError::Process(err.to_string()))?;
        for pending in &mut self.pending {
            pending.drain(..consumed.min(pending.len()));
        }
        let skip = self.delay_left.min(produced);
        self.delay_left -= skip;
        for (channel, scratch) in output.iter_mut().zip(&self.scratch) {
            channel.extend_from_slice(&scratch[skip..produced]);
        }
        self.frames_out += (produced - skip) as u64;
        Ok(())
    }
}

/// The FFT path's (input, output) block in frames: the smallest whole multiple of the exact
/// block `(from, to) / gcd` that is at least [`FFT_BLOCK_MIN`] on the shorter side and even on
/// both (so the filter's delay is a whole number of output frames). `None` when that block
/// would pass [`FFT_BLOCK_MAX`].
fn fft_blocks(from_rate: u32, to_rate: u32) -> Option<(usize, usize)> {
    let (from, to) = (from_rate as usize, to_rate as usize);
    if from == 0 || to == 0 {
        return None;
    }
    let gcd = greatest_common_divisor(from, to);
    let (unit_in, unit_out) = (from / gcd, to / gcd);
    let mut blocks = FFT_BLOCK_MIN.div_ceil(unit_in.min(unit_out)).max(1);
    if !(unit_in * blocks).is_multiple_of(2) || !(unit_out * blocks).is_multiple_of(2) {
        blocks += 1;
    }
    let (block_in, block_out) = (unit_in.checked_mul(blocks)?, unit_out.checked_mul(blocks)?);
    (block_in.max(block_out) <= FFT_BLOCK_MAX).then_some((block_in, block_out))
}

fn greatest_common_divisor(mut a: usize, mut b: usize) -> usize {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

fn sinc_resampler(
    from_rate: u32,
    to_rate: u32,
    channels: usize,
) -> Result<Async<f32>, rubato::ResamplerConstructionError> {
    let parameters = SincInterpolationParameters {
        sinc_len: SINC_LEN,
        f_cutoff: None,
        oversampling_factor: 256,
        interpolation: SincInterpolationType::Cubic,
        window: WindowFunction::BlackmanHarris2,
    };
    let ratio = f64::from(to_rate) / f64::from(from_rate);
    Async::<f32>::new_sinc(
        ratio,
        1.0,
        &parameters,
        CHUNK_FRAMES,
        channels,
        FixedAsync::Input,
    )
}

/// The sinc filter delays its input by half its length (`SINC_LEN / 2` input frames), which is a
/// fractional number of output frames for most ratios; dropping a rounded count would shift
/// the output by up to a sample. Priming with a few zero frames makes the delay a whole number
/// of output frames. Returns (zero frames to prime with, output frames to drop).
fn aligned_delay(from_rate: u32, to_rate: u32) -> (usize, usize) {
    let half = (SINC_LEN / 2) as u64;
    let (from, to) = (u64::from(from_rate), u64::from(to_rate));
    // Past this the ratio is too irregular to align cheaply: accept a sub-sample offset.
    const MAX_PRIMER: u64 = 4096;
    let primer = (0..=MAX_PRIMER)
        .find(|k| ((half + k) * to).is_multiple_of(from))
        .unwrap_or(0);
    // Measured: output frame `j` is centred on input frame `(j + 1) * from / to - half`.
    // Rounded: when no primer aligns it, this leaves at most half a frame of offset.
    let delay = ((half + primer) * to + from / 2) / from;
    let delay = delay.saturating_sub(1);
    (primer as usize, delay as usize)
}

/// Resamples a whole buffer (a clone when the rate already matches).
pub fn resample(pcm: &Pcm, to_rate: u32) -> Result<Pcm, ResampleError> {
    if pcm.sample_rate == to_rate {
        return Ok(pcm.clone());
    }
    let mut resampler = StreamResampler::new(pcm.sample_rate, to_rate, pcm.num_channels())?;
    let expected =
        (pcm.frames() as f64 * f64::from(to_rate) / f64::from(pcm.sample_rate)).round() as usize;
    let mut channels = vec![Vec::with_capacity(expected + CHUNK_FRAMES); pcm.num_channels()];
    resampler.push(&pcm.channels, &mut channels)?;
    resampler.finish(&mut channels)?;
    Pcm::new(to_rate, channels).map_err(|err| ResampleError::Process(err.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(rate: u32, freq: f64, frames: usize) -> Vec<f32> {
        (0..frames)
            .map(|i| {
                (0.5 * (2.0 * std::f64::consts::PI * freq * i as f64 / f64::from(rate)).sin())
                    as f32
            })
            .collect()
    }

    /// Amplitude and phase-free match of a resampled sine against the ideal one, away from
    /// the edges.
    fn max_error_against_ideal(out: &[f32], rate: u32, freq: f64) -> f32 {
        let ideal = sine(rate, freq, out.len());
        let margin = out.len() / 10;
        out[margin..out.len() - margin]
            .iter()
            .zip(&ideal[margin..])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn sine_48k_to_44k1_keeps_frequency_amplitude_and_phase() {
        let input = sine(48_000, 1000.0, 48_000);
        let pcm = Pcm::new(48_000, vec![input.clone(), input]).expect("pcm");
        let out = resample(&pcm, 44_100).expect("resample");
        assert_eq!(out.frames(), 44_100);
        assert_eq!(out.sample_rate, 44_100);
        for channel in &out.channels {
            let err = max_error_against_ideal(channel, 44_100, 1000.0);
            assert!(err < 1e-3, "max error {err}");
        }
    }

    /// Least-squares fit of `a sin + b cos` at `freq`: (amplitude, lag in output frames).
    fn fit_sine(out: &[f32], rate: u32, freq: f64) -> (f64, f64) {
        let omega = 2.0 * std::f64::consts::PI * freq / f64::from(rate);
        let (mut ss, mut sc, mut cc, mut ys, mut yc) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for (i, &y) in out
            .iter()
            .enumerate()
            .take(out.len() * 9 / 10)
            .skip(out.len() / 10)
        {
            let (s, c) = (omega * i as f64).sin_cos();
            let y = f64::from(y);
            ss += s * s;
            sc += s * c;
            cc += c * c;
            ys += y * s;
            yc += y * c;
        }
        let det = ss * cc - sc * sc;
        let a = (ys * cc - yc * sc) / det;
        let b = (yc * ss - ys * sc) / det;
        ((a * a + b * b).sqrt(), -b.atan2(a) / omega)
    }

    #[test]
    fn common_rates_keep_amplitude_and_timing() {
        for (from, to) in [
            (48_000, 44_100),
            (22_050, 44_100),
            (96_000, 44_100),
            (8_000, 44_100),
            (32_000, 44_100),
            (44_100, 48_000),
        ] {
            let input = sine(from, 1000.0, from as usize);
            let out = resample(&Pcm::new(from, vec![input]).expect("pcm"), to).expect("resample");
            assert_eq!(out.frames(), to as usize);
            let (amplitude, lag) = fit_sine(&out.channels[0], to, 1000.0);
            assert!(
                (amplitude - 0.5).abs() < 1e-4,
                "{from}->{to}: amplitude {amplitude}"
            );
            assert!(lag.abs() < 0.05, "{from}->{to}: lag {lag} frames");
        }
    }

    #[test]
    fn chunked_pushes_equal_one_push() {
        let input = sine(22_050, 440.0, 10_000);
        let whole = resample(&Pcm::new(22_050, vec![input.clone()]).expect("pcm"), 44_100)
            .expect("resample");
        let mut resampler = StreamResampler::new(22_050, 44_100, 1).expect("new");
        let mut out = vec![Vec::new()];
        for piece in input.chunks(333) {
            resampler.push(&[piece], &mut out).expect("push");
        }
        resampler.finish(&mut out).expect("finish");
        assert_eq!(out[0], whole.channels[0]);
        assert_eq!(out[0].len(), 20_000);
    }

    #[test]
    fn content_above_the_new_nyquist_is_removed() {
        // 21 kHz at 48 kHz cannot exist at 22.05 kHz: it must be filtered, not folded back.
        let input = sine(48_000, 21_000.0, 48_000);
        let out = resample(&Pcm::new(48_000, vec![input]).expect("pcm"), 22_050).expect("resample");
        let margin = out.frames() / 10;
        let peak = out.channels[0][margin..out.frames() - margin]
            .iter()
            .fold(0.0_f32, |p, s| p.max(s.abs()));
        assert!(peak < 1e-3, "alias peak {peak}");
    }

    #[test]
    fn short_and_empty_inputs_have_exact_lengths() {
        for frames in [0, 1, 7, 1023, 1024, 1025] {
            let pcm = Pcm::new(48_000, vec![vec![0.25; frames]; 2]).expect("pcm");
            let out = resample(&pcm, 44_100).expect("resample");
            let expected = (frames as f64 * 44_100.0 / 48_000.0).round() as usize;
            assert_eq!(out.frames(), expected, "input {frames}");
        }
    }

    #[test]
    fn wrong_channel_count_is_an_error() {
        let mut resampler = StreamResampler::new(48_000, 44_100, 2).expect("new");
        let err = resampler
            .push(&[vec![0.0_f32; 10]], &mut [Vec::new(), Vec::new()])
            .unwrap_err();
        assert!(matches!(
            err,
            ResampleError::ChannelMismatch {
                expected: 2,
                actual: 1
            }
        ));
        assert!(StreamResampler::new(0, 44_100, 2).is_err());
    }

    /// Whole-buffer resampling through a chosen path.
    fn resample_with(pcm: &Pcm, to_rate: u32, fft: bool) -> Pcm {
        let blocks = if fft {
            fft_blocks(pcm.sample_rate, to_rate)
        } else {
            None
        };
        let mut resampler =
            StreamResampler::with_fft_blocks(pcm.sample_rate, to_rate, pcm.num_channels(), blocks)
                .expect("new");
        let mut out = vec![Vec::new(); pcm.num_channels()];
        resampler.push(&pcm.channels, &mut out).expect("push");
        resampler.finish(&mut out).expect("finish");
        Pcm::new(to_rate, out).expect("pcm")
    }

    #[test]
    fn sinc_fallback_keeps_amplitude_and_timing() {
        // Nearly coprime rates have no short exact block: the sinc path takes them.
        assert_eq!(fft_blocks(44_101, 44_100), None);
        let input = sine(44_101, 1000.0, 44_101);
        let out = resample(&Pcm::new(44_101, vec![input]).expect("pcm"), 44_100).expect("resample");
        assert_eq!(out.frames(), 44_100);
        let (amplitude, lag) = fit_sine(&out.channels[0], 44_100, 1000.0);
        assert!((amplitude - 0.5).abs() < 1e-4, "amplitude {amplitude}");
        assert!(lag.abs() < 0.05, "lag {lag} frames");
    }

    /// Quality and speed of both paths, 48 kHz -> 44.1 kHz (run on demand:
    /// `cargo test --release -p pipeline resample_quality_report -- --ignored --nocapture`).
    /// Passband: gain of 0.5-amplitude sines from 20 Hz to 20 kHz. Stopband: the largest output
    /// (RMS, relative to the input's) of sines from 22.1 kHz to 23.9 kHz, which cannot exist at
    /// 44.1 kHz. Speed: four minutes of stereo noise.
    #[test]
    #[ignore = "measurement, prints a report"]
    fn resample_quality_report() {
        let (from, to) = (48_000, 44_100);
        for fft in [false, true] {
            let mut gains_db = Vec::new();
            let mut lag_max = 0.0_f64;
            let mut freq = 20.0;
            while freq <= 20_000.0 {
                let pcm = Pcm::new(from, vec![sine(from, freq, from as usize)]).expect("pcm");
                let out = resample_with(&pcm, to, fft);
                let (amplitude, lag) = fit_sine(&out.channels[0], to, freq);
                gains_db.push((freq, 20.0 * (amplitude / 0.5).log10()));
                if freq <= 18_000.0 {
                    lag_max = lag_max.max(lag.abs());
                }
                freq *= 1.05;
            }
            gains_db.push((20_000.0, {
                let pcm = Pcm::new(from, vec![sine(from, 20_000.0, from as usize)]).expect("pcm");
                let (amplitude, _) =
                    fit_sine(&resample_with(&pcm, to, fft).channels[0], to, 20_000.0);
                20.0 * (amplitude / 0.5).log10()
            }));
            let ripple = |limit: f64| {
                let in_band = gains_db
                    .iter()
                    .filter(|(f, _)| *f <= limit)
                    .map(|(_, g)| *g);
                let max = in_band.clone().fold(f64::MIN, f64::max);
                let min = in_band.fold(f64::MAX, f64::min);
                (min, max)
            };
            let mut stop_worst = f64::MIN;
            let mut freq = 22_100.0;
            while freq < 24_000.0 {
                let pcm = Pcm::new(from, vec![sine(from, freq, from as usize)]).expect("pcm");
                let out = resample_with(&pcm, to, fft);
                let n = out.frames();
                let middle = &out.channels[0][n / 10..n * 9 / 10];
                let rms = (middle.iter().map(|s| f64::from(*s).powi(2)).sum::<f64>()
                    / middle.len() as f64)
                    .sqrt();
                stop_worst = stop_worst.max(20.0 * (rms / (0.5 / 2.0_f64.sqrt())).log10());
                freq += 100.0;
            }
            let frames = 240 * from as usize;
            let mut state = 0x2545_f491_u32;
            let mut noise = || {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state as f32 / u32::MAX as f32) - 0.5
            };
            let channels: Vec<Vec<f32>> = (0..2)
                .map(|_| (0..frames).map(|_| noise()).collect())
                .collect();
            let pcm = Pcm::new(from, channels).expect("pcm");
            let started = std::time::Instant::now();
            let out = resample_with(&pcm, to, fft);
            let elapsed = started.elapsed();
            let (min_20k, max_20k) = ripple(20_000.0);
            let (min_18k, max_18k) = ripple(18_000.0);
            println!(
                "{}: passband 20 Hz-18 kHz {min_18k:+.5}..{max_18k:+.5} dB, 20 Hz-20 kHz \
                 {min_20k:+.5}..{max_20k:+.5} dB, gain at 20 kHz {:+.3} dB; lag <= {lag_max:.4} \
                 frames; stopband (22.1-23.9 kHz) worst {stop_worst:.1} dB; 4 min stereo in \
                 {:.3} s ({} frames out)",
                if fft { "fft " } else { "sinc" },
                gains_db.last().map_or(0.0, |(_, g)| *g),
                elapsed.as_secs_f64(),
                out.frames(),
            );
        }
    }
}
