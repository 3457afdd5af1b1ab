//! `msaas run`: the whole pipeline in this process, on the embedded backends (in-memory
//! queue and job store, a temporary local-directory store, in-process events).

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use futures::StreamExt as _;
use pipeline::config::{Config, LimitsConfig};
use pipeline::job::{AudioFormat, ClipMode, Mp3Mode, OutputFormat, OutputRate, SampleFormat};
use pipeline::traits::{BackendError, BlobStore, EventKind};
use pipeline::{Backends, Job, JobId, JobOptions, JobState, StageHandler, Worker};
use tokio_util::sync::CancellationToken;

use crate::progress::RunProgress;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Audio files to separate (mp3, flac, wav, ogg, m4a/aac, aiff, ...).
    #[arg(required = true, value_name = "INPUT")]
    inputs: Vec<PathBuf>,
    /// Output directory; stems are written to DIR/<input name>/<stem>.<ext>.
    #[arg(long, short, value_name = "DIR", default_value = "stems")]
    out: PathBuf,
    /// Model name (see `msaas models`) or path to a model manifest.
    #[arg(long, short = 'n', value_name = "NAME|PATH")]
    model: Option<String>,
    /// Only these stems, comma-separated (default: all of the model's).
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    stems: Option<Vec<String>>,
    /// This stem and the sum of the others ("no_<stem>"), like demucs --two-stems.
    #[arg(long, value_name = "STEM")]
    two_stems: Option<String>,
    /// Container of the stems.
    #[arg(long, value_name = "wav|flac|mp3", default_value = "wav")]
    format: AudioFormat,
    /// Sample format of wav / flac stems: i16, i24 or f32 (wav only).
    #[arg(long, value_name = "FMT", default_value = "i16")]
    wav_format: SampleFormat,
    /// MP3 constant bit rate in kbit/s (128, 160, 192, 224, 256, 320).
    #[arg(long, value_name = "KBPS", conflicts_with = "mp3_vbr")]
    mp3_bitrate: Option<u16>,
    /// MP3 variable bit rate quality, 0 (best) to 9.
    #[arg(long, value_name = "Q")]
    mp3_vbr: Option<u8>,
    /// What to do when stems would clip: rescale (all stems together), clamp, none (f32 wav only).
    #[arg(long, value_name = "MODE", default_value = "rescale")]
    clip_mode: ClipMode,
    /// Write stems at the source's sample rate and channel count instead of the model's.
    #[arg(long)]
    source_rate: bool,
    /// Chunk length in seconds (default: the model's).
    #[arg(long, value_name = "S")]
    segment: Option<f32>,
    /// Overlap between chunks, as a fraction of the segment.
    #[arg(long, value_name = "O", default_value_t = 0.25)]
    overlap: f32,
    /// Random time shifts averaged per chunk (better quality, N times slower).
    #[arg(long, value_name = "N", default_value_t = 0)]
    shifts: u32,
    /// Files worked on at once (each stage gets this many workers).
    #[arg(long, short, value_name = "N", default_value_t = 1)]
    jobs: usize,
    /// Execution provider: cpu, or cuda (ONNX Runtime's GPU build from `tools/setup --cuda`).
    #[arg(long, value_name = "cpu|cuda")]
    device: Option<String>,
    /// Threads for the model (default: all cores).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
}

/// One input that passed the up-front checks.
struct Input {
    path: PathBuf,
    /// Output folder name: the file name without its extension.
    name: String,
}

pub async fn run(config_path: Option<&Path>, args: RunArgs) -> anyhow::Result<ExitCode> {
    let mut config = Config::load(config_path)?;
    if let Some(device) = &args.device {
        config.set_device(device.parse()?);
    }
    if let Some(threads) = args.threads {
        config.models.threads = Some(threads);
    }
    config.validate()?;
    // Under bars only warnings; without a terminal, this command's own progress lines.
    let log_default = if std::io::stderr().is_terminal() {
        "warn"
    } else {
        "warn,msaas=info"
    };
    observe::init_logging(observe::LogFormat::Text, log_default)?;

    let options = job_options(&args, &config)?;
    let (inputs, mut failures) = check_inputs(&args.inputs);

    // Everything that does not depend on the input is checked before any work starts: the
    // model loads (runtime library, graph) and knows the stems asked for.
    let separate_stage =
        separate::SeparateStage::new(config.models_dir(), runtime_options(&config));
    let model = separate_stage
        .load_model(&options.model)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    model
        .output_stems(&separate::SeparateOptions::from_job(&options))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let handlers: Vec<Arc<dyn StageHandler>> = vec![
        Arc::new(decode::DecodeStage::new(decode_limits(&config.limits))),
        Arc::new(separate_stage),
        Arc::new(encode::EncodeStage::new()),
    ];

    // A private store for this run: intermediate PCM never outlives it.
    let work_dir = tempfile::Builder::new()
        .prefix("msaas-run-")
        .tempdir()
        .context("cannot create a temporary work directory")?;
    let backends = backends::embedded(work_dir.path(), config.worker.visibility_timeout())?;

    let shutdown = CancellationToken::new();
    let mut workers = tokio::task::JoinSet::new();
    for handler in &handlers {
        for n in 0..args.jobs.max(1) {
            let worker = Worker::new(
                backends.clone(),
                handler.clone(),
                config
                    .worker
                    .settings(format!("run-{}-{n}", handler.stage())),
            );
            let shutdown = shutdown.clone();
            workers.spawn(async move { worker.run(shutdown).await });
        }
    }

    let mut progress = RunProgress::new();
    let mut event_stream = backends.events.subscribe(None).await?;
    let mut submitted: BTreeMap<JobId, Input> = BTreeMap::new();
    for input in inputs {
        let job = Job::new("local", &input.name, options.clone());
        match pipeline::worker::submit_file(
            &backends,
            job,
            &input.path,
            Some(config.limits.max_input_bytes),
        )
        .await
        {
            Ok(job) => {
                progress.add_file(job.id.clone(), display_name(&input.path));
                submitted.insert(job.id, input);
            }
            Err(err) => failures.push(format!("{}: {err}", input.path.display())),
        }
    }

    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut finished: HashMap<JobId, Job> = HashMap::new();
    let mut poll = tokio::time::interval(Duration::from_millis(500));
    let mut cancelled = false;
    while finished.len() < submitted.len() {
        tokio::select! {
            _ = &mut ctrl_c => {
                cancelled = true;
                progress.println("cancelling: stopping the workers, no partial stems are written");
                break;
            }
            Some(event) = event_stream.next() => {
                progress.on_event(&event);
                let terminal = matches!(event.kind, EventKind::Done | EventKind::Failed | EventKind::Cancelled);
                if terminal && submitted.contains_key(&event.job_id) {
                    collect_finished(&backends, [&event.job_id], &mut finished, &mut progress).await?;
                }
            }
            // Events are best effort; the record is the truth, so poll it too.
            _ = poll.tick() => {
                collect_finished(&backends, submitted.keys(), &mut finished, &mut progress).await?;
            }
        }
    }
    shutdown.cancel();
    while workers.join_next().await.is_some() {}
    progress.clear();

    if cancelled {
        // The temporary store goes with `work_dir`; exported stems were written atomically.
        eprintln!("cancelled");
        return Ok(ExitCode::from(130));
    }

    for (id, input) in &submitted {
        let Some(job) = finished.get(id) else {
            continue;
        };
        match job.state {
            JobState::Done => {
                match export(&*backends.store, job, &args.out.join(&input.name)).await {
                    Ok(paths) => {
                        for path in paths {
                            println!("{}", path.display());
                        }
                    }
                    Err(err) => failures.push(format!(
                        "{}: cannot write stems: {err:#}",
                        input.path.display()
                    )),
                }
            }
            _ => {
                let reason = job
                    .error
                    .as_ref()
                    .map_or_else(|| job.state.to_string(), ToString::to_string);
                failures.push(format!("{}: {reason}", input.path.display()));
            }
        }
    }
    for failure in &failures {
        eprintln!("error: {failure}");
    }
    Ok(if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Moves the jobs among `ids` whose records are terminal into `finished`.
async fn collect_finished<'a>(
    backends: &Backends,
    ids: impl IntoIterator<Item = &'a JobId>,
    finished: &mut HashMap<JobId, Job>,
    progress: &mut RunProgress,
) -> Result<(), BackendError> {
    for id in ids {
        if finished.contains_key(id) {
            continue;
        }
        if let Some(job) = backends.jobs.get(id).await?
            && job.state.is_terminal()
        {
            progress.finish_file(id, job.state.as_str());
            finished.insert(id.clone(), job);
        }
    }
    Ok(())
}

pub(crate) fn runtime_options(config: &Config) -> separate::RuntimeOptions {
    separate::RuntimeOptions {
        device: match config.models.device {
            pipeline::config::Device::Cpu => separate::Device::Cpu,
            pipeline::config::Device::Cuda => separate::Device::Cuda { device_id: 0 },
        },
        intra_threads: config.models.threads,
        library: Some(config.ort_library()),
        batch_size: config.models.batch_size,
        device_memory_limit: config
            .models
            .device_memory_limit
            .map(|bytes| usize::try_from(bytes).unwrap_or(usize::MAX)),
    }
}

pub(crate) fn decode_limits(limits: &LimitsConfig) -> decode::Limits {
    decode::Limits {
        max_input_bytes: limits.max_input_bytes,
        max_duration_secs: limits.max_duration_secs,
        min_duration_secs: limits.min_duration_secs,
        max_channels: limits.max_channels,
        max_skipped_fraction: limits.max_skipped_fraction,
    }
}

fn job_options(args: &RunArgs, config: &Config) -> anyhow::Result<JobOptions> {
    let mp3 = match (args.mp3_bitrate, args.mp3_vbr) {
        (_, Some(quality)) => Mp3Mode::Vbr(quality),
        (Some(kbps), None) => Mp3Mode::Cbr(kbps),
        (None, None) => Mp3Mode::default(),
    };
    let options = JobOptions {
        model: args
            .model
            .clone()
            .unwrap_or_else(|| config.models.default_model.clone()),
        stems: args.stems.clone(),
        two_stems: args.two_stems.clone(),
        output: OutputFormat {
            format: args.format,
            sample_format: args.wav_format,
            mp3,
            clip: args.clip_mode,
            rate: if args.source_rate {
                OutputRate::Source
            } else {
                OutputRate::Model
            },
        },
        segment: args.segment,
        overlap: args.overlap,
        shifts: args.shifts,
        ..JobOptions::default()
    };
    options
        .validate()
        .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    Ok(options)
}

/// Splits the inputs into those that can be read and one error line per one that cannot.
fn check_inputs(paths: &[PathBuf]) -> (Vec<Input>, Vec<String>) {
    let mut inputs: Vec<Input> = Vec::new();
    let mut failures = Vec::new();
    for path in paths {
        let shown = path.display();
        let problem = match std::fs::metadata(path) {
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                Some("no such file".to_owned())
            }
            Err(err) => Some(format!("cannot read: {err}")),
            Ok(meta) if meta.is_dir() => Some("is a directory, not an audio file".to_owned()),
            Ok(_) => std::fs::File::open(path)
                .err()
                .map(|err| format!("cannot read: {err}")),
        };
        if let Some(problem) = problem {
            failures.push(format!("{shown}: {problem}"));
            continue;
        }
        let name = output_name(path);
        if inputs.iter().any(|other| other.name == name) {
            failures.push(format!(
                "{shown}: another input also writes to the output folder {name:?}; rename one of them"
            ));
            continue;
        }
        inputs.push(Input {
            path: path.clone(),
            name,
        });
    }
    (inputs, failures)
}

fn output_name(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "input".to_owned())
}

fn display_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |s| s.to_string_lossy().into_owned(),
    )
}

/// Copies a finished job's stems to `dir/<stem>.<ext>`; each file appears whole or not at all.
async fn export(store: &dyn BlobStore, job: &Job, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    tokio::fs::create_dir_all(dir)
        .await
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let extension = job.options.output.format.extension();
    let mut written = Vec::new();
    for stem in &job.stems {
        let key = job
            .results
            .get(stem)
            .with_context(|| format!("the job has no result for stem {stem}"))?;
        let path = dir.join(format!("{stem}.{extension}"));
        store.get_to_file(key, &path).await?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_inputs_get_one_line_each_and_good_ones_survive() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good = dir.path().join("song.wav");
        std::fs::write(&good, b"RIFF").expect("write");
        let twin = dir.path().join("song.mp3");
        std::fs::write(&twin, b"ID3").expect("write");
        let missing = dir.path().join("missing.mp3");
        let (inputs, failures) =
            check_inputs(&[good.clone(), missing, dir.path().to_path_buf(), twin]);
        assert_eq!(inputs.len(), 1);
        assert_eq!(inputs[0].path, good);
        assert_eq!(inputs[0].name, "song");
        assert_eq!(failures.len(), 3, "{failures:?}");
        assert!(failures[0].contains("no such file"));
        assert!(failures[1].contains("is a directory"));
        assert!(
            failures[2].contains("same output folder") || failures[2].contains("output folder")
        );
    }
}
