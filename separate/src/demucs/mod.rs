//! The `demucs` family: HTDemucs (v4) graphs exported without their STFT/iSTFT by
//! `tools/demucs/export.py`. Rust does what Python does around the network, in the same
//! order and with the same arithmetic:
//! - `demucs.api.Separator`: normalise the mix by the mean / std of its mono sum, and undo it;
//! - `demucs.apply.apply_model`: bags (per-source weights), shifts, split into overlapping
//!   chunks ([`chunks`]) weighted by a transition triangle;
//! - `HTDemucs.forward` around the graph: `_spec`/`_magnitude` and `_mask`/`_ispec` ([`spec`]),
//!   and the sum of the frequency and time branches.
//!
//! Memory: chunks are normalised as they are read and their outputs added straight into the
//! output stems with their final weight, so a run holds the input, the output and one batch
//! of chunks — nothing else grows with the track's length.

pub mod chunks;
pub mod spec;

use std::time::{Duration, Instant};

use audio::ErrorCode;

use crate::batch::BatchedGraph;
use crate::manifest::Manifest;
use crate::runtime::{OnnxModel, RuntimeOptions};
use crate::{Listener, SeparateError};
use chunks::{Chunk, ChunkPlan, ShiftRng, read_padded};
use spec::{HtSpec, SpecScratch};

/// More shifts than this only multiply the run time (demucs's own CLI suggests up to 10).
pub const MAX_SHIFTS: usize = 20;

/// How `apply_model` is called (the defaults are `demucs.separate`'s).
#[derive(Debug, Clone, PartialEq)]
pub struct DemucsOptions {
    /// Seconds per chunk; `None`: the model's segment. May not exceed it (HTDemucs cannot).
    pub segment: Option<f64>,
    /// Fraction of a chunk overlapping the next, `[0, 1)`.
    pub overlap: f64,
    /// Random time shifts averaged; 0 = none (the only setting that matches Python exactly:
    /// the offsets come from a seeded generator, not Python's `random`).
    pub shifts: usize,
    pub seed: u64,
    /// `transition_power` of the chunk weights, ≥ 1.
    pub transition_power: f64,
    /// Chunks this job hands the model at a time (its window); `None`: as many as one graph
    /// run holds ([`RuntimeOptions::batch_size`]). The runs themselves pack the windows of
    /// every job on the model ([`crate::batch`]).
    pub batch_size: Option<usize>,
}

impl Default for DemucsOptions {
    fn default() -> Self {
        Self {
            segment: None,
            overlap: 0.25,
            shifts: 0,
            seed: 0,
            transition_power: 1.0,
            batch_size: None,
        }
    }
}

impl DemucsOptions {
    /// From the family-independent options. The f32 values go through their shortest decimal
    /// form so that `0.7` means Python's `0.7` (and `int(0.7 * 44100)` is 30870, not 30869).
    pub fn from_separate(options: &crate::SeparateOptions) -> Self {
        let decimal = |x: f32| x.to_string().parse::<f64>().unwrap_or(f64::from(x));
        Self {
            segment: options.segment.map(decimal),
            overlap: decimal(options.overlap),
            shifts: options.shifts as usize,
            seed: options.seed,
            ..Self::default()
        }
    }
}

/// Where the time of a run went (summed over chunks).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DemucsTimings {
    /// Reading + normalising chunks, `_spec` and `_ispec`.
    pub stft: Duration,
    /// The graph runs.
    pub model: Duration,
    /// Weighting the chunk outputs into the stems, and the final de-normalisation.
    pub overlap_add: Duration,
    /// Chunks run (over every model of the bag and every shift).
    pub chunks: usize,
}

/// Separated sources in manifest order, each planar (channels × frames).
pub type Stems = Vec<Vec<Vec<f32>>>;

/// One graph of the bag and its per-source weights.
#[derive(Debug)]
struct BagMember {
    graph: BatchedGraph,
    weights: Vec<f32>,
}

/// A loaded Demucs model (one graph, or a bag of graphs with per-source weights).
#[derive(Debug)]
pub struct DemucsModel {
    name: String,
    sources: usize,
    channels: usize,
    sample_rate: u32,
    /// The chunk length every graph was exported for (`int(segment * samplerate)`).
    segment_samples: usize,
    spec: HtSpec,
    members: Vec<BagMember>,
    /// `totals[k]` of `apply_model`'s bag branch: the sum of source k's weights.
    totals: Vec<f32>,
}

fn model_error(name: &str, message: impl Into<String>) -> SeparateError {
    SeparateError::Model {
        model: name.to_string(),
        message: message.into(),
    }
}

fn invalid(message: String) -> SeparateError {
    SeparateError::InvalidOption(message)
}

impl DemucsModel {
    pub fn load(manifest: &Manifest, options: &RuntimeOptions) -> Result<Self, SeparateError> {
        let name = &manifest.name;
        // A manifest that does not describe a runnable HTDemucs is a load failure.
        let bad = |message: String| {
            SeparateError::Manifest(crate::manifest::ManifestError::Invalid {
                path: manifest.dir.join("manifest.toml"),
                message,
            })
        };
        let segment_samples = match manifest
            .demucs
            .as_ref()
            .and_then(|t| t.get("segment_samples"))
        {
            Some(value) => value
                .as_integer()
                .and_then(|v| usize::try_from(v).ok())
                .ok_or_else(|| {
                    bad(format!(
                        "[demucs] segment_samples must be a count, got {value}"
                    ))
                })?,
            None => {
                let segment = manifest.segment.ok_or_else(|| {
                    bad("a demucs manifest needs `segment` or [demucs] segment_samples".into())
                })?;
                (f64::from(segment) * f64::from(manifest.sample_rate)) as usize
            }
        };
        let stft = &manifest.stft;
        if !(stft.center && stft.normalized && stft.pad_mode == crate::stft::PadMode::Reflect) {
            return Err(bad(
                "HTDemucs's STFT is centred, reflect-padded and normalized; the manifest says otherwise"
                    .into(),
            ));
        }
        let spec =
            HtSpec::new(stft.n_fft, stft.hop, segment_samples).map_err(|e| bad(e.to_string()))?;
        let sources = manifest.sources.len();
        let weights: Vec<Vec<f32>> = manifest
            .files
            .iter()
            .map(|file| file.weights.clone().unwrap_or_else(|| vec![1.0; sources]))
            .collect();
        // `totals[k]` of apply_model's bag branch; checked before any graph is loaded.
        let totals: Vec<f32> = (0..sources)
            .map(|k| weights.iter().map(|w| w[k]).sum())
            .collect();
        if let Some(k) = totals.iter().position(|&t| !(t.is_finite() && t > 0.0)) {
            return Err(bad(format!(
                "the bag weights of source {:?} sum to {}; every source needs a positive total",
                manifest.sources[k], totals[k]
            )));
        }
        let mut members = Vec::with_capacity(manifest.files.len());
        for (file, weights) in manifest.files.iter().zip(weights) {
            let graph = OnnxModel::load(&manifest.file_path(file), options)?;
            if graph.input_names().len() != 2 || graph.output_names().len() != 2 {
                return Err(bad(format!(
                    "{} is not an exported HTDemucs core (inputs mix, spec; outputs spec_out, wave_out)",
                    graph.path().display()
                )));
            }
            let graph = BatchedGraph::new(name.clone(), graph, options.batch_capacity());
            members.push(BagMember { graph, weights });
        }
        Ok(Self {
            name: name.clone(),
            sources,
            channels: manifest.audio_channels,
            sample_rate: manifest.sample_rate,
            segment_samples,
            spec,
            members,
            totals,
        })
    }

    /// The graphs of the bag, each with the batch executor every job on this model shares.
    pub fn graphs(&self) -> impl Iterator<Item = &BatchedGraph> {
        self.members.iter().map(|m| &m.graph)
    }

    /// Chunk length for `options`: `int(segment * samplerate)`, at most the graph's.
    fn segment_length(&self, options: &DemucsOptions) -> Result<usize, SeparateError> {
        let Some(segment) = options.segment else {
            return Ok(self.segment_samples);
        };
        let samples = (segment * f64::from(self.sample_rate)) as usize;
        let model_seconds = self.segment_samples as f64 / f64::from(self.sample_rate);
        if !(segment.is_finite() && segment > 0.0) || samples == 0 {
            return Err(invalid(format!("segment must be positive, got {segment}")));
        }
        if samples > self.segment_samples {
            return Err(invalid(format!(
                "segment {segment} s is longer than model {}'s {model_seconds} s; HTDemucs cannot run longer chunks",
                self.name
            )));
        }
        Ok(samples)
    }

    fn check(
        &self,
        channels: &[Vec<f32>],
        options: &DemucsOptions,
    ) -> Result<usize, SeparateError> {
        if !(options.overlap.is_finite() && (0.0..1.0).contains(&options.overlap)) {
            return Err(invalid(format!(
                "overlap must be in [0, 1), got {}",
                options.overlap
            )));
        }
        if !(options.transition_power >= 1.0 && options.transition_power.is_finite()) {
            return Err(invalid(format!(
                "transition_power must be ≥ 1, got {}",
                options.transition_power
            )));
        }
        if options.shifts > MAX_SHIFTS {
            return Err(invalid(format!(
                "shifts must be at most {MAX_SHIFTS}, got {}",
                options.shifts
            )));
        }
        if options.batch_size == Some(0) {
            return Err(invalid("batch_size must be at least 1".into()));
        }
        if channels.len() != self.channels {
            return Err(SeparateError::Input {
                code: ErrorCode::UnsupportedFormat,
                message: format!(
                    "model {} takes {} channels, got {}",
                    self.name,
                    self.channels,
                    channels.len()
                ),
            });
        }
        let frames = channels.first().map_or(0, Vec::len);
        if frames == 0 || channels.iter().any(|c| c.len() != frames) {
            return Err(SeparateError::Input {
                code: ErrorCode::EmptyInput,
                message: "the audio is empty or its channels differ in length".into(),
            });
        }
        if frames < 2 {
            // The normalisation divides by the std of the samples, undefined for one.
            return Err(SeparateError::Input {
                code: ErrorCode::TooShort,
                message: "demucs needs at least two samples".into(),
            });
        }
        Ok(frames)
    }

    /// Separates planar `channels` (the model's channel count and rate) into every source,
    /// in manifest order, each planar and as long as the input.
    pub fn separate(
        &self,
        channels: &[Vec<f32>],
        options: &DemucsOptions,
        listener: &mut dyn Listener,
    ) -> Result<Stems, SeparateError> {
        self.separate_timed(channels, options, listener)
            .map(|(stems, _)| stems)
    }

    /// [`DemucsModel::separate`], also saying where the time went.
    pub fn separate_timed(
        &self,
        channels: &[Vec<f32>],
        options: &DemucsOptions,
        listener: &mut dyn Listener,
    ) -> Result<(Stems, DemucsTimings), SeparateError> {
        let frames = self.check(channels, options)?;
        let segment_length = self.segment_length(options)?;
        let plan = ChunkPlan::new(segment_length, options.overlap, options.transition_power);
        let batch_size = options
            .batch_size
            .or_else(|| self.members.first().map(|m| m.graph.capacity()))
            .unwrap_or(1);
        let (mean, std) = normalisation(channels);

        // The shifts of every bag member, in apply_model's order: (origin, length) of each pass
        // in mix coordinates. Chunks are generated pass by pass, never listed for the track.
        let max_shift = (0.5 * f64::from(self.sample_rate)) as usize;
        let mut rng = ShiftRng::new(options.seed);
        let passes: Vec<Vec<(isize, usize)>> = self
            .members
            .iter()
            .map(|_| {
                if options.shifts == 0 {
                    return vec![(0, frames)];
                }
                (0..options.shifts)
                    .map(|_| {
                        let offset = rng.inclusive(max_shift);
                        (
                            offset as isize - max_shift as isize,
                            frames + max_shift - offset,
                        )
                    })
                    .collect()
            })
            .collect();
        let total: usize = passes
            .iter()
            .flatten()
            .map(|&(_, length)| plan.chunk_count(length))
            .sum();
        let shift_scale = 1.0 / options.shifts.max(1) as f32;

        let mut stems = vec![vec![vec![0.0f32; frames]; self.channels]; self.sources];
        let mut runner = ChunkRunner::new(self);
        let mut timings = DemucsTimings::default();
        let mut batch = Vec::with_capacity(batch_size);
        let mut done = 0;
        listener.progress(0, total);
        for (member, member_passes) in self.members.iter().zip(&passes) {
            // Final weight of each source from this member: bag weight / total, × std.
            let source_scale: Vec<f32> = (0..self.sources)
                .map(|k| member.weights[k] / self.totals[k] * shift_scale * std)
                .collect();
            for &(origin, length) in member_passes {
                let mut offsets = plan.offsets(length).peekable();
                while offsets.peek().is_some() {
                    batch.clear();
                    batch.extend(
                        offsets
                            .by_ref()
                            .take(batch_size)
                            .map(|offset| Chunk::new(&plan, origin, length, offset)),
                    );
                    if listener.cancelled() {
                        return Err(SeparateError::Cancelled);
                    }
                    runner.run(member, &batch, channels, (mean, std), &mut timings)?;
                    let started = Instant::now();
                    for (index, chunk) in batch.iter().enumerate() {
                        runner.accumulate(index, chunk, &plan, &source_scale, &mut stems);
                    }
                    timings.overlap_add += started.elapsed();
                    done += batch.len();
                    timings.chunks += batch.len();
                    listener.progress(done, total);
                }
            }
        }
        let started = Instant::now();
        for sample in stems.iter_mut().flatten().flatten() {
            *sample += mean;
        }
        timings.overlap_add += started.elapsed();
        tracing::debug!(model = %self.name, ?timings, "demucs separation done");
        Ok((stems, timings))
    }
}

/// `demucs.api.Separator`'s normalisation: mean and (unbiased) std of the mono sum, + 1e-8.
fn normalisation(channels: &[Vec<f32>]) -> (f32, f32) {
    let frames = channels[0].len();
    let count = channels.len() as f64;
    let mono = |i: usize| channels.iter().map(|c| f64::from(c[i])).sum::<f64>() / count;
    let mean = (0..frames).map(mono).sum::<f64>() / frames as f64;
    let variance = if frames > 1 {
        (0..frames).map(|i| (mono(i) - mean).powi(2)).sum::<f64>() / (frames - 1) as f64
    } else {
        f64::NAN // torch's std of one sample
    };
    (mean as f32, (variance.sqrt() as f32) + 1e-8)
}

/// Buffers for one window of chunks, reused across windows.
struct ChunkRunner<'a> {
    model: &'a DemucsModel,
    scratch: SpecScratch,
    /// Per chunk of the window, per source and channel: the summed branches, `segment_samples` long.
    outputs: Vec<f32>,
    branch: Vec<f32>,
}

impl<'a> ChunkRunner<'a> {
    fn new(model: &'a DemucsModel) -> Self {
        Self {
            model,
            scratch: SpecScratch::default(),
            outputs: Vec::new(),
            branch: vec![0.0; model.segment_samples],
        }
    }

    fn run(
        &mut self,
        member: &BagMember,
        window: &[Chunk],
        input: &[Vec<f32>],
        (mean, std): (f32, f32),
        timings: &mut DemucsTimings,
    ) -> Result<(), SeparateError> {
        let model = self.model;
        let (channels, sources, length) = (model.channels, model.sources, model.segment_samples);
        let (bins, frames) = (model.spec.bins(), model.spec.frames());
        let plane = bins * frames;
        let started = Instant::now();
        let stft_error = |e: crate::stft::StftError| model_error(&model.name, e.to_string());
        // One row per chunk: the graph's two inputs (mix, spec) without their batch axis.
        let mut rows = Vec::with_capacity(window.len());
        for chunk in window {
            let mut mix = vec![0.0f32; channels * length];
            let mut spec = vec![0.0f32; channels * 2 * plane];
            for (c, signal) in input.iter().enumerate() {
                let row = &mut mix[c * length..][..length];
                // TensorChunk.padded(valid_length), then HTDemucs.forward's zero padding up to
                // the training length (the tail of `row` stays zero).
                read_padded(
                    signal,
                    chunk.read_start,
                    &mut row[..chunk.read_length],
                    |x| (x - mean) / std,
                );
                let planes = &mut spec[c * 2 * plane..][..2 * plane];
                let (re, im) = planes.split_at_mut(plane);
                model
                    .spec
                    .forward(row, re, im, &mut self.scratch)
                    .map_err(stft_error)?;
            }
            rows.push(vec![mix, spec]);
        }
        timings.stft += started.elapsed();

        let started = Instant::now();
        let shapes = [vec![channels, length], vec![channels * 2, bins, frames]];
        let outputs = member.graph.run_rows(&shapes, rows)?;
        timings.model += started.elapsed();
        let want_spec = [sources, channels * 2, bins, frames];
        let want_wave = [sources, channels, length];

        let started = Instant::now();
        self.outputs.clear();
        self.outputs
            .resize(window.len() * sources * channels * length, 0.0);
        let row_size = sources * channels * length;
        for (row, out) in outputs.iter().zip(self.outputs.chunks_exact_mut(row_size)) {
            let shaped = |index, want: &[usize]| {
                row.shaped(index, want)
                    .map_err(|message| model_error(&model.name, message))
            };
            let spec_out = shaped(0, &want_spec)?;
            let wave_out = shaped(1, &want_wave)?;
            for (index, out) in out.chunks_exact_mut(length).enumerate() {
                // index = s * channels + c; cac planes 2c and 2c + 1 of source s.
                let planes = &spec_out[index * 2 * plane..][..2 * plane];
                let (re, im) = planes.split_at(plane);
                model
                    .spec
                    .inverse(re, im, &mut self.branch, &mut self.scratch)
                    .map_err(stft_error)?;
                let wave = &wave_out[index * length..][..length];
                for ((o, x), xt) in out.iter_mut().zip(&self.branch).zip(wave) {
                    *o = xt + x;
                }
            }
        }
        timings.stft += started.elapsed();
        Ok(())
    }

    /// Adds chunk `index` of the last batch into `stems`: `center_trim`, the transition weight
    /// divided by the pass's summed weight, and the source's final scale.
    fn accumulate(
        &self,
        index: usize,
        chunk: &Chunk,
        plan: &ChunkPlan,
        source_scale: &[f32],
        stems: &mut [Vec<Vec<f32>>],
    ) {
        let model = self.model;
        let (channels, length) = (model.channels, model.segment_samples);
        // Kept samples that land inside the mix (a shifted pass starts before it): p ≥ first.
        let first = usize::try_from(-chunk.output_start)
            .unwrap_or(0)
            .min(chunk.length);
        let at = |p: usize| (chunk.output_start + p as isize) as usize;
        let factors: Vec<f32> = (first..chunk.length)
            .map(|p| plan.weight[p] / plan.sum_weight(chunk.pass_length, chunk.pass_offset + p))
            .collect();
        for (s, stem) in stems.iter_mut().enumerate() {
            for (c, out) in stem.iter_mut().enumerate() {
                let row = &self.outputs[((index * model.sources + s) * channels + c) * length..]
                    [..length];
                let kept = &row[chunk.trim_start..chunk.trim_start + chunk.length];
                let scale = source_scale[s];
                for (p, factor) in (first..chunk.length).zip(&factors) {
                    out[at(p)] += scale * factor * kept[p];
                }
            }
        }
    }
}
