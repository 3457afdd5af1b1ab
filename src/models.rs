//! `msaas models`: what is installed and what can be pulled; `models pull NAME` downloads the
//! official files (Hugging Face first, the legacy host second), verifies and converts them;
//! `models import FILE...` converts local files, for machines without access to those hosts.
//! The catalogue, the checks, the conversion and the atomic install are `separate::catalogue`;
//! this file is the command line and the downloads.

use std::fmt::Write as _;
use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use pipeline::config::Config;
use separate::catalogue::{
    BagSpec, Catalogue, CatalogueError, CatalogueModel, ImportOptions, RemoteFile, WEIGHTS_LICENCE,
};

#[derive(Debug, Args)]
pub struct ModelsArgs {
    #[command(subcommand)]
    command: Option<ModelsCommand>,
    /// A catalogue file replacing the built-in one (default: models.catalogue).
    #[arg(long, global = true)]
    catalogue: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum ModelsCommand {
    /// What is installed and what can be pulled (the default).
    List,
    /// Download a catalogue model's official files, verify and convert them, install it.
    Pull(PullArgs),
    /// Convert local checkpoint files (.safetensors / .th, or a bag .yaml beside them) and
    /// install them: the offline way.
    Import(ImportArgs),
}

#[derive(Debug, Args)]
struct PullArgs {
    /// Catalogue name (htdemucs, htdemucs_ft, htdemucs_6s).
    name: String,
    /// Base URL replacing Hugging Face: files at URL/<repo>/resolve/main/<file> (a mirror or an
    /// internal artifact store). Default: models.pull_from.
    #[arg(long = "from")]
    from: Option<String>,
    /// Base URL replacing the legacy host: files at URL/hybrid_transformer/<sig>-<sha8>.th.
    /// Default: models.legacy_from.
    #[arg(long)]
    legacy_from: Option<String>,
    /// Do nothing when the model is installed already (for provisioning jobs that rerun).
    #[arg(long)]
    skip_installed: bool,
}

#[derive(Debug, Args)]
struct ImportArgs {
    /// Checkpoints, one per bag member in order; or one bag .yaml whose members
    /// (<sig>.safetensors or <sig>-<sha8>.th) lie beside it.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Installed name (default: the catalogue model these files are, else the first file's stem).
    #[arg(long)]
    name: Option<String>,
    /// Per-member, per-source bag weights as JSON ([[1,0,0,0],...]).
    #[arg(long)]
    weights: Option<String>,
}

/// How long a download may wait for the next bytes before it resumes on a new connection.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Connections one file may take (each resumes where the last one stopped).
const DOWNLOAD_ATTEMPTS: u32 = 5;

pub async fn run(config_path: Option<&Path>, args: ModelsArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(config_path)?;
    config.validate()?;
    let catalogue = match args.catalogue.or_else(|| config.models.catalogue.clone()) {
        Some(path) => Catalogue::load(&path),
        None => Ok(Catalogue::builtin()),
    };
    let result = match catalogue {
        Err(err) => Err(err),
        Ok(catalogue) => match args.command.unwrap_or(ModelsCommand::List) {
            ModelsCommand::List => return list(&config, &catalogue),
            ModelsCommand::Pull(pull_args) => pull(&config, &catalogue, pull_args).await,
            ModelsCommand::Import(import_args) => import(&config, &catalogue, import_args),
        },
    };
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(err) => {
            eprintln!("error [{}]: {err}", err.code());
            Ok(ExitCode::from(1))
        }
    }
}

fn list(config: &Config, catalogue: &Catalogue) -> anyhow::Result<ExitCode> {
    let dir = config.models_dir();
    let names = separate::installed_models(&dir);
    // The listing is written in one piece at the end: a reader that stops early (`| head`,
    // `| grep -q`) then costs nothing, where line-by-line printing would hit a closed pipe.
    let mut out = String::new();
    let mut broken = false;
    if names.is_empty() {
        eprintln!(
            "no models installed in {}; run tools/setup to install the default ({}), or \
             `msaas models pull NAME`",
            dir.display(),
            config.models.default_model
        );
    } else {
        let _ = writeln!(out, "installed in {}:", dir.display());
    }
    for name in &names {
        let default = if *name == config.models.default_model {
            " (default)"
        } else {
            ""
        };
        match separate::Manifest::load(&dir.join(name).join("manifest.toml")) {
            Ok(manifest) => {
                _ = writeln!(
                    out,
                    "  {name}{default}\t{}\t{}\t{}",
                    manifest.family.as_str(),
                    manifest.sources.join(","),
                    human_bytes(folder_bytes(&dir.join(name))),
                )
            }
            Err(err) => {
                broken = true;
                eprintln!("error: model {name}: {err}");
            }
        }
    }
    let _ = writeln!(out, "can be pulled (`msaas models pull NAME`):");
    for model in &catalogue.models {
        let state = match (&model.unsupported, names.contains(&model.name)) {
            (Some(_), _) => "not supported".to_owned(),
            (None, true) => "installed".to_owned(),
            (None, false) => model.approx_download_bytes.map_or_else(
                || "size unknown".to_owned(),
                |b| format!("~{}", human_bytes(b)),
            ),
        };
        let source = model
            .hf_repo
            .as_deref()
            .map_or_else(|| "legacy host".to_owned(), |repo| format!("hf:{repo}"));
        let _ = writeln!(
            out,
            "  {}\t{}\t{state}\t{source}\t{}",
            model.name,
            model.sources.join(","),
            model.unsupported.as_deref().unwrap_or(&model.description)
        );
    }
    let _ = writeln!(out, "weights: {WEIGHTS_LICENCE}");
    let _ = std::io::stdout().lock().write_all(out.as_bytes());
    // Exit status 1 when nothing is installed: scripts ask "is there a model?" this way.
    Ok(if broken || names.is_empty() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

async fn pull(
    config: &Config,
    catalogue: &Catalogue,
    args: PullArgs,
) -> Result<(), CatalogueError> {
    let model = catalogue.find(&args.name)?;
    model.check_supported()?;
    let installed = config.models_dir().join(&model.name).join("manifest.toml");
    if args.skip_installed && installed.is_file() {
        println!(
            "{} is installed already ({})",
            model.name,
            installed.display()
        );
        return Ok(());
    }
    eprintln!("{}: {WEIGHTS_LICENCE}", model.name);
    let hf_base = args
        .from
        .or_else(|| config.models.pull_from.clone())
        .unwrap_or_else(|| separate::catalogue::DEFAULT_HF_BASE.to_owned());
    let legacy_base = args
        .legacy_from
        .or_else(|| config.models.legacy_from.clone())
        .unwrap_or_else(|| separate::catalogue::DEFAULT_LEGACY_BASE.to_owned());
    let downloads = config.download_dir().join(&model.name);
    let client = http_client()?;

    let from_hf = match model.hf_yaml_path() {
        Some(yaml_path) => fetch_from_hf(&client, model, &hf_base, &yaml_path, &downloads).await,
        None => Err(CatalogueError::InvalidCatalogue(format!(
            "{} names no Hugging Face repository",
            model.name
        ))),
    };
    let (files, weights, segment, source) = match from_hf {
        Ok((files, bag)) => (files, bag.weights, bag.segment, hf_base.clone()),
        Err(err) if falls_back(&err) && !model.legacy_files.is_empty() => {
            eprintln!(
                "{}: Hugging Face did not serve it ({err}); trying the legacy files",
                model.name
            );
            let mut files = Vec::new();
            for remote in model.legacy_files() {
                files.push(download(&client, &legacy_base, &remote, &downloads).await?);
            }
            (files, model.weights.clone(), None, legacy_base.clone())
        }
        Err(err) => return Err(err),
    };
    eprintln!("{}: converting {} file(s)", model.name, files.len());
    let manifest = separate::catalogue::import(
        &files,
        &ImportOptions {
            python: config.converter_python(),
            models_dir: config.models_dir(),
            name: model.name.clone(),
            weights,
            segment,
            source: format!("{source} ({})", model.name),
        },
    )?;
    let _ = std::fs::remove_dir_all(&downloads);
    println!(
        "installed {} at {} (stems: {})",
        manifest.name,
        manifest.dir.display(),
        manifest.sources.join(", ")
    );
    Ok(())
}

/// Network and HTTP failures send a pull to the legacy host, as demucs does; a file that
/// arrived but is wrong does not.
fn falls_back(err: &CatalogueError) -> bool {
    matches!(
        err,
        CatalogueError::HostUnreachable { .. }
            | CatalogueError::Http { .. }
            | CatalogueError::InvalidCatalogue(_)
    )
}

async fn fetch_from_hf(
    client: &reqwest::Client,
    model: &CatalogueModel,
    base: &str,
    yaml_path: &str,
    downloads: &Path,
) -> Result<(Vec<PathBuf>, BagSpec), CatalogueError> {
    let url = join_url(base, yaml_path);
    let yaml = fetch_small(client, &url).await?;
    let bag = BagSpec::parse(&yaml)?;
    let mut files = Vec::new();
    for remote in model.hf_files(&bag) {
        files.push(download(client, base, &remote, downloads).await?);
    }
    Ok((files, bag))
}

fn http_client() -> Result<reqwest::Client, CatalogueError> {
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .redirect(reqwest::redirect::Policy::limited(10))
        .user_agent(concat!("msaas/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| CatalogueError::io("building the HTTP client", std::io::Error::other(e)))
}

fn join_url(base: &str, path: &str) -> String {
    format!(
        "{}/{}",
        base.trim_end_matches('/'),
        path.trim_start_matches('/')
    )
}

fn unreachable(url: &str, err: &reqwest::Error) -> CatalogueError {
    let mut reason = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        reason = format!("{reason}: {cause}");
        source = cause.source();
    }
    CatalogueError::HostUnreachable {
        url: url.to_owned(),
        reason,
    }
}

/// A small text file (the bag yaml), whole.
async fn fetch_small(client: &reqwest::Client, url: &str) -> Result<String, CatalogueError> {
    const LIMIT: usize = 1 << 20;
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|e| unreachable(url, &e))?;
    if !response.status().is_success() {
        return Err(CatalogueError::Http {
            url: url.to_owned(),
            status: response.status().as_u16(),
        });
    }
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        body.extend_from_slice(&chunk.map_err(|e| unreachable(url, &e))?);
        if body.len() > LIMIT {
            return Err(CatalogueError::CorruptCheckpoint(format!(
                "{url} is over {LIMIT} bytes: not a bag yaml"
            )));
        }
    }
    String::from_utf8(body)
        .map_err(|_| CatalogueError::CorruptCheckpoint(format!("{url} is not UTF-8 text")))
}

/// Downloads `remote` into `dir`, resuming a `.part` a previous run or connection left, then
/// verifies it. Returns the finished file.
async fn download(
    client: &reqwest::Client,
    base: &str,
    remote: &RemoteFile,
    dir: &Path,
) -> Result<PathBuf, CatalogueError> {
    let url = join_url(base, &remote.path);
    let target = dir.join(&remote.file_name);
    let part = dir.join(format!("{}.part", remote.file_name));
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| CatalogueError::io(format!("creating {}", dir.display()), e))?;
    if target.is_file() {
        match separate::catalogue::verify(&target, &remote.file_name, &remote.expected) {
            Ok(()) => return Ok(target),
            Err(err) => tracing::info!(%err, "cached download is stale; fetching again"),
        }
    }
    let progress = DownloadProgress::new(&remote.file_name, remote.expected.size);
    let mut attempt = 0;
    loop {
        attempt += 1;
        match download_once(client, &url, &part, &progress).await {
            Ok(()) => break,
            Err(Interrupted::Fatal(err)) => {
                progress.finish("failed");
                return Err(err);
            }
            Err(Interrupted::Retry(err)) if attempt >= DOWNLOAD_ATTEMPTS => {
                progress.finish("failed");
                return Err(err);
            }
            Err(Interrupted::Retry(err)) => {
                progress.note(&format!("connection lost ({err}); resuming"));
                tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
            }
        }
    }
    progress.finish("done");
    separate::catalogue::verify(&part, &remote.file_name, &remote.expected)?;
    tokio::fs::rename(&part, &target)
        .await
        .map_err(|e| CatalogueError::io(format!("renaming {}", part.display()), e))?;
    Ok(target)
}

enum Interrupted {
    /// The connection broke: resume on a new one.
    Retry(CatalogueError),
    /// Retrying cannot help (404, disk full, nothing listening).
    Fatal(CatalogueError),
}

async fn download_once(
    client: &reqwest::Client,
    url: &str,
    part: &Path,
    progress: &DownloadProgress,
) -> Result<(), Interrupted> {
    let have = tokio::fs::metadata(part).await.map_or(0, |m| m.len());
    let mut request = client.get(url);
    if have > 0 {
        request = request.header(reqwest::header::RANGE, format!("bytes={have}-"));
    }
    let response = request.send().await.map_err(|e| {
        let err = unreachable(url, &e);
        // Refused or unresolvable at the first byte: the host is not there.
        if have == 0 && (e.is_connect() || e.is_builder()) {
            Interrupted::Fatal(err)
        } else {
            Interrupted::Retry(err)
        }
    })?;
    let status = response.status();
    let resumed = status == reqwest::StatusCode::PARTIAL_CONTENT;
    if status == reqwest::StatusCode::RANGE_NOT_SATISFIABLE && have > 0 {
        // The part is already whole; verification decides.
        return Ok(());
    }
    if !status.is_success() {
        let err = CatalogueError::Http {
            url: url.to_owned(),
            status: status.as_u16(),
        };
        return Err(if status.is_server_error() {
            Interrupted::Retry(err)
        } else {
            Interrupted::Fatal(err)
        });
    }
    let offset = if resumed { have } else { 0 };
    let total = response.content_length().map(|len| len + offset);
    progress.start(offset, total);
    let io_error = |what: &str, e: std::io::Error| {
        Interrupted::Fatal(CatalogueError::io(format!("{what} {}", part.display()), e))
    };
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(resumed)
        .truncate(!resumed)
        .open(part)
        .await
        .map_err(|e| io_error("opening", e))?;
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| Interrupted::Retry(unreachable(url, &e)))?;
        tokio::io::AsyncWriteExt::write_all(&mut file, &chunk)
            .await
            .map_err(|e| io_error("writing", e))?;
        progress.advance(chunk.len() as u64);
    }
    tokio::io::AsyncWriteExt::flush(&mut file)
        .await
        .map_err(|e| io_error("writing", e))?;
    let written = tokio::fs::metadata(part).await.map_or(0, |m| m.len());
    match total {
        Some(total) if written < total => {
            Err(Interrupted::Retry(CatalogueError::HostUnreachable {
                url: url.to_owned(),
                reason: format!("the connection closed after {written} of {total} bytes"),
            }))
        }
        _ => Ok(()),
    }
}

/// A bar on a terminal; a line at the start and at the end otherwise.
struct DownloadProgress {
    name: String,
    bar: Option<ProgressBar>,
}

impl DownloadProgress {
    fn new(name: &str, size: Option<u64>) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(size, ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template(
                "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_prefix(name.to_owned());
            bar
        });
        Self {
            name: name.to_owned(),
            bar,
        }
    }

    fn start(&self, offset: u64, total: Option<u64>) {
        match &self.bar {
            Some(bar) => {
                if let Some(total) = total {
                    bar.set_length(total);
                }
                bar.set_position(offset);
            }
            None => {
                let size = total.map_or_else(|| "size unknown".to_owned(), human_bytes);
                let from = if offset > 0 {
                    format!(", resuming at {}", human_bytes(offset))
                } else {
                    String::new()
                };
                eprintln!("downloading {} ({size}{from})", self.name);
            }
        }
    }

    fn advance(&self, bytes: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(bytes);
        }
    }

    fn note(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(format!("{}: {line}", self.name)),
            None => eprintln!("{}: {line}", self.name),
        }
    }

    fn finish(&self, outcome: &str) {
        match &self.bar {
            Some(bar) => bar.finish_with_message(outcome.to_owned()),
            None => eprintln!("{}: {outcome}", self.name),
        }
        let _ = std::io::stderr().flush();
    }
}

fn import(config: &Config, catalogue: &Catalogue, args: ImportArgs) -> Result<(), CatalogueError> {
    let (files, bag) = match args.files.as_slice() {
        [yaml]
            if yaml
                .extension()
                .is_some_and(|ext| ext == "yaml" || ext == "yml") =>
        {
            let text = std::fs::read_to_string(yaml)
                .map_err(|e| CatalogueError::io(format!("reading {}", yaml.display()), e))?;
            let bag = BagSpec::parse(&text)?;
            let dir = yaml.parent().unwrap_or(Path::new("."));
            let files = bag
                .models
                .iter()
                .map(|sig| member_file(dir, sig))
                .collect::<Result<Vec<_>, _>>()?;
            (files, Some(bag))
        }
        files => (files.to_vec(), None),
    };
    for file in &files {
        if !file.is_file() {
            return Err(CatalogueError::InvalidOption(format!(
                "{} is not a file",
                file.display()
            )));
        }
    }
    let signatures: Vec<String> = files.iter().map(|f| signature_of(f)).collect();
    let known = catalogue.by_signatures(&signatures);
    let name = args
        .name
        .or_else(|| known.map(|m| m.name.clone()))
        .unwrap_or_else(|| signatures.first().cloned().unwrap_or_default());
    let weights = match args.weights {
        Some(json) => Some(parse_weights(&json)?),
        None => bag
            .as_ref()
            .and_then(|b| b.weights.clone())
            .or_else(|| known.and_then(|m| m.weights.clone())),
    };
    eprintln!("{name}: {WEIGHTS_LICENCE}");
    let source = files
        .iter()
        .map(|f| f.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let manifest = separate::catalogue::import(
        &files,
        &ImportOptions {
            python: config.converter_python(),
            models_dir: config.models_dir(),
            name,
            weights,
            segment: bag.and_then(|b| b.segment),
            source: format!("imported from {source}"),
        },
    )?;
    println!(
        "installed {} at {} (stems: {})",
        manifest.name,
        manifest.dir.display(),
        manifest.sources.join(", ")
    );
    Ok(())
}

/// `<sig>.safetensors` or `<sig>-<sha8>.th` beside a bag yaml.
fn member_file(dir: &Path, sig: &str) -> Result<PathBuf, CatalogueError> {
    let safetensors = dir.join(format!("{sig}.safetensors"));
    if safetensors.is_file() {
        return Ok(safetensors);
    }
    let prefix = format!("{sig}-");
    let legacy = std::fs::read_dir(dir)
        .map_err(|e| CatalogueError::io(format!("reading {}", dir.display()), e))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".th"))
        });
    legacy.ok_or_else(|| {
        CatalogueError::InvalidOption(format!(
            "the bag lists {sig}, but neither {sig}.safetensors nor {sig}-*.th is in {}",
            dir.display()
        ))
    })
}

/// The signature a checkpoint's name carries (`955717e8` of `955717e8-8726e21a.th`).
fn signature_of(file: &Path) -> String {
    let stem = file
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    match file.extension().and_then(|e| e.to_str()) {
        Some("th") => stem
            .rsplit_once('-')
            .map_or(stem, |(sig, _)| sig)
            .to_owned(),
        _ => stem.to_owned(),
    }
}

fn parse_weights(json: &str) -> Result<Vec<Vec<f32>>, CatalogueError> {
    serde_json::from_str(json).map_err(|e| {
        CatalogueError::InvalidOption(format!(
            "--weights must be JSON rows of numbers ([[1,0,0,0],...]): {e}"
        ))
    })
}

fn folder_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .filter_map(Result::ok)
            .filter_map(|entry| entry.metadata().ok())
            .filter(std::fs::Metadata::is_file)
            .map(|meta| meta.len())
            .sum()
    })
}

fn human_bytes(bytes: u64) -> String {
    const MB: f64 = 1024.0 * 1024.0;
    let bytes = bytes as f64;
    if bytes >= 1024.0 * MB {
        format!("{:.1} GB", bytes / (1024.0 * MB))
    } else {
        format!("{:.1} MB", bytes / MB)
    }
}
