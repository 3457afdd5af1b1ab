//! The client commands (`msaas submit | status | fetch`): talk to a running `msaas serve` /
//! `msaas ingest` over its HTTP API (DESIGN.md "The contract users see").
//!
//! Output is meant for scripts: `submit` prints the job id (or, with `--json`, the job), `status`
//! one line `ID STATE [CODE]` (or the job JSON), `fetch` one line per file written. Progress and
//! transitions go to stderr.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use futures::StreamExt as _;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;
use tokio::io::AsyncWriteExt as _;

/// Where the API is and who is asking.
#[derive(Debug, Clone, Args)]
pub struct Server {
    /// Base URL of the API (`msaas serve` / `msaas ingest`).
    #[arg(long, env = "MSAAS_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// API key (`Authorization: Bearer`).
    #[arg(long, env = "MSAAS_API_KEY", hide_env_values = true)]
    key: Option<String>,
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// Audio file to separate.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    #[command(flatten)]
    server: Server,
    /// Model name (see `GET /v1/models`); default: the server's.
    #[arg(long, short = 'n')]
    model: Option<String>,
    /// Only these stems, comma-separated.
    #[arg(long, value_name = "LIST")]
    stems: Option<String>,
    /// This stem and the sum of the others.
    #[arg(long, value_name = "STEM")]
    two_stems: Option<String>,
    /// wav, flac or mp3.
    #[arg(long)]
    format: Option<String>,
    /// MP3 bit rate in kbit/s.
    #[arg(long, value_name = "KBPS")]
    bitrate: Option<u16>,
    /// URL POSTed the job JSON when it ends.
    #[arg(long, value_name = "URL")]
    callback_url: Option<String>,
    /// Sent as `Idempotency-Key`: a retried submit with the same key gets the same job.
    #[arg(long, value_name = "KEY")]
    idempotency_key: Option<String>,
    /// Follow the job's events until it ends; exit 0 when done, 1 when it failed.
    #[arg(long)]
    wait: bool,
    /// Print the job as JSON instead of its id.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Job id.
    id: String,
    #[command(flatten)]
    server: Server,
    /// Print the job as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct FetchArgs {
    /// Job id.
    id: String,
    #[command(flatten)]
    server: Server,
    /// Directory the stems are written to (`DIR/<stem>.<ext>`).
    #[arg(long, short, value_name = "DIR")]
    out: PathBuf,
}

struct Api {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
}

impl Api {
    fn new(server: &Server) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Self {
            http,
            base: server.url.trim_end_matches('/').to_owned(),
            key: server.key.clone(),
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.authorized(self.http.request(method, format!("{}{path}", self.base)))
    }

    fn authorized(&self, builder: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.key {
            Some(key) => builder.bearer_auth(key),
            None => builder,
        }
    }

    async fn send(&self, builder: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let response = builder
            .send()
            .await
            .with_context(|| format!("cannot reach {}", self.base))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        bail!("{}", api_error_text(status, &body))
    }

    async fn job(&self, id: &str) -> anyhow::Result<Value> {
        let response = self
            .send(self.request(reqwest::Method::GET, &format!("/v1/jobs/{id}")))
            .await?;
        let body: Value = response.json().await.context("the job is not JSON")?;
        Ok(job_of(body))
    }
}

/// `HTTP 404: not_found: no such job` from the API's `{"error":{"code","message"}}`.
fn api_error_text(status: reqwest::StatusCode, body: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    match error {
        Some(error) => format!(
            "HTTP {}: {}: {}",
            status.as_u16(),
            error.get("code").and_then(Value::as_str).unwrap_or("error"),
            error.get("message").and_then(Value::as_str).unwrap_or("")
        ),
        None => format!("HTTP {}: {}", status.as_u16(), body.trim()),
    }
}

/// The job object of an answer: the answer itself, or its `job` member.
fn job_of(body: Value) -> Value {
    match body.get("job") {
        Some(job) if job.is_object() => job.clone(),
        _ => body,
    }
}

fn str_field<'a>(job: &'a Value, name: &str) -> &'a str {
    job.get(name).and_then(Value::as_str).unwrap_or("")
}

/// `code: message` of a failed job.
fn job_error(job: &Value) -> String {
    match job.get("error") {
        Some(error) if error.is_object() => format!(
            "{}: {}",
            str_field(error, "code"),
            str_field(error, "message")
        ),
        _ => str_field(job, "state").to_owned(),
    }
}

pub async fn submit(args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let api = Api::new(&args.server)?;
    let file = tokio::fs::File::open(&args.file)
        .await
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let size = file
        .metadata()
        .await
        .with_context(|| format!("cannot read {}", args.file.display()))?
        .len();

    // The server refuses bad options before reading the body, closing the connection while
    // the upload is still being written, which surfaces as a broken pipe rather than its
    // answer; an unknown model (the likeliest mistake) is caught here with the API's code.
    if let Some(model) = &args.model {
        check_model(&api, model).await?;
    }
    let mut query: Vec<(&str, String)> = Vec::new();
    if let Some(model) = &args.model {
        query.push(("model", model.clone()));
    }
    if let Some(stems) = &args.stems {
        query.push(("stems", stems.clone()));
    }
    if let Some(stem) = &args.two_stems {
        query.push(("two_stems", stem.clone()));
    }
    if let Some(format) = &args.format {
        query.push(("format", format.clone()));
    }
    if let Some(bitrate) = args.bitrate {
        query.push(("bitrate", bitrate.to_string()));
    }
    if let Some(url) = &args.callback_url {
        query.push(("callback_url", url.clone()));
    }
    let name = args
        .file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !name.is_empty() {
        query.push(("filename", name.clone()));
    }

    let bar = upload_bar(size, &name);
    let counted = {
        let bar = bar.clone();
        tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024).map(move |chunk| {
            if let Ok(bytes) = &chunk {
                bar.advance(bytes.len() as u64);
            }
            chunk
        })
    };
    let mut url = reqwest::Url::parse(&format!("{}/v1/jobs", api.base))
        .with_context(|| format!("bad --url {:?}", api.base))?;
    url.query_pairs_mut().extend_pairs(&query);
    let mut request = api
        .authorized(api.http.post(url))
        .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
        .header(reqwest::header::CONTENT_LENGTH, size)
        .body(reqwest::Body::wrap_stream(counted));
    if let Some(key) = &args.idempotency_key {
        request = request.header("Idempotency-Key", key);
    }
    let response = api.send(request).await;
    bar.finish();
    let job = job_of(response?.json().await.context("the answer is not JSON")?);
    let id = str_field(&job, "id").to_owned();
    if id.is_empty() {
        bail!("the server answered without a job id: {job}");
    }
    if !args.wait {
        print_job(&job, args.json)?;
        return Ok(ExitCode::SUCCESS);
    }
    if !args.json {
        println!("{id}");
    }
    let job = follow(&api, &id).await?;
    if args.json {
        print_job(&job, true)?;
    }
    Ok(exit_for(&job))
}

/// `unknown_model` unless `GET /v1/models` lists `model` (a manifest path is the server's
/// business: passed through).
async fn check_model(api: &Api, model: &str) -> anyhow::Result<()> {
    if model.contains('/') {
        return Ok(());
    }
    let models: Value = api
        .send(api.request(reqwest::Method::GET, "/v1/models"))
        .await?
        .json()
        .await
        .context("the model list is not JSON")?;
    let names: Vec<&str> = models
        .get("models")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(|m| m.get("name").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default();
    if names.is_empty() || names.contains(&model) {
        return Ok(());
    }
    bail!(
        "unknown_model: the server has no model {model:?} (it has: {})",
        names.join(", ")
    )
}

fn print_job(job: &Value, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(job)?);
    } else {
        println!("{}", str_field(job, "id"));
    }
    Ok(())
}

fn exit_for(job: &Value) -> ExitCode {
    match str_field(job, "state") {
        "done" => ExitCode::SUCCESS,
        _ => {
            eprintln!("error: job {} {}", str_field(job, "id"), job_error(job));
            ExitCode::from(1)
        }
    }
}

/// The upload's progress: a bar on a terminal, a line per quarter otherwise.
#[derive(Clone)]
struct UploadBar {
    bar: Option<ProgressBar>,
    total: u64,
    sent: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

fn upload_bar(total: u64, name: &str) -> UploadBar {
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        // The template is a constant; a bad one only loses the decoration.
        if let Ok(style) = ProgressStyle::with_template(
            "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(name.to_owned());
        bar
    });
    UploadBar {
        bar,
        total,
        sent: std::sync::Arc::default(),
    }
}

impl UploadBar {
    fn advance(&self, bytes: u64) {
        use std::sync::atomic::Ordering;
        let before = self.sent.fetch_add(bytes, Ordering::Relaxed);
        let after = before + bytes;
        match &self.bar {
            Some(bar) => bar.set_position(after),
            None if self.total > 0 => {
                let quarter = |n: u64| n.saturating_mul(4) / self.total;
                if quarter(after) > quarter(before) {
                    eprintln!("uploaded {after} of {} bytes", self.total);
                }
            }
            None => {}
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Follows `GET /v1/jobs/{id}/events` until the job ends, printing each transition to stderr;
/// returns the final record. When the stream breaks, the record is re-read and the stream
/// reopened (events are best effort; the record is the truth).
async fn follow(api: &Api, id: &str) -> anyhow::Result<Value> {
    let mut failures = 0u32;
    loop {
        let job = api.job(id).await?;
        if is_terminal(str_field(&job, "state")) {
            // The stream ended (or never opened) before its terminal event: the record says it.
            eprintln!("{}", str_field(&job, "state"));
            return Ok(job);
        }
        match follow_stream(api, id).await {
            Ok(Some(job)) if is_terminal(str_field(&job, "state")) => return Ok(job),
            Ok(_) => failures = 0,
            Err(err) => {
                failures += 1;
                tracing::warn!("event stream of {id} broke: {err:#}");
                if failures > 30 {
                    return Err(err.context("the event stream keeps failing"));
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

fn is_terminal(state: &str) -> bool {
    matches!(state, "done" | "failed" | "cancelled")
}

/// Reads one SSE connection; returns the last job snapshot seen when it ends.
async fn follow_stream(api: &Api, id: &str) -> anyhow::Result<Option<Value>> {
    let response = api
        .send(
            api.request(reqwest::Method::GET, &format!("/v1/jobs/{id}/events"))
                .header(reqwest::header::ACCEPT, "text/event-stream"),
        )
        .await?;
    let mut body = response.bytes_stream();
    let mut buffer: Vec<u8> = Vec::new();
    let mut event_name = String::new();
    let mut data = String::new();
    let mut last_job: Option<Value> = None;
    while let Some(chunk) = body.next().await {
        buffer.extend_from_slice(&chunk.context("reading the event stream")?);
        while let Some(end) = buffer.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if !data.is_empty()
                    && let Some(job) = show_event(&event_name, &data)
                {
                    let state = str_field(&job, "state").to_owned();
                    last_job = Some(job);
                    if is_terminal(&state) {
                        if event_name != state {
                            // e.g. the last stage's `stage_finished` already shows `done`.
                            eprintln!("{state}");
                        }
                        return Ok(last_job);
                    }
                }
                event_name.clear();
                data.clear();
            } else if let Some(value) = line.strip_prefix("event:") {
                event_name = value.trim().to_owned();
            } else if let Some(value) = line.strip_prefix("data:") {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(value.strip_prefix(' ').unwrap_or(value));
            }
        }
    }
    Ok(last_job)
}

/// Prints one event line to stderr; returns the job snapshot it carries, if any.
fn show_event(name: &str, data: &str) -> Option<Value> {
    let value: Value = serde_json::from_str(data).ok()?;
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or(name)
        .to_owned();
    let stage = value.get("stage").and_then(Value::as_str).unwrap_or("");
    match value.get("progress") {
        Some(progress) if progress.is_object() => eprintln!(
            "{kind} {stage} {}/{}",
            progress.get("done").and_then(Value::as_u64).unwrap_or(0),
            progress.get("total").and_then(Value::as_u64).unwrap_or(0)
        ),
        _ => eprintln!("{kind} {stage}"),
    }
    match value.get("job") {
        Some(job) if job.is_object() => Some(job.clone()),
        // A plain job snapshot as the event itself.
        _ if value.get("state").is_some() => Some(value),
        _ => None,
    }
}

pub async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let api = Api::new(&args.server)?;
    let job = api.job(&args.id).await?;
    if args.json {
        println!("{}", serde_json::to_string(&job)?);
    } else {
        let state = str_field(&job, "state");
        match job.get("error") {
            Some(error) if error.is_object() => {
                println!("{} {state} {}", args.id, str_field(error, "code"));
            }
            _ => println!("{} {state}", args.id),
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn fetch(args: FetchArgs) -> anyhow::Result<ExitCode> {
    let api = Api::new(&args.server)?;
    let job = api.job(&args.id).await?;
    if str_field(&job, "state") != "done" {
        eprintln!(
            "error: job {} is {}, no stems to fetch ({})",
            args.id,
            str_field(&job, "state"),
            job_error(&job)
        );
        return Ok(ExitCode::from(1));
    }
    let stems = stem_names(&job);
    if stems.is_empty() {
        bail!("job {} is done but lists no stems: {job}", args.id);
    }
    let extension = job
        .pointer("/options/output/format")
        .or_else(|| job.get("format"))
        .and_then(Value::as_str)
        .unwrap_or("wav")
        .to_owned();
    tokio::fs::create_dir_all(&args.out)
        .await
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    for stem in stems {
        let path = args.out.join(format!("{stem}.{extension}"));
        let response = api
            .send(api.request(
                reqwest::Method::GET,
                &format!("/v1/jobs/{}/stems/{stem}", args.id),
            ))
            .await?;
        download(response, &path).await?;
        println!("{}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// The stem names of a job: its `stems` list (names, or objects with a `name`).
fn stem_names(job: &Value) -> Vec<String> {
    let from_list = job
        .get("stems")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(|s| {
                    s.as_str()
                        .or_else(|| s.get("name").and_then(Value::as_str))
                        .map(str::to_owned)
                })
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    if !from_list.is_empty() {
        return from_list;
    }
    job.get("results")
        .and_then(Value::as_object)
        .map(|results| results.keys().cloned().collect())
        .unwrap_or_default()
}

/// Streams a body to `path` through a temporary file beside it: the file appears whole or not at all.
async fn download(response: reqwest::Response, path: &Path) -> anyhow::Result<()> {
    let partial = path.with_extension("partial");
    let mut file = tokio::fs::File::create(&partial)
        .await
        .with_context(|| format!("cannot create {}", partial.display()))?;
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.with_context(|| format!("downloading {}", path.display()))?;
        file.write_all(&chunk)
            .await
            .with_context(|| format!("cannot write {}", partial.display()))?;
    }
    file.flush().await?;
    file.sync_all().await?;
    drop(file);
    tokio::fs::rename(&partial, path)
        .await
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_errors_show_their_code() {
        let text = api_error_text(
            reqwest::StatusCode::NOT_FOUND,
            r#"{"error":{"code":"not_found","message":"no such job"}}"#,
        );
        assert_eq!(text, "HTTP 404: not_found: no such job");
        assert_eq!(
            api_error_text(reqwest::StatusCode::BAD_GATEWAY, "upstream down\n"),
            "HTTP 502: upstream down"
        );
    }

    #[test]
    fn stems_come_from_the_list_or_the_results() {
        let job = serde_json::json!({"stems": ["vocals", {"name": "drums"}]});
        assert_eq!(stem_names(&job), ["vocals", "drums"]);
        let job = serde_json::json!({"stems": [], "results": {"a": "k1", "b": "k2"}});
        assert_eq!(stem_names(&job), ["a", "b"]);
    }

    #[test]
    fn events_carry_their_job() {
        let job = show_event(
            "done",
            r#"{"kind":"done","job_id":"x","job":{"id":"x","state":"done"},"at_ms":1}"#,
        )
        .expect("job");
        assert_eq!(str_field(&job, "state"), "done");
        assert!(
            show_event(
                "progress",
                r#"{"kind":"progress","progress":{"done":1,"total":4}}"#
            )
            .is_none()
        );
        assert!(show_event("x", "not json").is_none());
    }
}
