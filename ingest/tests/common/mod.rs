//! A real ingest server on 127.0.0.1:0 over embedded backends, plus trivial stage workers
//! that finish jobs with fake stems, for the HTTP tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ingest::{IngestState, ModelInfo};
use pipeline::job::keys;
use pipeline::stage::{StageContext, StageError, StageHandler, StageOutput};
use pipeline::traits::{Progress, QueueDepth};
use pipeline::{Backends, Config, Job, JobId, Stage, Worker, WorkerSettings};
use tokio_util::sync::CancellationToken;

pub const ACME_KEY: &str = "acme-secret-key";
pub const BETA_KEY: &str = "beta-secret-key";

pub struct Server {
    pub base: String,
    pub backends: Backends,
    pub client: reqwest::Client,
    pub shutdown: CancellationToken,
    pub store_dir: PathBuf,
    pub served: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

pub fn models() -> Vec<ModelInfo> {
    vec![
        ModelInfo {
            name: "tiny".into(),
            family: "demucs".into(),
            sources: ["drums", "bass", "other", "vocals"]
                .map(String::from)
                .to_vec(),
            description: "test model".into(),
        },
        ModelInfo {
            name: "duo".into(),
            family: "mask".into(),
            sources: ["vocals", "accompaniment"].map(String::from).to_vec(),
            description: "two stems".into(),
        },
    ]
}

pub struct Options {
    pub max_input_bytes: u64,
    pub dedup: bool,
    /// Replaces the event bus (e.g. one that never delivers).
    pub events: Option<Arc<dyn pipeline::EventBus>>,
    pub hooks: Vec<Arc<dyn pipeline::TransitionHook>>,
    /// Replaces the in-memory queue and job records (e.g. with Redis).
    pub queue_and_jobs: Option<(Arc<dyn pipeline::StageQueue>, Arc<dyn pipeline::JobStore>)>,
    /// Changes the config before the server starts (timeouts, caps).
    pub tune: fn(&mut Config),
}

impl Default for Options {
    fn default() -> Self {
        Self {
            max_input_bytes: 1 << 20,
            dedup: false,
            events: None,
            hooks: Vec::new(),
            queue_and_jobs: None,
            tune: |_| {},
        }
    }
}

pub async fn start() -> Server {
    start_with(Options::default()).await
}

pub async fn start_with(options: Options) -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let store_dir = dir.path().join("store");
    let mut backends =
        backends::embedded(&store_dir, Duration::from_secs(30)).expect("embedded backends");
    if let Some((queue, jobs)) = options.queue_and_jobs {
        backends.queue = queue;
        backends.jobs = jobs;
    }
    if let Some(events) = options.events {
        backends.events = events;
    }
    for hook in options.hooks {
        backends = backends.with_hook(hook);
    }
    let keys = dir.path().join("keys");
    std::fs::write(&keys, format!("acme:{ACME_KEY}\nbeta:{BETA_KEY}\n")).expect("keys file");
    let mut config = Config::default();
    config.auth.keys_file = Some(keys);
    config.limits.max_input_bytes = options.max_input_bytes;
    config.jobs.dedup = options.dedup;
    config.models.default_model = "tiny".into();
    (options.tune)(&mut config);
    let state = IngestState::new(backends.clone(), &config, models(), None).expect("state");
    let shutdown = CancellationToken::new();
    let (addr, serve) = ingest::bind(state, "127.0.0.1:0".parse().unwrap(), shutdown.clone())
        .await
        .expect("bind");
    let served = tokio::spawn(serve);
    Server {
        base: format!("http://{addr}"),
        backends,
        client: reqwest::Client::new(),
        shutdown,
        store_dir,
        served,
        _dir: dir,
    }
}

/// A server whose finished jobs are posted to their `callback_url` under `config`, with the
/// embedded mode's target policy (receivers on loopback allowed).
pub async fn start_with_webhooks(config: &pipeline::config::CallbacksConfig) -> Server {
    let hook = backends::CallbackHook::new(
        config,
        pipeline::callback::TargetPolicy::for_config(&Config::default()),
    );
    start_with(Options {
        hooks: vec![Arc::new(hook)],
        ..Options::default()
    })
    .await
}

impl Server {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn depth(&self) -> QueueDepth {
        self.backends
            .queue
            .depth(Stage::Decode)
            .await
            .expect("depth")
    }

    /// Every object in the store, and every empty folder below a top-level prefix
    /// (`uploads/<job>/` left behind by a refused upload counts as something stored).
    pub fn objects(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            let mut empty = true;
            for entry in entries.flatten() {
                empty = false;
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, depth + 1, out);
                } else {
                    out.push(path);
                }
            }
            if empty && depth >= 2 {
                out.push(dir.to_owned());
            }
        }
        let mut out = Vec::new();
        walk(&self.store_dir, 0, &mut out);
        out
    }

    pub async fn job(&self, id: &str) -> Option<Job> {
        let id: JobId = id.parse().expect("job id");
        self.backends.jobs.get(&id).await.expect("get")
    }

    pub async fn source_bytes(&self, id: &str) -> Vec<u8> {
        let id: JobId = id.parse().expect("job id");
        let path = self._dir.path().join(format!("copy-{id}"));
        let size = self
            .backends
            .store
            .get_to_file(&keys::source(&id), &path)
            .await
            .expect("source stored");
        let bytes = std::fs::read(&path).expect("read copy");
        assert_eq!(bytes.len() as u64, size);
        std::fs::remove_file(&path).expect("remove copy");
        bytes
    }

    /// One worker per stage with the fake handlers, until `shutdown`.
    pub fn run_workers(&self) {
        for handler in [
            Arc::new(FakeStage(Stage::Decode)) as Arc<dyn StageHandler>,
            Arc::new(FakeStage(Stage::Separate)),
            Arc::new(FakeStage(Stage::Encode)),
        ] {
            let settings = WorkerSettings {
                claim_wait: Duration::from_millis(50),
                backoff_base: Duration::from_millis(10),
                consumer: format!("test-{}", handler.stage()),
                ..WorkerSettings::default()
            };
            let worker = Worker::new(self.backends.clone(), handler, settings);
            let shutdown = self.shutdown.clone();
            tokio::spawn(async move { worker.run(shutdown).await });
        }
    }

    /// Waits (bounded) until the job is terminal.
    pub async fn wait_terminal(&self, id: &str) -> Job {
        let id: JobId = id.parse().expect("job id");
        tokio::time::timeout(
            Duration::from_secs(20),
            pipeline::wait_until_finished(&self.backends, &id, Duration::from_millis(50)),
        )
        .await
        .expect("job finished in time")
        .expect("job finished")
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.served)
            .await
            .expect("server stopped gracefully")
            .expect("server task");
    }
}

/// A stage that writes fake outputs: separate names the model's first two sources
/// (reporting progress), encode writes `fake <stem>` bytes as each result.
pub struct FakeStage(pub Stage);

pub fn fake_stem_bytes(job: &Job, stem: &str) -> Vec<u8> {
    format!("RIFF fake {stem} of {}", job.id).into_bytes()
}

#[async_trait]
impl StageHandler for FakeStage {
    fn stage(&self) -> Stage {
        self.0
    }

    async fn run(&self, job: &Job, ctx: &StageContext) -> Result<StageOutput, StageError> {
        match self.0 {
            Stage::Decode => Ok(StageOutput::default()),
            Stage::Separate => {
                for done in 1..=2 {
                    ctx.progress.report(Progress { done, total: 2 });
                }
                Ok(StageOutput {
                    stems: vec!["vocals".into(), "drums".into()],
                    ..StageOutput::default()
                })
            }
            Stage::Encode => {
                let mut results = Vec::new();
                for stem in &job.stems {
                    let key = keys::result(&job.id, stem, "wav");
                    ctx.store
                        .put_bytes(&key, fake_stem_bytes(job, stem).into())
                        .await?;
                    results.push((stem.clone(), key));
                }
                Ok(StageOutput {
                    results,
                    ..StageOutput::default()
                })
            }
        }
    }
}

/// A small WAV-looking body: the RIFF/WAVE header then `len` bytes of pattern.
pub fn wav_body(len: usize) -> Vec<u8> {
    let mut body = b"RIFF\x24\0\0\0WAVEfmt ".to_vec();
    body.extend((0..len).map(|i| (i % 251) as u8));
    body
}

/// `GET path` with `key` as the bearer key.
pub async fn get(server: &Server, path: &str, key: &str) -> reqwest::Response {
    server
        .client
        .get(server.url(path))
        .header("authorization", bearer(key))
        .send()
        .await
        .expect("GET")
}

pub fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

/// Uploads a raw WAV body as acme; returns (status, JSON).
pub async fn upload(server: &Server, query: &str, body: Vec<u8>) -> (u16, serde_json::Value) {
    let response = server
        .client
        .post(server.url(&format!("/v1/jobs{query}")))
        .header("authorization", bearer(ACME_KEY))
        .header("content-type", "audio/wav")
        .body(body)
        .send()
        .await
        .expect("upload");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json body"))
}

/// The `error.code` of an error body.
pub fn code(body: &serde_json::Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<no error code>")
}

/// Reads a server-sent event stream to its end (bounded): (event name, data JSON) pairs,
/// comments skipped. `on_first` runs once the first event has arrived.
pub async fn read_events<F, Fut>(
    response: reqwest::Response,
    on_first: F,
) -> Vec<(String, serde_json::Value)>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    use futures::StreamExt;
    let mut on_first = Some(on_first);
    let mut events = Vec::new();
    let mut text = String::new();
    let mut body = response.bytes_stream();
    let read = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(chunk) = body.next().await {
            text.push_str(&String::from_utf8_lossy(
                &chunk.expect("event stream chunk"),
            ));
            while let Some(end) = text.find("\n\n") {
                let block: String = text.drain(..end + 2).collect();
                let mut name = None;
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("event:") {
                        name = Some(value.trim().to_owned());
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data.push_str(value.trim_start());
                    }
                }
                if let Some(name) = name {
                    let data = serde_json::from_str(&data).expect("event data is JSON");
                    events.push((name, data));
                    if let Some(first) = on_first.take() {
                        first().await;
                    }
                }
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the event stream did not end; got {events:?}");
    events
}
