//! The one configuration of every `msaas` process, in layers, each overriding the one before:
//!
//! 1. defaults (below);
//! 2. a TOML file — the path given (`--config`), else `./msaas.toml` if it exists;
//! 3. environment variables `MSAAS_<KEY>`: the TOML key path upper-cased with `__` between
//!    sections, e.g. `MSAAS_LIMITS__MAX_DURATION_SECS=600`, `MSAAS_WORKER__MAX_ATTEMPTS=5`,
//!    `MSAAS_MODELS__DEFAULT_MODEL=htdemucs`, `MSAAS_HOME=/data/msaas`. Variables whose first part names no
//!    top-level key (e.g. `MSAAS_LOG`, read by `observe`) are left to their owners; a known
//!    section with an unknown key is an error;
//! 4. command-line flags, through [`Config::set`] / [`Config::apply_overrides`] with the same
//!    dotted keys (`limits.max_duration_secs`), or by assigning fields.
//!
//! Paths left empty are derived from `home` when loading (`models.dir` = `{home}/models`,
//! `models.ort_library` = `{home}/lib/libonnxruntime.so.1.31.1`, or `{home}/lib/cuda/…` for
//! `device = "cuda"`, `storage.dir` =
//! `{home}/data`), so after [`Config::load`] every path field is usable as is.
//!
//! Then [`Config::validate`] reports every problem at once, each naming its key and value.
//! Secrets (S3 keys) are not configuration: they come from the standard AWS variables.
//!
//! A `msaas.toml` names only what differs from the defaults ([`Config::to_toml`] prints them all):
//!
//! ```toml
//! home = "/srv/msaas"
//! [models]
//! default_model = "htdemucs"
//! device = "cuda"
//! [limits]
//! max_duration_secs = 1800
//! [queue]
//! kind = "redis"
//! url = "redis://127.0.0.1:6379"
//! [worker]
//! max_attempts = 5
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::worker::WorkerSettings;
pub use crate::worker::default_consumer_name;

/// The file looked for in the working directory when none is given.
pub const DEFAULT_FILE: &str = "msaas.toml";
/// Prefix of the environment layer.
pub const ENV_PREFIX: &str = "MSAAS_";
/// The ONNX Runtime library the default layout holds (`$MSAAS_HOME/lib/…`).
pub const ORT_LIBRARY_FILE: &str = "libonnxruntime.so.1.31.1";
/// The converter venv's interpreter under `home`, as `tools/setup` makes it.
pub const CONVERTER_PYTHON: &str = "venv/bin/python";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    /// Every problem found, one line each.
    #[error("invalid configuration:\n  {}", .0.join("\n  "))]
    Invalid(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Data directory (`MSAAS_HOME`); empty: `$XDG_DATA_HOME/msaas`, else
    /// `~/.local/share/msaas`.
    pub home: PathBuf,
    pub models: ModelsConfig,
    pub limits: LimitsConfig,
    pub storage: StorageConfig,
    pub queue: QueueConfig,
    pub events: EventsConfig,
    pub worker: WorkerConfig,
    pub server: ServerConfig,
    pub auth: AuthConfig,
    pub tenants: TenantsConfig,
    pub jobs: JobsConfig,
    pub callbacks: CallbacksConfig,
    pub observe: ObserveConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            home: PathBuf::new(),
            models: ModelsConfig::default(),
            limits: LimitsConfig::default(),
            storage: StorageConfig::default(),
            queue: QueueConfig::default(),
            events: EventsConfig::default(),
            worker: WorkerConfig::default(),
            server: ServerConfig::default(),
            auth: AuthConfig::default(),
            tenants: TenantsConfig::default(),
            jobs: JobsConfig::default(),
            callbacks: CallbacksConfig::default(),
            observe: ObserveConfig::default(),
        }
    }
}

/// The models and the runtime that runs them (ONNX Runtime).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelsConfig {
    /// Model folders (`<name>/manifest.toml` + `.onnx`); empty: `{home}/models`.
    pub dir: PathBuf,
    /// Model used when a job names none: a registry name or a manifest path.
    pub default_model: String,
    /// `libonnxruntime.so`; empty: `{home}/lib/libonnxruntime.so.1.31.1`, or the GPU build
    /// `{home}/lib/cuda/libonnxruntime.so.1.31.1` when `device = "cuda"` (`tools/setup --cuda`).
    pub ort_library: PathBuf,
    pub device: Device,
    /// Intra-op threads per model run; unset: every core.
    pub threads: Option<usize>,
    /// Chunks per model run, packed from every job in flight; unset: 1 on a CPU, 4 on CUDA
    /// (halved for good whenever the device runs out of memory). A mask model's manifest
    /// `batch` caps it for that model.
    pub batch_size: Option<usize>,
    /// Jobs one separate worker process holds at once, so that fetching the next mix and
    /// uploading the last stems overlap the model run; unset: 1 on a CPU, 2 on CUDA.
    pub in_flight: Option<usize>,
    /// Most bytes of GPU memory ONNX Runtime may hold per loaded graph (CUDA only); unset: as
    /// much as the device has. Runs that need more halve their batch.
    pub device_memory_limit: Option<u64>,
    /// Python with numpy + onnx that `models pull|import` converts with; empty:
    /// `{home}/venv/bin/python` (made by `tools/setup`).
    pub converter_python: PathBuf,
    /// Base URL replacing Hugging Face for `models pull` (a mirror: `URL/<repo>/resolve/main/<file>`).
    pub pull_from: Option<String>,
    /// Base URL replacing the legacy Demucs host (`URL/hybrid_transformer/<sig>-<sha8>.th`).
    pub legacy_from: Option<String>,
    /// A catalogue file replacing the built-in list of pullable models.
    pub catalogue: Option<PathBuf>,
    /// Where `models pull` keeps partial downloads (resumed by the next pull); empty:
    /// `{home}/cache/downloads`.
    pub download_dir: PathBuf,
}

/// Below this a device memory limit is surely a unit mistake (MiB written for bytes).
const MIN_DEVICE_MEMORY_LIMIT: u64 = 64 << 20;

impl ModelsConfig {
    /// Jobs one separate worker holds at once: `in_flight`, else 1 on a CPU and 2 on CUDA
    /// (while one job's chunks run, the next mix downloads and the last stems upload).
    pub fn jobs_in_flight(&self) -> usize {
        self.in_flight.unwrap_or(match self.device {
            Device::Cpu => 1,
            Device::Cuda => 2,
        })
    }
}

impl Default for ModelsConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::new(),
            default_model: "spleeter-2stems".to_owned(),
            ort_library: PathBuf::new(),
            device: Device::Cpu,
            threads: None,
            batch_size: None,
            in_flight: None,
            device_memory_limit: None,
            converter_python: PathBuf::new(),
            pull_from: None,
            legacy_from: None,
            catalogue: None,
            download_dir: PathBuf::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    #[default]
    Cpu,
    Cuda,
}

impl Device {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Device {
    type Err = audio::error::CodedError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda),
            _ => Err(audio::error::CodedError::new(
                audio::error::ErrorCode::InvalidOption,
                format!("unknown device {s:?} (expected cpu or cuda)"),
            )),
        }
    }
}

/// What decode accepts; beyond these a job fails with a clear code.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Upload size (`too_large`).
    pub max_input_bytes: u64,
    /// Decoded duration (`too_long`).
    pub max_duration_secs: f64,
    /// Decoded duration (`too_short`).
    pub min_duration_secs: f64,
    /// Source channels (`too_many_channels`).
    pub max_channels: u16,
    /// Fraction of packets that may be corrupt (skipped, as ffmpeg does) before the whole
    /// file counts as corrupt (`corrupt_audio`).
    pub max_skipped_fraction: f64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_input_bytes: 1 << 30,
            max_duration_secs: 3.0 * 3600.0,
            min_duration_secs: 0.1,
            max_channels: 8,
            max_skipped_fraction: 0.5,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    #[default]
    Local,
    S3,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    pub kind: StorageKind,
    /// Root of the local store; empty: `{home}/data`.
    pub dir: PathBuf,
    pub s3: S3Config,
}

/// Object storage (distributed mode). Credentials come from the standard AWS variables.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    /// Endpoint URL for S3-compatible servers (MinIO, …); unset: AWS.
    pub endpoint: Option<String>,
    pub bucket: String,
    pub region: String,
    /// Prepended to every key.
    pub prefix: String,
    /// Path-style addressing, which most S3-compatible servers need.
    pub path_style: bool,
}

impl Default for S3Config {
    fn default() -> Self {
        Self {
            endpoint: None,
            bucket: String::new(),
            region: "us-east-1".to_owned(),
            prefix: String::new(),
            path_style: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum QueueKind {
    /// In-process (embedded mode): the queue and job records live and die with the process.
    #[default]
    Memory,
    Redis,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    pub kind: QueueKind,
    /// `redis://host:port/db` (needed for `kind = "redis"`).
    pub url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    /// `nats://host:port`; unset: in-process events only.
    pub nats_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    pub max_attempts: u32,
    pub visibility_timeout_secs: u64,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    pub claim_wait_ms: u64,
    /// How long a worker waits out an outage of object storage or Redis in the middle of a
    /// job (retrying in place, with the backoff) before it fails the job with the outage's
    /// code (`storage_unavailable`, `queue_unavailable`). Time waited does not count against
    /// `max_attempts`. 0: an outage counts as a failed attempt at once.
    pub outage_budget_secs: u64,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            visibility_timeout_secs: 300,
            backoff_base_ms: 1_000,
            backoff_max_ms: 60_000,
            claim_wait_ms: 5_000,
            outage_budget_secs: 300,
        }
    }
}

impl WorkerConfig {
    pub fn visibility_timeout(&self) -> Duration {
        Duration::from_secs(self.visibility_timeout_secs)
    }

    /// Settings for one worker; `consumer` names it on the queue (unique per worker, e.g.
    /// [`default_consumer_name`] plus an index).
    pub fn settings(&self, consumer: impl Into<String>) -> WorkerSettings {
        WorkerSettings {
            max_attempts: self.max_attempts,
            visibility_timeout: self.visibility_timeout(),
            backoff_base: Duration::from_millis(self.backoff_base_ms),
            backoff_max: Duration::from_millis(self.backoff_max_ms),
            claim_wait: Duration::from_millis(self.claim_wait_ms),
            outage_budget: Duration::from_secs(self.outage_budget_secs),
            consumer: consumer.into(),
            ..WorkerSettings::default()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// `ip:port` the HTTP API listens on.
    pub listen: String,
    /// Seconds a client has to send a whole request head (also the idle limit of a
    /// kept-alive connection between requests).
    pub header_timeout_secs: u64,
    /// Seconds a request body may stop arriving before its request fails (400).
    pub body_idle_timeout_secs: u64,
    /// Open connections at most per listener; more are answered 503 `overloaded`.
    pub max_connections: usize,
    /// Other origins whose pages may call the API from a browser (CORS), e.g.
    /// `https://app.example.com`; `*` allows any. Empty (the default): none — the web UI at
    /// `/` is same-origin and needs none.
    pub cors_origins: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".to_owned(),
            header_timeout_secs: 30,
            body_idle_timeout_secs: 60,
            max_connections: 1024,
            cors_origins: Vec::new(),
        }
    }
}

/// What one tenant may hold at once, so that no tenant starves the others. Over a cap, the
/// API answers 429 `rate_limited` with `Retry-After`. 0: no cap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct TenantsConfig {
    /// Jobs not yet finished (queued or running) per tenant.
    pub max_active_jobs: u64,
    /// Uploads accepted per tenant in a minute (a fixed window, counted where jobs are).
    pub uploads_per_minute: u64,
}

/// Who may call the HTTP API: every request names an API key (`Authorization: Bearer`), each
/// key belongs to one tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// A file of `tenant:key` lines (`#` starts a comment), e.g. a mounted Secret. Keys stay
    /// out of `msaas.toml`, which is often committed.
    pub keys_file: Option<PathBuf>,
    /// Also accept keys kept in Redis: hash `msaas:apikeys`, field = hex SHA-256 of the key,
    /// value = tenant (`msaas keys add` writes it). Needs `queue.kind = "redis"`.
    pub redis_keys: bool,
    /// No keys: every caller is tenant `anonymous`. For a laptop only; refused unless
    /// `server.listen` is a loopback address.
    pub anonymous: bool,
}

/// How long jobs live and what they may share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobsConfig {
    /// A finished (done, failed, cancelled) job's record, aliases and objects are deleted
    /// this long after it ended.
    pub retention_secs: u64,
    /// The same tenant uploading the same bytes with the same options gets the finished job
    /// back instead of a new separation.
    pub dedup: bool,
    /// A job whose record has not moved for this long is handed to its stage again (lost
    /// message, crash between creating the record and queueing it). Must be well above the
    /// time a job can wait in a queue plus `worker.visibility_timeout_secs`, or it only adds
    /// duplicate messages (which are harmless: the worker skips them). A safety net, rarely
    /// used: submission creates the record and queues it in one step, so only an entry lost
    /// with a queue server's data (a failover that dropped writes) leaves a job to it.
    pub sweep_after_secs: u64,
    /// An object under a job's prefixes (`uploads/<id>/`, ...) whose job has no record and
    /// that was written this long ago is an orphan (a crash between storing an upload and
    /// creating its record, a stem written after its job was deleted): the janitor deletes it.
    pub orphan_after_secs: u64,
    /// How often the janitor (retention, sweep, orphans) runs.
    pub janitor_interval_secs: u64,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            retention_secs: 24 * 3600,
            dedup: false,
            sweep_after_secs: 600,
            orphan_after_secs: 3600,
            janitor_interval_secs: 60,
        }
    }
}

/// `callback_url` webhooks: a POST of the job JSON when it is done, failed or cancelled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CallbacksConfig {
    /// HMAC-SHA256 key for the `X-Msaas-Signature` header; unset: callbacks are unsigned.
    /// Prefer the environment (`MSAAS_CALLBACKS__SECRET`) to a file.
    pub secret: Option<String>,
    /// Deliveries before giving up (each with backoff).
    pub max_attempts: u32,
    pub timeout_ms: u64,
    pub backoff_base_ms: u64,
    /// Allow webhook targets inside the network: loopback, private, link-local (metadata),
    /// unique-local addresses. Off: only public addresses (embedded mode also allows loopback).
    pub allow_private: bool,
    /// Hosts webhooks may reach whatever they resolve to (names or address literals).
    pub allow_hosts: Vec<String>,
    /// Distributed mode refuses `callback_url` while deliveries would be unsigned (no
    /// `secret`); this opts out of that.
    pub allow_unsigned: bool,
}

impl Default for CallbacksConfig {
    fn default() -> Self {
        Self {
            secret: None,
            max_attempts: 6,
            timeout_ms: 10_000,
            backoff_base_ms: 1_000,
            allow_private: false,
            allow_hosts: Vec::new(),
            allow_unsigned: false,
        }
    }
}

/// What operators see. Traces go where the standard `OTEL_EXPORTER_OTLP_*` variables say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ObserveConfig {
    /// `ip:port` of the small HTTP listener of worker roles (`/metrics`, `/healthz`,
    /// `/readyz`); empty: none. Ingest serves these on `server.listen`.
    pub metrics_listen: String,
    /// How often queue depths are read for the `msaas_queue_*` gauges.
    pub queue_poll_ms: u64,
}

impl Default for ObserveConfig {
    fn default() -> Self {
        Self {
            metrics_listen: "127.0.0.1:9464".to_owned(),
            queue_poll_ms: 5_000,
        }
    }
}

impl Config {
    /// Defaults < file < the process environment. `file`: the `--config` path (must exist);
    /// `None` reads `./msaas.toml` if present. Flags come after, via [`Config::set`].
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(file, std::env::vars())
    }

    /// [`Config::load`] with the environment given (tests, embedding).
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut config = match file {
            Some(path) => Self::from_file(path)?,
            None => {
                let default_file = Path::new(DEFAULT_FILE);
                if default_file.is_file() {
                    Self::from_file(default_file)?
                } else {
                    Self::default()
                }
            }
        };
        let env: Vec<(String, String)> = env.into_iter().collect();
        config.apply_env(&env)?;
        let lookup = |name: &str| {
            env.iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.clone())
        };
        config.resolve_paths(lookup("XDG_DATA_HOME"), lookup("HOME"));
        Ok(config)
    }

    /// Fills the empty path fields: `home` from the data-dir convention (given the values
    /// of `XDG_DATA_HOME` and `HOME`), the others from `home`. Set paths stay as they are.
    pub fn resolve_paths(&mut self, xdg_data_home: Option<String>, user_home: Option<String>) {
        if self.home.as_os_str().is_empty() {
            self.home = default_home(xdg_data_home, user_home);
        }
        if self.models.dir.as_os_str().is_empty() {
            self.models.dir = self.home.join("models");
        }
        if self.models.ort_library.as_os_str().is_empty() {
            self.models.ort_library = self.default_ort_library();
        }
        if self.models.converter_python.as_os_str().is_empty() {
            self.models.converter_python = self.home.join(CONVERTER_PYTHON);
        }
        if self.models.download_dir.as_os_str().is_empty() {
            self.models.download_dir = self.home.join("cache").join("downloads");
        }
        if self.storage.dir.as_os_str().is_empty() {
            self.storage.dir = self.home.join("data");
        }
    }

    /// Defaults < this file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|err| ConfigError::Parse {
            path: path.to_owned(),
            message: err.to_string().trim_end().to_owned(),
        })
    }

    /// Applies the `MSAAS_*` variables of `env` (see the module docs for the naming).
    pub fn apply_env(&mut self, env: &[(String, String)]) -> Result<(), ConfigError> {
        let top_level = self.top_level_keys()?;
        let mut vars: Vec<(String, &str, &str)> = env
            .iter()
            .filter_map(|(name, value)| {
                let rest = name.strip_prefix(ENV_PREFIX)?;
                let key = rest.to_ascii_lowercase().replace("__", ".");
                let first = key.split('.').next().unwrap_or_default().to_owned();
                top_level
                    .contains(&first)
                    .then_some((key, name.as_str(), value.as_str()))
            })
            .collect();
        // A stable order, so the same environment always gives the same result.
        vars.sort();
        let mut problems = Vec::new();
        for (key, name, value) in vars {
            if let Err(problem) = self.set(&key, value) {
                problems.push(format!("environment variable {name}: {problem}"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// Sets one dotted key (`worker.max_attempts`) from its text form, as a flag or
    /// `--set key=value` does. Numbers, booleans and arrays are written as in TOML; text
    /// needs no quotes. On error `self` is unchanged.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        let path: Vec<&str> = key.split('.').collect();
        if path.iter().any(|segment| segment.is_empty()) {
            return Err(format!("{key:?} is not a config key"));
        }
        let mut table = toml::Table::try_from(&*self)
            .map_err(|err| format!("cannot represent the configuration: {err}"))?;
        let (leaf, sections) = path.split_last().ok_or_else(|| "empty key".to_owned())?;
        let mut current = &mut table;
        for section in sections {
            current = match current
                .entry((*section).to_owned())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            {
                toml::Value::Table(inner) => inner,
                _ => return Err(format!("{key}: {section:?} is a value, not a section")),
            };
        }
        let parsed = match current.get(*leaf) {
            // A text field takes the text as is, even if it looks like a number.
            Some(toml::Value::String(_)) => toml::Value::String(value.to_owned()),
            _ => parse_literal(value),
        };
        current.insert((*leaf).to_owned(), parsed);
        let updated: Config = table.try_into().map_err(|err: toml::de::Error| {
            format!(
                "{key} = {value:?}: {}",
                err.message().trim_end().trim_end_matches('\n')
            )
        })?;
        *self = updated;
        Ok(())
    }

    /// [`Config::set`] for each pair; reports every bad one.
    pub fn apply_overrides<'a>(
        &mut self,
        overrides: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<(), ConfigError> {
        let problems: Vec<String> = overrides
            .into_iter()
            .filter_map(|(key, value)| self.set(key, value).err())
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    fn top_level_keys(&self) -> Result<Vec<String>, ConfigError> {
        let mut keys: Vec<String> = Vec::new();
        let table = toml::Table::try_from(self)
            .map_err(|err| ConfigError::Invalid(vec![format!("cannot represent: {err}")]))?;
        keys.extend(table.keys().cloned());
        Ok(keys)
    }

    /// Every problem, each naming its key and the bad value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let mut problem = |key: &str, value: &dyn std::fmt::Debug, why: &str| {
            problems.push(format!("{key} = {value:?}: {why}"));
        };
        if self.models.default_model.trim().is_empty() {
            problem(
                "models.default_model",
                &self.models.default_model,
                "must name a model",
            );
        }
        for (key, url) in [
            ("models.pull_from", &self.models.pull_from),
            ("models.legacy_from", &self.models.legacy_from),
        ] {
            if let Some(url) = url
                && !(url.starts_with("http://") || url.starts_with("https://"))
            {
                problem(key, url, "must be an http:// or https:// base URL");
            }
        }
        if self.models.threads == Some(0) {
            problem(
                "models.threads",
                &0,
                "must be at least 1 (leave it unset to use every core)",
            );
        }
        if let Some(limit) = self.models.device_memory_limit
            && limit < MIN_DEVICE_MEMORY_LIMIT
        {
            problem(
                "models.device_memory_limit",
                &limit,
                "must be at least 67108864 (64 MiB); it is in bytes",
            );
        }
        for (key, value) in [
            ("models.batch_size", self.models.batch_size),
            ("models.in_flight", self.models.in_flight),
        ] {
            if value == Some(0) {
                problem(
                    key,
                    &0,
                    "must be at least 1 (leave it unset for the device's default)",
                );
            }
        }
        let limits = &self.limits;
        if limits.max_input_bytes == 0 {
            problem(
                "limits.max_input_bytes",
                &limits.max_input_bytes,
                "must be positive",
            );
        }
        if !(limits.max_duration_secs.is_finite() && limits.max_duration_secs > 0.0) {
            problem(
                "limits.max_duration_secs",
                &limits.max_duration_secs,
                "must be a positive number of seconds",
            );
        }
        if !(limits.min_duration_secs.is_finite() && limits.min_duration_secs >= 0.0) {
            problem(
                "limits.min_duration_secs",
                &limits.min_duration_secs,
                "must be zero or a positive number of seconds",
            );
        } else if limits.max_duration_secs > 0.0
            && limits.min_duration_secs >= limits.max_duration_secs
        {
            problem(
                "limits.min_duration_secs",
                &limits.min_duration_secs,
                &format!(
                    "must be less than limits.max_duration_secs ({})",
                    limits.max_duration_secs
                ),
            );
        }
        if !(0.0..=1.0).contains(&limits.max_skipped_fraction) {
            problem(
                "limits.max_skipped_fraction",
                &limits.max_skipped_fraction,
                "must be between 0 and 1",
            );
        }
        if limits.max_channels == 0 {
            problem(
                "limits.max_channels",
                &limits.max_channels,
                "must be at least 1",
            );
        }
        if self.storage.kind == StorageKind::S3 && self.storage.s3.bucket.trim().is_empty() {
            problem(
                "storage.s3.bucket",
                &self.storage.s3.bucket,
                "must be set when storage.kind = \"s3\"",
            );
        }
        match (&self.queue.kind, &self.queue.url) {
            (QueueKind::Redis, None) => problem(
                "queue.url",
                &None::<String>,
                "must be set when queue.kind = \"redis\" (redis://host:port)",
            ),
            (_, Some(url)) if !(url.starts_with("redis://") || url.starts_with("rediss://")) => {
                problem("queue.url", url, "must start with redis:// or rediss://");
            }
            _ => {}
        }
        if let Some(url) = &self.events.nats_url
            && !(url.starts_with("nats://") || url.starts_with("tls://"))
        {
            problem("events.nats_url", url, "must start with nats:// or tls://");
        }
        let worker = &self.worker;
        if worker.max_attempts == 0 {
            problem(
                "worker.max_attempts",
                &worker.max_attempts,
                "must be at least 1",
            );
        }
        if worker.visibility_timeout_secs == 0 {
            problem(
                "worker.visibility_timeout_secs",
                &worker.visibility_timeout_secs,
                "must be at least 1",
            );
        }
        if worker.backoff_base_ms == 0 {
            problem(
                "worker.backoff_base_ms",
                &worker.backoff_base_ms,
                "must be at least 1",
            );
        } else if worker.backoff_max_ms < worker.backoff_base_ms {
            problem(
                "worker.backoff_max_ms",
                &worker.backoff_max_ms,
                &format!(
                    "must not be less than worker.backoff_base_ms ({})",
                    worker.backoff_base_ms
                ),
            );
        }
        if worker.claim_wait_ms == 0 {
            problem(
                "worker.claim_wait_ms",
                &worker.claim_wait_ms,
                "must be at least 1",
            );
        }
        if self.server.listen.parse::<SocketAddr>().is_err() {
            problem(
                "server.listen",
                &self.server.listen,
                "must be an address and port, e.g. 127.0.0.1:8080 or [::]:8080",
            );
        }
        for (key, value) in [
            (
                "server.header_timeout_secs",
                self.server.header_timeout_secs,
            ),
            (
                "server.body_idle_timeout_secs",
                self.server.body_idle_timeout_secs,
            ),
            ("server.max_connections", self.server.max_connections as u64),
        ] {
            if value == 0 {
                problem(key, &value, "must be at least 1");
            }
        }
        for origin in &self.server.cors_origins {
            let rest = origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"));
            let is_origin = rest.is_some_and(|host| {
                let host = host.trim_end_matches('/');
                !host.is_empty() && !host.contains(['/', '?', '#', ' '])
            });
            if origin != "*" && !is_origin {
                problem(
                    "server.cors_origins",
                    origin,
                    "each must be an origin (https://host[:port], no path) or *",
                );
            }
        }
        if self.auth.anonymous
            && !self
                .server
                .listen
                .parse::<SocketAddr>()
                .is_ok_and(|addr| addr.ip().is_loopback())
        {
            problem(
                "auth.anonymous",
                &true,
                &format!(
                    "only allowed when server.listen is a loopback address, not {:?}",
                    self.server.listen
                ),
            );
        }
        if self.auth.redis_keys && self.queue.kind != QueueKind::Redis {
            problem(
                "auth.redis_keys",
                &true,
                "needs queue.kind = \"redis\" (the keys live there)",
            );
        }
        if self.jobs.retention_secs == 0 {
            problem("jobs.retention_secs", &0, "must be at least 1");
        }
        if self.jobs.sweep_after_secs <= self.worker.visibility_timeout_secs {
            problem(
                "jobs.sweep_after_secs",
                &self.jobs.sweep_after_secs,
                &format!(
                    "must be more than worker.visibility_timeout_secs ({})",
                    self.worker.visibility_timeout_secs
                ),
            );
        }
        if self.jobs.janitor_interval_secs == 0 {
            problem("jobs.janitor_interval_secs", &0, "must be at least 1");
        }
        if self.callbacks.max_attempts == 0 {
            problem("callbacks.max_attempts", &0, "must be at least 1");
        }
        if self.callbacks.timeout_ms == 0 {
            problem("callbacks.timeout_ms", &0, "must be at least 1");
        }
        if !self.observe.metrics_listen.is_empty()
            && self.observe.metrics_listen.parse::<SocketAddr>().is_err()
        {
            problem(
                "observe.metrics_listen",
                &self.observe.metrics_listen,
                "must be an address and port, or empty for none",
            );
        }
        if self.observe.queue_poll_ms == 0 {
            problem("observe.queue_poll_ms", &0, "must be at least 1");
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// The configuration as a `msaas.toml` would say it (`msaas config` shows it).
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        toml::to_string_pretty(self)
            .map_err(|err| ConfigError::Invalid(vec![format!("cannot write as TOML: {err}")]))
    }

    /// The data directory (see [`Config::home`]); from the process environment if unresolved.
    pub fn home_dir(&self) -> PathBuf {
        if self.home.as_os_str().is_empty() {
            default_home(
                std::env::var("XDG_DATA_HOME").ok(),
                std::env::var("HOME").ok(),
            )
        } else {
            self.home.clone()
        }
    }

    pub fn models_dir(&self) -> PathBuf {
        or_under_home(&self.models.dir, || self.home_dir().join("models"))
    }

    pub fn download_dir(&self) -> PathBuf {
        or_under_home(&self.models.download_dir, || {
            self.home_dir().join("cache").join("downloads")
        })
    }

    pub fn converter_python(&self) -> PathBuf {
        or_under_home(&self.models.converter_python, || {
            self.home_dir().join(CONVERTER_PYTHON)
        })
    }

    pub fn ort_library(&self) -> PathBuf {
        or_under_home(&self.models.ort_library, || self.default_ort_library())
    }

    /// Sets the device after loading (a command-line flag); a library path that was derived
    /// for the old device is derived again for the new one.
    pub fn set_device(&mut self, device: Device) {
        let derived = self.models.ort_library == self.default_ort_library();
        self.models.device = device;
        if derived {
            self.models.ort_library = self.default_ort_library();
        }
    }

    /// `{home}/lib/` holds the CPU build of ONNX Runtime, `{home}/lib/cuda/` the GPU build with
    /// the NVIDIA libraries it needs (`tools/setup --cuda`).
    fn default_ort_library(&self) -> PathBuf {
        let lib = self.home_dir().join("lib");
        match self.models.device {
            Device::Cpu => lib.join(ORT_LIBRARY_FILE),
            Device::Cuda => lib.join("cuda").join(ORT_LIBRARY_FILE),
        }
    }

    /// Root of the local blob store.
    pub fn storage_dir(&self) -> PathBuf {
        or_under_home(&self.storage.dir, || self.home_dir().join("data"))
    }
}

fn or_under_home(path: &Path, derived: impl FnOnce() -> PathBuf) -> PathBuf {
    if path.as_os_str().is_empty() {
        derived()
    } else {
        path.to_owned()
    }
}

/// `$XDG_DATA_HOME/msaas`, else `$HOME/.local/share/msaas`, else `./.msaas` (no home at all:
/// a container without a user; still somewhere writable and visible).
fn default_home(xdg_data_home: Option<String>, home: Option<String>) -> PathBuf {
    if let Some(xdg) = xdg_data_home.filter(|v| !v.is_empty()) {
        return PathBuf::from(xdg).join("msaas");
    }
    if let Some(home) = home.filter(|v| !v.is_empty()) {
        return PathBuf::from(home).join(".local/share/msaas");
    }
    PathBuf::from(".msaas")
}

/// A TOML literal (number, boolean, array, quoted string), else the text itself.
fn parse_literal(raw: &str) -> toml::Value {
    let document = format!("value = {raw}");
    toml::from_str::<toml::Table>(&document)
        .ok()
        .and_then(|mut table| table.remove("value"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn write(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("msaas.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn defaults_are_valid_and_as_documented() {
        let config = Config::default();
        config.validate().unwrap();
        assert_eq!(config.models.default_model, "spleeter-2stems");
        assert_eq!(config.limits.max_input_bytes, 1 << 30);
        assert_eq!(config.limits.max_duration_secs, 10_800.0);
        assert_eq!(config.limits.max_channels, 8);
        assert_eq!(config.limits.min_duration_secs, 0.1);
        assert_eq!(config.worker.max_attempts, 3);
        assert_eq!(config.worker.visibility_timeout(), Duration::from_secs(300));
        let settings = config.worker.settings("w-1");
        assert_eq!(settings.consumer, "w-1");
        assert_eq!(settings.backoff_base, Duration::from_secs(1));
        assert_eq!(settings.backoff_max, Duration::from_secs(60));
        assert_eq!(
            (config.storage.kind, config.queue.kind),
            (StorageKind::Local, QueueKind::Memory)
        );
        assert_eq!(config.models.device, Device::Cpu);
        assert_eq!(config.models.jobs_in_flight(), 1);
        assert_eq!(config.models.threads, None);
    }

    #[test]
    fn toml_form_reads_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.set("limits.max_duration_secs", "99.5").unwrap();
        config.set("home", "/data").unwrap();
        let file = write(dir.path(), &config.to_toml().unwrap());
        assert_eq!(Config::from_file(&file).unwrap(), config);
    }

    #[test]
    fn each_layer_overrides_the_one_before() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(
            dir.path(),
            r#"
[models]
default_model = "htdemucs"
[limits]
max_duration_secs = 600
max_channels = 4
[worker]
max_attempts = 5
backoff_base_ms = 200
"#,
        );
        // File over defaults; untouched keys keep their defaults.
        let from_file = Config::load_from(Some(&file), env(&[])).unwrap();
        assert_eq!(from_file.models.default_model, "htdemucs");
        assert_eq!(from_file.limits.max_duration_secs, 600.0);
        assert_eq!(from_file.limits.max_channels, 4);
        assert_eq!(from_file.limits.max_input_bytes, 1 << 30);
        assert_eq!(from_file.worker.max_attempts, 5);

        // Environment over file.
        let vars = env(&[
            ("MSAAS_LIMITS__MAX_DURATION_SECS", "120.5"),
            ("MSAAS_WORKER__MAX_ATTEMPTS", "7"),
            ("MSAAS_MODELS__DEFAULT_MODEL", "1234"),
            ("MSAAS_MODELS__THREADS", "4"),
            ("MSAAS_HOME", "/srv/msaas"),
            ("MSAAS_MODELS__DEVICE", "cuda"),
            ("MSAAS_EVENTS__NATS_URL", "nats://127.0.0.1:4222"),
            ("MSAAS_LOG", "debug"),
            ("OTHER", "x"),
        ]);
        let mut config = Config::load_from(Some(&file), vars).unwrap();
        assert_eq!(config.limits.max_duration_secs, 120.5);
        assert_eq!(config.limits.max_channels, 4, "from the file");
        assert_eq!(config.worker.max_attempts, 7);
        assert_eq!(config.worker.backoff_base_ms, 200, "from the file");
        assert_eq!(config.models.default_model, "1234", "text stays text");
        assert_eq!(config.models.threads, Some(4));
        assert_eq!(config.home, PathBuf::from("/srv/msaas"));
        assert_eq!(config.models.device, Device::Cuda);
        assert_eq!(
            config.models.jobs_in_flight(),
            2,
            "CUDA overlaps transfers by default"
        );
        assert_eq!(
            config.events.nats_url.as_deref(),
            Some("nats://127.0.0.1:4222")
        );

        // Flags over environment.
        config
            .apply_overrides([
                ("limits.max_duration_secs", "60"),
                ("models.default_model", "mdx"),
            ])
            .unwrap();
        assert_eq!(config.limits.max_duration_secs, 60.0);
        assert_eq!(config.models.default_model, "mdx");
        assert_eq!(config.worker.max_attempts, 7, "from the environment");
        config.validate().unwrap();

        // Paths derived from home at load, unless set.
        assert_eq!(config.models.dir, PathBuf::from("/srv/msaas/models"));
        assert_eq!(config.models_dir(), PathBuf::from("/srv/msaas/models"));
        // On CUDA, the GPU build that `tools/setup --cuda` installs in its own folder.
        assert_eq!(
            config.models.ort_library,
            PathBuf::from("/srv/msaas/lib/cuda/libonnxruntime.so.1.31.1")
        );
        assert_eq!(
            config.ort_library(),
            PathBuf::from("/srv/msaas/lib/cuda/libonnxruntime.so.1.31.1")
        );
        // A device flag re-derives a derived library path.
        config.set_device(Device::Cpu);
        assert_eq!(
            config.ort_library(),
            PathBuf::from("/srv/msaas/lib/libonnxruntime.so.1.31.1")
        );
        assert_eq!(config.storage_dir(), PathBuf::from("/srv/msaas/data"));
        assert_eq!(config.storage.dir, PathBuf::from("/srv/msaas/data"));
        let set_dir = Config::load_from(
            Some(&file),
            env(&[
                ("MSAAS_HOME", "/srv/msaas"),
                ("MSAAS_MODELS__DIR", "/models"),
            ]),
        )
        .unwrap();
        assert_eq!(set_dir.models.dir, PathBuf::from("/models"));
    }

    #[test]
    fn home_follows_the_data_dir_convention() {
        let xdg = Config::load_from(
            Some(&write(tempfile::tempdir().unwrap().path(), "")),
            env(&[("XDG_DATA_HOME", "/xdg"), ("HOME", "/home/u")]),
        );
        // An empty file is a valid file.
        assert_eq!(xdg.unwrap().home, PathBuf::from("/xdg/msaas"));
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), "");
        let home = Config::load_from(Some(&file), env(&[("HOME", "/home/u")])).unwrap();
        assert_eq!(home.home, PathBuf::from("/home/u/.local/share/msaas"));
        let explicit = Config::load_from(
            Some(&file),
            env(&[("HOME", "/home/u"), ("MSAAS_HOME", "/data")]),
        )
        .unwrap();
        assert_eq!(explicit.home_dir(), PathBuf::from("/data"));
    }

    #[test]
    fn bad_file_names_the_file_and_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let typo = write(dir.path(), "[limits]\nmax_duraton_secs = 5\n");
        let message = Config::load_from(Some(&typo), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(message.contains("msaas.toml"), "{message}");
        assert!(message.contains("max_duraton_secs"), "{message}");

        let wrong_type = write(dir.path(), "[worker]\nmax_attempts = \"many\"\n");
        let message = Config::load_from(Some(&wrong_type), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(message.contains("max_attempts"), "{message}");

        let missing = dir.path().join("absent.toml");
        assert!(matches!(
            Config::load_from(Some(&missing), env(&[])),
            Err(ConfigError::Read { .. })
        ));
    }

    #[test]
    fn bad_environment_names_the_variable() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), "");
        let err = Config::load_from(
            Some(&file),
            env(&[
                ("MSAAS_WORKER__MAX_ATTEMPTS", "three"),
                ("MSAAS_LIMITS__MAX_DURATON_SECS", "5"),
                ("MSAAS_MODELS__DEVICE", "tpu"),
            ]),
        )
        .unwrap_err();
        let ConfigError::Invalid(problems) = err else {
            panic!("expected Invalid, got {err}");
        };
        assert_eq!(problems.len(), 3, "{problems:#?}");
        assert!(
            problems
                .iter()
                .any(|p| p.contains("MSAAS_WORKER__MAX_ATTEMPTS") && p.contains("three"))
        );
        assert!(problems.iter().any(
            |p| p.contains("MSAAS_LIMITS__MAX_DURATON_SECS") && p.contains("max_duraton_secs")
        ));
        assert!(
            problems
                .iter()
                .any(|p| p.contains("MSAAS_MODELS__DEVICE") && p.contains("tpu"))
        );
    }

    #[test]
    fn set_leaves_the_config_unchanged_on_error() {
        let mut config = Config::default();
        let before = config.clone();
        assert!(config.set("worker.max_attempts", "-1").is_err());
        assert!(config.set("nope", "1").is_err());
        assert!(config.set("worker..x", "1").is_err());
        assert!(config.set("model.inner", "1").is_err());
        assert_eq!(config, before);
        config.set("storage.s3.path_style", "false").unwrap();
        config.set("queue.url", "redis://127.0.0.1:6379").unwrap();
        config.set("storage.dir", "/tmp/store").unwrap();
        assert!(!config.storage.s3.path_style);
        assert_eq!(config.queue.url.as_deref(), Some("redis://127.0.0.1:6379"));
        assert_eq!(config.storage.dir, PathBuf::from("/tmp/store"));
    }

    #[test]
    fn validate_reports_every_problem_with_key_and_value() {
        let mut config = Config::default();
        config
            .apply_overrides([
                ("models.default_model", " "),
                ("models.threads", "0"),
                ("models.batch_size", "0"),
                ("models.in_flight", "0"),
                ("models.device_memory_limit", "4096"),
                ("limits.max_duration_secs", "0"),
                ("limits.max_channels", "0"),
                ("limits.max_skipped_fraction", "1.5"),
                ("storage.kind", "s3"),
                ("queue.kind", "redis"),
                ("events.nats_url", "http://nats"),
                ("worker.max_attempts", "0"),
                ("worker.backoff_base_ms", "5000"),
                ("worker.backoff_max_ms", "100"),
                ("server.listen", "localhost"),
                ("server.max_connections", "0"),
                (
                    "server.cors_origins",
                    "[\"https://ok.example\", \"ftp://x\"]",
                ),
            ])
            .unwrap();
        let ConfigError::Invalid(problems) = config.validate().unwrap_err() else {
            panic!("expected Invalid");
        };
        let expected = [
            "models.default_model = \" \": must name a model",
            "models.threads = 0: must be at least 1 (leave it unset to use every core)",
            "models.device_memory_limit = 4096: must be at least 67108864 (64 MiB); it is in bytes",
            "models.batch_size = 0: must be at least 1 (leave it unset for the device's default)",
            "models.in_flight = 0: must be at least 1 (leave it unset for the device's default)",
            "limits.max_duration_secs = 0.0: must be a positive number of seconds",
            "limits.max_channels = 0: must be at least 1",
            "limits.max_skipped_fraction = 1.5: must be between 0 and 1",
            "storage.s3.bucket = \"\": must be set when storage.kind = \"s3\"",
            "queue.url = None: must be set when queue.kind = \"redis\" (redis://host:port)",
            "events.nats_url = \"http://nats\": must start with nats:// or tls://",
            "worker.max_attempts = 0: must be at least 1",
            "worker.backoff_max_ms = 100: must not be less than worker.backoff_base_ms (5000)",
            "server.listen = \"localhost\": must be an address and port, e.g. 127.0.0.1:8080 or [::]:8080",
            "server.max_connections = 0: must be at least 1",
            "server.cors_origins = \"ftp://x\": each must be an origin (https://host[:port], no path) or *",
        ];
        for line in expected {
            assert!(
                problems.iter().any(|p| p == line),
                "missing {line:?} in {problems:#?}"
            );
        }
        assert_eq!(problems.len(), expected.len(), "{problems:#?}");

        let mut short = Config::default();
        short.limits.min_duration_secs = 20_000.0;
        let message = short.validate().unwrap_err().to_string();
        assert!(
            message.contains("limits.min_duration_secs = 20000.0: must be less than limits.max_duration_secs (10800)"),
            "{message}"
        );
    }
}
