//! Songs per hour through one separate worker process: N songs of mixed lengths, already
//! decoded, queued at once, then run by `in_flight` separate workers sharing one model whose
//! graph runs hold up to `batch` chunks (of any job). The store is the local directory behind an
//! optional bandwidth limit (one shared link, first come first served) standing in for S3, so
//! the overlap of transfers with the model run shows on any machine.
//!
//! Prints one Markdown row per configuration: songs/hour, × real time, batch fill (chunks run
//! / batch slots), device busy (time in the runtime / wall time), p50 / p95 latency from the
//! queueing to the stems stored, and how each song's stems compare with the first run at the
//! same batch size (bit-identical, or the largest difference relative to the peak: packed
//! beside other jobs a chunk may sit elsewhere in its batch, where ONNX Runtime may round its
//! last bits differently). More than 1e-4 of peak fails the benchmark.
//!
//!   cargo bench --bench separate_throughput -- --model spleeter-2stems --songs 8
//!   cargo bench --bench separate_throughput -- --model /path/manifest.toml --device cuda \
//!       --in-flight 1,2,3 --batch 1,2,4,8 --lengths 30,240,120,60 --songs 24
//! (tools/bench/separate-throughput wraps it.)

#![allow(clippy::unwrap_used)] // a benchmark, not the service: a failure here should stop it

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use clap::Parser;
use pipeline::traits::{ByteStream, Location, ObjectInfo, PutOutcome};
use pipeline::{BackendError, Backends, BlobStore, Job, JobId, JobOptions, Stage, Worker};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
struct Args {
    /// Model name (under --models-dir) or manifest path.
    #[arg(long, default_value = "spleeter-2stems")]
    model: String,
    /// Folder of model folders; default: $MSAAS_HOME/models.
    #[arg(long)]
    models_dir: Option<PathBuf>,
    /// Songs per configuration.
    #[arg(long, default_value_t = 8)]
    songs: usize,
    /// Song lengths in seconds, cycled over the songs.
    #[arg(long, value_delimiter = ',', default_value = "20,60,10,40")]
    lengths: Vec<f64>,
    /// Jobs in flight to try.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    in_flight: Vec<usize>,
    /// Batch sizes (chunks per graph run) to try, at the middle in-flight value; `--cross`
    /// tries every pair.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    batch: Vec<usize>,
    #[arg(long)]
    cross: bool,
    /// The store's bandwidth in MB/s (one link shared by every transfer); 0: unlimited.
    #[arg(long, default_value_t = 50.0)]
    bandwidth_mbps: f64,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// ONNX Runtime threads per run; default: every core.
    #[arg(long)]
    threads: Option<usize>,
    /// Repeats of the whole set of configurations (alternated).
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// `cargo bench` passes this; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// One link of `bytes_per_sec`: transfers queue behind each other, as on a saturated NIC.
struct Link {
    bytes_per_sec: f64,
    free_at: Mutex<Instant>,
}

impl Link {
    async fn transfer(&self, bytes: u64) {
        if self.bytes_per_sec <= 0.0 {
            return;
        }
        let needs = Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec);
        let done = {
            let mut free_at = self.free_at.lock().unwrap();
            let start = (*free_at).max(Instant::now());
            *free_at = start + needs;
            *free_at
        };
        tokio::time::sleep_until(done.into()).await;
    }
}

/// The store behind the link: whole-object reads and writes pay for their bytes.
struct ThrottledStore {
    inner: Arc<dyn BlobStore>,
    link: Arc<Link>,
}

#[async_trait]
impl BlobStore for ThrottledStore {
    async fn put_stream(
        &self,
        key: &str,
        body: ByteStream,
        limit: Option<u64>,
    ) -> Result<PutOutcome, BackendError> {
        self.inner.put_stream(key, body, limit).await
    }
    async fn put_file(&self, key: &str, path: &Path) -> Result<u64, BackendError> {
        let size = tokio::fs::metadata(path)
            .await
            .map(|m| m.len())
            .unwrap_or(0);
        self.link.transfer(size).await;
        self.inner.put_file(key, path).await
    }
    async fn put_bytes(&self, key: &str, bytes: Bytes) -> Result<(), BackendError> {
        self.link.transfer(bytes.len() as u64).await;
        self.inner.put_bytes(key, bytes).await
    }
    async fn get_stream(
        &self,
        key: &str,
        range: Option<(u64, u64)>,
    ) -> Result<ByteStream, BackendError> {
        self.inner.get_stream(key, range).await
    }
    async fn get_to_file(&self, key: &str, path: &Path) -> Result<u64, BackendError> {
        let size = self.inner.get_to_file(key, path).await?;
        self.link.transfer(size).await;
        Ok(size)
    }
    async fn size(&self, key: &str) -> Result<Option<u64>, BackendError> {
        self.inner.size(key).await
    }
    async fn delete(&self, key: &str) -> Result<(), BackendError> {
        self.inner.delete(key).await
    }
    async fn delete_prefix(&self, prefix: &str) -> Result<(), BackendError> {
        self.inner.delete_prefix(prefix).await
    }
    async fn locate(&self, key: &str, expires: Duration) -> Result<Location, BackendError> {
        self.inner.locate(key, expires).await
    }
    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ObjectInfo>, BackendError> {
        self.inner.list(prefix, start_after, limit).await
    }
}

/// Graph runs seen by the batch observer, summed over the process.
static ROWS: AtomicU64 = AtomicU64::new(0);
static SLOTS: AtomicU64 = AtomicU64::new(0);
static BUSY_NANOS: AtomicU64 = AtomicU64::new(0);

fn counters() -> (u64, u64, Duration) {
    (
        ROWS.load(Ordering::Relaxed),
        SLOTS.load(Ordering::Relaxed),
        Duration::from_nanos(BUSY_NANOS.load(Ordering::Relaxed)),
    )
}

/// A song: a few tones with a slow beat and a little noise, deterministic per index.
fn write_song(path: &Path, seconds: f64, index: usize) {
    let rate = 44_100u32;
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut writer = hound::WavWriter::create(path, spec).unwrap();
    let mut noise = 0x9E37_79B9_7F4A_7C15u64 ^ index as u64;
    let base = 110.0 * (1.0 + index as f64 * 0.13);
    for i in 0..(seconds * f64::from(rate)) as usize {
        let t = i as f64 / f64::from(rate);
        noise ^= noise << 13;
        noise ^= noise >> 7;
        noise ^= noise << 17;
        let hiss = (noise % 2000) as f64 / 1000.0 - 1.0;
        let beat = if (t * 2.0).fract() < 0.05 { 0.5 } else { 0.0 };
        let left = 0.25 * (2.0 * std::f64::consts::PI * base * t).sin() + beat + 0.02 * hiss;
        let right = 0.25 * (2.0 * std::f64::consts::PI * base * 1.5 * t).sin() + beat + 0.02 * hiss;
        for x in [left, right] {
            writer
                .write_sample((x.clamp(-1.0, 1.0) * 32_000.0) as i16)
                .unwrap();
        }
    }
    writer.finalize().unwrap();
}

/// One song's stems, by stem name.
type SongStems = BTreeMap<String, audio::Pcm>;

struct Outcome {
    wall: Duration,
    latencies: Vec<f64>,
    rows: u64,
    slots: u64,
    busy: Duration,
    /// Per song (in submission order): every stem, by stem name.
    stems: Vec<SongStems>,
}

async fn wait_for(backends: &Backends, ids: &[JobId], stage: Stage) -> Vec<Job> {
    loop {
        let mut jobs = Vec::with_capacity(ids.len());
        for id in ids {
            let job = backends.jobs.get(id).await.unwrap().unwrap();
            if let Some(error) = &job.error {
                panic!("job {id} failed: {error}");
            }
            jobs.push(job);
        }
        let finished = jobs.iter().all(|job| {
            job.stages
                .get(&stage)
                .is_some_and(|t| t.finished_ms.is_some())
        });
        if finished {
            return jobs;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn spawn(
    backends: &Backends,
    handler: Arc<dyn pipeline::StageHandler>,
    count: usize,
    shutdown: &CancellationToken,
) -> tokio::task::JoinSet<()> {
    let mut tasks = tokio::task::JoinSet::new();
    let settings = pipeline::config::WorkerConfig {
        claim_wait_ms: 50,
        ..pipeline::config::WorkerConfig::default()
    };
    for n in 0..count {
        let worker = Worker::new(
            backends.clone(),
            handler.clone(),
            settings.settings(format!("bench-{}-{n}", handler.stage())),
        );
        let shutdown = shutdown.clone();
        tasks.spawn(async move { worker.run(shutdown).await });
    }
    tasks
}

async fn run_one(args: &Args, songs: &[(PathBuf, f64)], in_flight: usize, batch: usize) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let plain = backends::embedded(dir.path().join("store"), Duration::from_secs(600)).unwrap();
    let mut ids = Vec::with_capacity(songs.len());
    for (path, _) in songs {
        let options = JobOptions {
            model: args.model.clone(),
            ..JobOptions::default()
        };
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let job =
            pipeline::worker::submit_file(&plain, Job::new("bench", name, options), path, None)
                .await
                .unwrap();
        ids.push(job.id);
    }
    // Decoding is not measured: every song is queued for separate before the clock starts.
    let shutdown = CancellationToken::new();
    let decode = Arc::new(decode::DecodeStage::new(decode::Limits::default()));
    let mut decoders = spawn(&plain, decode, 2, &shutdown);
    wait_for(&plain, &ids, Stage::Decode).await;
    shutdown.cancel();
    while decoders.join_next().await.is_some() {}

    let runtime = separate::RuntimeOptions {
        device: args.device.parse().unwrap(),
        intra_threads: args.threads,
        batch_size: Some(batch),
        ..separate::RuntimeOptions::default()
    };
    let models_dir = args
        .models_dir
        .clone()
        .unwrap_or_else(separate::runtime::models_dir);
    let stage = Arc::new(separate::SeparateStage::new(models_dir, runtime));
    stage.load_model(&args.model).await.unwrap();
    let link = Arc::new(Link {
        bytes_per_sec: args.bandwidth_mbps * 1e6,
        free_at: Mutex::new(Instant::now()),
    });
    let throttled = Backends {
        store: Arc::new(ThrottledStore {
            inner: plain.store.clone(),
            link,
        }),
        ..plain.clone()
    };

    let before = counters();
    let started = Instant::now();
    let started_ms = pipeline::job::now_ms();
    let shutdown = CancellationToken::new();
    let mut separators = spawn(&throttled, stage, in_flight, &shutdown);
    let jobs = wait_for(&plain, &ids, Stage::Separate).await;
    let wall = started.elapsed();
    shutdown.cancel();
    while separators.join_next().await.is_some() {}
    let after = counters();

    let latencies = jobs
        .iter()
        .map(|job| {
            let finished = job.stages[&Stage::Separate]
                .finished_ms
                .unwrap_or(started_ms);
            finished.saturating_sub(started_ms) as f64 / 1000.0
        })
        .collect();
    let mut stems = Vec::with_capacity(jobs.len());
    for job in &jobs {
        let mut song = BTreeMap::new();
        for name in &job.stems {
            let key = pipeline::job::keys::stem(&job.id, name);
            let path = dir.path().join("stem.wav");
            plain.store.get_to_file(&key, &path).await.unwrap();
            let stem = audio::read_wav_f32(std::fs::File::open(&path).unwrap()).unwrap();
            song.insert(name.clone(), stem);
        }
        stems.push(song);
    }
    Outcome {
        wall,
        latencies,
        rows: after.0 - before.0,
        slots: after.1 - before.1,
        busy: after.2 - before.2,
        stems,
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn main() {
    let args = Args::parse();
    separate::batch::set_observer(|run| {
        ROWS.fetch_add(run.rows as u64, Ordering::Relaxed);
        SLOTS.fetch_add(run.capacity as u64, Ordering::Relaxed);
        BUSY_NANOS.fetch_add(
            u64::try_from(run.busy.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    });
    let configs: Vec<(usize, usize)> = if args.cross {
        args.in_flight
            .iter()
            .flat_map(|&f| args.batch.iter().map(move |&b| (f, b)))
            .collect()
    } else {
        let middle = args.in_flight[args.in_flight.len() / 2];
        let mut list: Vec<(usize, usize)> =
            args.in_flight.iter().map(|&f| (f, args.batch[0])).collect();
        list.extend(args.batch.iter().skip(1).map(|&b| (middle, b)));
        list
    };
    let songs_dir = tempfile::tempdir().unwrap();
    let songs: Vec<(PathBuf, f64)> = (0..args.songs)
        .map(|i| {
            let seconds = args.lengths[i % args.lengths.len()];
            let path = songs_dir.path().join(format!("song-{i:02}.wav"));
            write_song(&path, seconds, i);
            (path, seconds)
        })
        .collect();
    let audio: f64 = songs.iter().map(|(_, s)| s).sum();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "{} songs ({} s of audio, lengths {:?} s), model {}, device {}, store link {}",
        songs.len(),
        audio,
        args.lengths,
        args.model,
        args.device,
        if args.bandwidth_mbps > 0.0 {
            format!("{} MB/s", args.bandwidth_mbps)
        } else {
            "unlimited".into()
        }
    );
    println!();
    println!(
        "| round | in flight | batch | wall s | songs/hour | × real time | batch fill | device busy | p50 latency s | p95 latency s | stems vs the first run at this batch size |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    // Per batch size: the in-flight count of its first run, and that run's stems.
    let mut reference: BTreeMap<usize, (usize, Vec<SongStems>)> = BTreeMap::new();
    let mut worst_overall = 0.0f64;
    for round in 1..=args.rounds {
        for &(in_flight, batch) in &configs {
            let outcome = runtime.block_on(run_one(&args, &songs, in_flight, batch));
            let mut sorted = outcome.latencies.clone();
            sorted.sort_by(f64::total_cmp);
            let wall = outcome.wall.as_secs_f64();
            let comparison = match reference.get(&batch) {
                None => {
                    let text = format!("(the reference: {in_flight} in flight)");
                    reference.insert(batch, (in_flight, outcome.stems));
                    text
                }
                Some((first, want)) => {
                    let (identical, worst) = compare(want, &outcome.stems);
                    worst_overall = worst_overall.max(worst);
                    if identical == songs.len() {
                        format!("same bytes as {first} in flight, every song")
                    } else {
                        format!(
                            "same bytes for {identical} of {} songs; largest difference {worst:.1e} of peak",
                            songs.len()
                        )
                    }
                }
            };
            println!(
                "| {round} | {in_flight} | {batch} | {wall:.1} | {:.0} | {:.1} | {} | {:.0} % | {:.1} | {:.1} | {comparison} |",
                songs.len() as f64 * 3600.0 / wall,
                audio / wall,
                if outcome.slots > 0 {
                    format!(
                        "{:.0} %",
                        100.0 * outcome.rows as f64 / outcome.slots as f64
                    )
                } else {
                    "n/a".into()
                },
                100.0 * outcome.busy.as_secs_f64() / wall,
                percentile(&sorted, 0.5),
                percentile(&sorted, 0.95),
            );
        }
    }
    // Packed beside other jobs, a chunk may sit elsewhere in its batch than alone, and ONNX
    // Runtime's kernels may round its last bits differently there; more than rounding is a bug.
    assert!(
        worst_overall < 1e-4,
        "stems differ by {worst_overall:.1e} of peak between runs at one batch size"
    );
}

/// Songs whose stems are bit-identical, and the largest difference of any sample relative to
/// the song's peak.
fn compare(want: &[SongStems], got: &[SongStems]) -> (usize, f64) {
    let mut identical = 0;
    let mut worst = 0.0f64;
    for (a, b) in want.iter().zip(got) {
        if a == b {
            identical += 1;
            continue;
        }
        let peak = a
            .values()
            .flat_map(|stem| stem.channels.iter().flatten())
            .fold(0.0f32, |m, x| m.max(x.abs()))
            .max(f32::MIN_POSITIVE);
        for (name, stem) in a {
            let other = &b[name];
            assert_eq!(
                stem.channels.len(),
                other.channels.len(),
                "{name}: channels differ"
            );
            for (x, y) in stem.channels.iter().zip(&other.channels) {
                assert_eq!(x.len(), y.len(), "{name}: lengths differ");
                for (x, y) in x.iter().zip(y) {
                    worst = worst.max(f64::from((x - y).abs() / peak));
                }
            }
        }
    }
    (identical, worst)
}
