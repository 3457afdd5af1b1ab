//! MDX-Net models as the community distributes them (KUIELab / UVR `ConvTDFNet`): the graph
//! takes `[batch, 4, dim_f, dim_t]` — real and imaginary parts of the two channels'
//! spectrograms (`[ch0 re, ch0 im, ch1 re, ch1 im]`), the lowest `dim_f` bins, `dim_t`
//! frames — and returns the target source's spectrogram in the same layout.
//!
//! Chunking is the reference `demix`: the mix is zero-padded by `n_fft / 2` on both sides and
//! cut into chunks of `hop * (dim_t - 1)` samples that advance by that minus `n_fft`; each
//! chunk is STFT'd on its own (centred, the manifest's pad mode — torch's default `reflect`),
//! run, inverted with zeros above `dim_f`, and its middle (`n_fft / 2` trimmed per side) is
//! the target for those samples. The target is scaled by `compensate`; every other source
//! is the mix minus the target.

use crate::batch::BatchedGraph;
use crate::manifest::{Manifest, MaskSpec};
use crate::runtime::RuntimeOptions;
use crate::stft::{Complex32, Stft};
use crate::{Listener, SeparateError};

use super::graph::{model_error, single_graph, stft_error};

#[derive(Debug)]
pub struct MdxModel {
    name: String,
    graph: BatchedGraph,
    stft: Stft,
    sources: usize,
    target: usize,
    dim_f: usize,
    dim_t: usize,
    compensate: f32,
}

/// Real and imaginary planes of two channels.
const DIM_C: usize = 4;

impl MdxModel {
    pub fn load(manifest: &Manifest, options: &RuntimeOptions) -> Result<Self, SeparateError> {
        let Some(MaskSpec::Mdx {
            target,
            dim_f,
            dim_t,
            batch,
            compensate,
        }) = manifest.mask.clone()
        else {
            return Err(model_error(&manifest.name, "not an MDX-Net manifest"));
        };
        let target = manifest
            .sources
            .iter()
            .position(|s| *s == target)
            .ok_or_else(|| {
                model_error(&manifest.name, format!("target {target:?} is not a source"))
            })?;
        let (graph, stft) = single_graph(manifest, options, "MDX-Net", 1, batch)?;
        Ok(Self {
            name: manifest.name.clone(),
            graph,
            stft,
            sources: manifest.sources.len(),
            target,
            dim_f,
            dim_t,
            compensate,
        })
    }

    /// The executor of its graph (its batch size and totals).
    pub fn graph(&self) -> &BatchedGraph {
        &self.graph
    }

    fn chunk_size(&self) -> usize {
        self.stft.config().hop * (self.dim_t - 1)
    }

    fn trim(&self) -> usize {
        self.stft.config().n_fft / 2
    }

    pub fn separate(
        &self,
        channels: &[Vec<f32>],
        listener: &mut dyn Listener,
    ) -> Result<Vec<Vec<Vec<f32>>>, SeparateError> {
        if channels.len() != 2 {
            return Err(model_error(
                &self.name,
                format!("takes 2 channels, got {}", channels.len()),
            ));
        }
        let len = channels[0].len();
        let (chunk_size, trim) = (self.chunk_size(), self.trim());
        let step = chunk_size - 2 * trim;
        let chunks = len.div_ceil(step);
        // A window of chunks at a time, as many as a graph run holds; the runs pack the
        // windows of every job on the model.
        let window = self.graph.capacity();
        let windows = chunks.div_ceil(window);
        let bins = self.stft.bins();
        let (dim_f, dim_t) = (self.dim_f, self.dim_t);
        let plane = dim_f * dim_t;
        let row_shape = [DIM_C, dim_f, dim_t];

        let mut target = vec![vec![0.0_f32; len]; 2];
        let mut chunk_signal = vec![0.0_f32; chunk_size];
        let mut spectrum = vec![Complex32::new(0.0, 0.0); dim_t * bins];

        listener.progress(0, windows);
        for window_index in 0..windows {
            if listener.cancelled() {
                return Err(SeparateError::Cancelled);
            }
            let first_chunk = window_index * window;
            let n_chunks = window.min(chunks - first_chunk);
            let mut rows = Vec::with_capacity(n_chunks);
            for k in 0..n_chunks {
                let mut input = vec![0.0_f32; DIM_C * plane];
                for (c, signal) in channels.iter().enumerate() {
                    self.fill_chunk(signal, first_chunk + k, &mut chunk_signal);
                    self.stft
                        .forward_frames(&chunk_signal, 0..dim_t, &mut spectrum)
                        .map_err(|e| stft_error(&self.name, e))?;
                    let re_base = 2 * c * plane;
                    let im_base = re_base + plane;
                    for t in 0..dim_t {
                        for f in 0..dim_f {
                            let z = spectrum[t * bins + f];
                            input[re_base + f * dim_t + t] = z.re;
                            input[im_base + f * dim_t + t] = z.im;
                        }
                    }
                }
                rows.push(vec![input]);
            }
            let outputs = self.graph.run_rows(&[row_shape.to_vec()], rows)?;
            for (k, row) in outputs.iter().enumerate() {
                let estimate = row
                    .shaped(0, &row_shape)
                    .map_err(|message| model_error(&self.name, message))?;
                let chunk = first_chunk + k;
                for (c, out) in target.iter_mut().enumerate() {
                    let re_base = 2 * c * plane;
                    let im_base = re_base + plane;
                    spectrum.fill(Complex32::new(0.0, 0.0));
                    for t in 0..dim_t {
                        for f in 0..dim_f {
                            spectrum[t * bins + f] = Complex32::new(
                                estimate[re_base + f * dim_t + t],
                                estimate[im_base + f * dim_t + t],
                            );
                        }
                    }
                    let mut ola =
                        crate::stft::OverlapAdd::new(self.stft.clone(), dim_t, Some(chunk_size))
                            .map_err(|e| stft_error(&self.name, e))?;
                    ola.add_frames(0, &spectrum)
                        .map_err(|e| stft_error(&self.name, e))?;
                    let wave = ola.finish().map_err(|e| stft_error(&self.name, e))?;
                    // The chunk's middle covers samples chunk*step .. chunk*step + step.
                    let start = chunk * step;
                    let end = (start + step).min(len);
                    for (o, w) in out[start..end].iter_mut().zip(&wave[trim..]) {
                        *o = w * self.compensate;
                    }
                }
            }
            listener.progress(window_index + 1, windows);
        }

        let residual: Vec<Vec<f32>> = channels
            .iter()
            .zip(&target)
            .map(|(mix, t)| mix.iter().zip(t).map(|(m, t)| m - t).collect())
            .collect();
        let mut result = vec![residual; self.sources];
        result[self.target] = target;
        Ok(result)
    }

    /// Samples `chunk * step - trim .. + chunk_size` of `signal`, zeros outside it.
    fn fill_chunk(&self, signal: &[f32], chunk: usize, out: &mut [f32]) {
        let step = self.chunk_size() - 2 * self.trim();
        let start = (chunk * step) as isize - self.trim() as isize;
        for (i, o) in out.iter_mut().enumerate() {
            let at = start + i as isize;
            *o = if at >= 0 && (at as usize) < signal.len() {
                signal[at as usize]
            } else {
                0.0
            };
        }
    }
}
