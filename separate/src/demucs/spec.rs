//! HTDemucs's own STFT framing around the network: `_spec` + `_magnitude` (complex as
//! channels) going in, `_mask` + `_ispec` coming out, with exactly its padding and cropping.

use crate::stft::{Complex32, PadMode, Stft, StftConfig, StftError};

/// The spectrogram framing of an HTDemucs graph exported for `length`-sample chunks.
#[derive(Debug, Clone)]
pub struct HtSpec {
    stft: Stft,
    /// `hop_length` (`nfft / 4`).
    hop: usize,
    /// Samples per chunk the graph takes.
    length: usize,
    /// `ceil(length / hop)`: frames the graph sees.
    frames: usize,
    /// `nfft / 2`: bins the graph sees (the Nyquist bin is dropped).
    bins: usize,
}

impl HtSpec {
    /// `n_fft` must be 4 × `hop` (HTDemucs asserts it); the STFT is torch's, centred with
    /// reflection and `normalized=True`, as `demucs.spec.spectro`.
    pub fn new(n_fft: usize, hop: usize, length: usize) -> Result<Self, StftError> {
        if hop == 0 || n_fft != 4 * hop {
            return Err(StftError::InvalidConfig(format!(
                "HTDemucs needs n_fft = 4 × hop, got n_fft {n_fft}, hop {hop}"
            )));
        }
        let pad = hop / 2 * 3;
        // Reflect padding needs more samples than it mirrors (the graph's segment is seconds).
        if length <= pad + hop {
            return Err(StftError::SignalTooShort {
                len: length,
                reason: format!(
                    "an HTDemucs chunk must be longer than {} samples",
                    pad + hop
                ),
            });
        }
        let stft = Stft::new(StftConfig {
            n_fft,
            hop,
            center: true,
            pad_mode: PadMode::Reflect,
            normalized: true,
        })?;
        Ok(Self {
            stft,
            hop,
            length,
            frames: length.div_ceil(hop),
            bins: n_fft / 2,
        })
    }

    pub fn frames(&self) -> usize {
        self.frames
    }

    pub fn bins(&self) -> usize {
        self.bins
    }

    /// `hop // 2 * 3`, the extra padding `_spec` adds so frames align with the time branch.
    fn pad(&self) -> usize {
        self.hop / 2 * 3
    }

    /// `_magnitude(_spec(x))` of one channel into the two cac planes `re` and `im`
    /// (each `bins × frames`, bin-major as the graph's `[B, 2C, F, T]` input).
    /// `scratch` is reused between calls to avoid allocating per chunk.
    pub fn forward(
        &self,
        channel: &[f32],
        re: &mut [f32],
        im: &mut [f32],
        scratch: &mut SpecScratch,
    ) -> Result<(), StftError> {
        if channel.len() != self.length
            || re.len() != self.bins * self.frames
            || im.len() != re.len()
        {
            return Err(StftError::Shape(format!(
                "chunk of {} samples into {}+{} values; the graph takes {} samples, {}×{}",
                channel.len(),
                re.len(),
                im.len(),
                self.length,
                self.bins,
                self.frames
            )));
        }
        // pad1d(x, (pad, pad + le * hl - length), mode="reflect")
        let pad = self.pad();
        let right = pad + self.frames * self.hop - self.length;
        let padded = &mut scratch.padded;
        padded.clear();
        padded.extend((1..=pad).rev().map(|i| channel[i]));
        padded.extend_from_slice(channel);
        let last = self.length - 1;
        padded.extend((1..=right).map(|i| channel[last - i]));
        // spectro(...)[..., :-1, :][..., 2:2+le]: frames 2.. of the centred STFT.
        let full_bins = self.stft.bins();
        scratch
            .frames
            .resize(self.frames * full_bins, Complex32::new(0.0, 0.0));
        self.stft
            .forward_frames(padded, 2..2 + self.frames, &mut scratch.frames)?;
        for (t, frame) in scratch.frames.chunks_exact(full_bins).enumerate() {
            for (f, value) in frame[..self.bins].iter().enumerate() {
                re[f * self.frames + t] = value.re;
                im[f * self.frames + t] = value.im;
            }
        }
        Ok(())
    }

    /// `_ispec(_mask(m), length)` of one source channel, given its cac planes (bin-major,
    /// `bins × frames` each): adds the dropped Nyquist bin and two frames each side as zeros,
    /// inverts with `length = hop * ceil(length / hop) + 2 * pad`, and keeps `[pad, pad + length)`.
    pub fn inverse(
        &self,
        re: &[f32],
        im: &[f32],
        out: &mut [f32],
        scratch: &mut SpecScratch,
    ) -> Result<(), StftError> {
        if out.len() != self.length || re.len() != self.bins * self.frames || im.len() != re.len() {
            return Err(StftError::Shape(format!(
                "{}+{} values into {} samples; the graph gives {}×{} for {} samples",
                re.len(),
                im.len(),
                out.len(),
                self.bins,
                self.frames,
                self.length
            )));
        }
        let full_bins = self.stft.bins();
        let frames = &mut scratch.frames;
        frames.clear();
        frames.resize(self.frames * full_bins, Complex32::new(0.0, 0.0));
        for (t, frame) in frames.chunks_exact_mut(full_bins).enumerate() {
            for (f, value) in frame[..self.bins].iter_mut().enumerate() {
                *value = Complex32::new(re[f * self.frames + t], im[f * self.frames + t]);
            }
        }
        let pad = self.pad();
        let inverse_length = self.hop * self.frames + 2 * pad;
        let mut ola =
            crate::stft::OverlapAdd::new(self.stft.clone(), self.frames + 4, Some(inverse_length))?;
        // The two zero frames on each side add nothing but count in the window envelope.
        ola.add_frames(2, frames)?;
        let signal = ola.finish()?;
        out.copy_from_slice(&signal[pad..pad + self.length]);
        Ok(())
    }
}

/// Buffers [`HtSpec`] reuses between chunks.
#[derive(Debug, Default)]
pub struct SpecScratch {
    padded: Vec<f32>,
    frames: Vec<Complex32>,
}
