//! The service roles: `msaas serve` (API + every stage + janitor in one process), `msaas ingest`
//! (API + janitor) and `msaas worker <stage>` (one stage, with a small metrics listener).
//! Each stops on SIGTERM / Ctrl-C: workers stop claiming and finish or release the message in
//! hand, the API stops accepting and drains, then the process exits 0.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use pipeline::config::Config;
use pipeline::{Backends, Stage, StageHandler, Worker};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::run::{decode_limits, runtime_options};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// In-memory queue and records, local-directory store, in-process events: no servers.
    #[arg(long)]
    embedded: bool,
    /// Address of the HTTP API (overrides `server.listen`; port 0 picks a free one).
    #[arg(long, value_name = "IP:PORT")]
    listen: Option<String>,
    /// Workers per stage in this process (default 1; separate: `models.in_flight`).
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
}

#[derive(Debug, Args)]
pub struct IngestArgs {
    /// Address of the HTTP API (overrides `server.listen`; port 0 picks a free one).
    #[arg(long, value_name = "IP:PORT")]
    listen: Option<String>,
    /// Do not run the janitor (retention + stale-job sweep) in this process.
    #[arg(long)]
    no_janitor: bool,
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The stage this process runs: decode, separate or encode.
    #[arg(value_name = "STAGE")]
    stage: Stage,
    /// Messages of the stage worked on at once (default 1; separate: `models.in_flight`, 1 on
    /// a CPU and 2 on CUDA, so that fetch and upload overlap the model run).
    #[arg(long, value_name = "N")]
    concurrency: Option<usize>,
    /// Also run the janitor (retention + stale-job sweep) in this process.
    #[arg(long)]
    janitor: bool,
}

/// Cancelled on the first SIGTERM or Ctrl-C; a second one ends the process at once.
fn shutdown_on_signals() -> anyhow::Result<CancellationToken> {
    let token = CancellationToken::new();
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    let cancel = token.clone();
    tokio::spawn(async move {
        let mut signals = 0u32;
        loop {
            tokio::select! {
                _ = terminate.recv() => {}
                result = tokio::signal::ctrl_c() => {
                    if result.is_err() {
                        // No Ctrl-C handler possible: SIGTERM still works.
                        std::future::pending::<()>().await;
                    }
                }
            }
            signals += 1;
            if signals == 1 {
                tracing::info!("shutting down: finishing or releasing the work in hand");
                cancel.cancel();
            } else {
                tracing::warn!("second signal: exiting now");
                std::process::exit(130);
            }
        }
    });
    Ok(token)
}

fn load_config(config_path: Option<&Path>) -> anyhow::Result<Config> {
    let config = Config::load(config_path)?;
    config.validate()?;
    observe::init_logging(observe::LogFormat::Auto, "info")?;
    Ok(config)
}

/// The backends of a role, with the transition hooks every role installs.
async fn backends(config: &Config, embedded: bool) -> anyhow::Result<Backends> {
    let backends = if embedded {
        backends::embedded_from_config(config)?
    } else {
        backends::connect(config).await?
    };
    Ok(crate::services::install_hooks(backends, config))
}

/// The stage code `msaas run` uses, for one stage.
fn handler(config: &Config, stage: Stage) -> Arc<dyn StageHandler> {
    match stage {
        Stage::Decode => Arc::new(decode::DecodeStage::new(decode_limits(&config.limits))),
        Stage::Separate => Arc::new(separate::SeparateStage::new(
            config.models_dir(),
            runtime_options(config),
        )),
        Stage::Encode => Arc::new(encode::EncodeStage::new()),
    }
}

/// Deliveries one process works on at once for `stage`: the flag, else 1, except for separate,
/// whose jobs in flight share one model (and one batch executor) per device.
fn in_flight(config: &Config, stage: Stage, flag: Option<usize>) -> usize {
    flag.unwrap_or(match stage {
        Stage::Separate => config.models.jobs_in_flight(),
        Stage::Decode | Stage::Encode => 1,
    })
}

fn spawn_workers(
    tasks: &mut JoinSet<()>,
    backends: &Backends,
    config: &Config,
    stage: Stage,
    count: usize,
    shutdown: &CancellationToken,
) {
    let handler = handler(config, stage);
    let base = pipeline::config::default_consumer_name();
    for n in 0..count.max(1) {
        let worker = Worker::new(
            backends.clone(),
            handler.clone(),
            config.worker.settings(format!("{base}-{stage}-{n}")),
        );
        let shutdown = shutdown.clone();
        tasks.spawn(async move { worker.run(shutdown).await });
    }
}

/// `serve --embedded` is the laptop mode: with no way to authenticate configured and the API
/// only on loopback, callers are `anonymous`, so that the web page at `/` opens straight away.
/// Anywhere else, or with keys configured, nothing changes.
fn open_on_loopback(config: &mut Config, addr: SocketAddr) {
    let auth = &config.auth;
    let no_auth = auth.keys_file.is_none() && !auth.redis_keys && !auth.anonymous;
    if no_auth && addr.ip().is_loopback() {
        config.auth.anonymous = true;
        tracing::info!(
            %addr,
            "no API keys configured: anonymous access, on loopback only (set auth.keys_file to require keys)"
        );
    }
}

fn listen_address(config: &Config, flag: Option<&str>) -> anyhow::Result<SocketAddr> {
    let text = flag.unwrap_or(&config.server.listen);
    text.parse()
        .with_context(|| format!("server.listen: {text:?} is not an ip:port address"))
}

pub async fn serve(config_path: Option<&Path>, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut config = load_config(config_path)?;
    let addr = listen_address(&config, args.listen.as_deref())?;
    if args.embedded {
        open_on_loopback(&mut config, addr);
    }
    let shutdown = shutdown_on_signals()?;
    let backends = if args.embedded {
        backends(&config, true).await?
    } else {
        let Some(connected) = api_backends(&config, addr, &shutdown).await? else {
            return Ok(ExitCode::SUCCESS);
        };
        crate::services::install_hooks(connected, &config)
    };
    let mut tasks: JoinSet<()> = JoinSet::new();
    for stage in Stage::ALL {
        spawn_workers(
            &mut tasks,
            &backends,
            &config,
            stage,
            in_flight(&config, stage, args.workers),
            &shutdown,
        );
    }
    crate::services::spawn_janitor(&mut tasks, &backends, &config, &shutdown);
    crate::services::spawn_queue_poller(&backends, &config, &shutdown);
    let served = crate::services::start_api(&backends, &config, addr, &shutdown).await?;
    tasks.spawn(served);
    stopped(tasks).await
}

pub async fn ingest(config_path: Option<&Path>, args: IngestArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(config_path)?;
    let addr = listen_address(&config, args.listen.as_deref())?;
    let shutdown = shutdown_on_signals()?;
    let Some(backends) = api_backends(&config, addr, &shutdown).await? else {
        return Ok(ExitCode::SUCCESS);
    };
    let backends = crate::services::install_hooks(backends, &config);
    let mut tasks: JoinSet<()> = JoinSet::new();
    if !args.no_janitor {
        crate::services::spawn_janitor(&mut tasks, &backends, &config, &shutdown);
    }
    crate::services::spawn_queue_poller(&backends, &config, &shutdown);
    let served = crate::services::start_api(&backends, &config, addr, &shutdown).await?;
    tasks.spawn(served);
    stopped(tasks).await
}

pub async fn worker(config_path: Option<&Path>, args: WorkerArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(config_path)?;
    let shutdown = shutdown_on_signals()?;
    // Live (`/healthz`) from the start, ready (`/readyz`) only once the queue answers: a
    // worker whose dependencies are down waits for them instead of exiting (an exit is a
    // CrashLoopBackOff on Kubernetes, whose growing delay outlasts a short outage).
    let ready = Arc::new(AtomicBool::new(false));
    if !config.observe.metrics_listen.is_empty() {
        let addr: SocketAddr = config.observe.metrics_listen.parse().with_context(|| {
            format!(
                "observe.metrics_listen: {:?} is not an ip:port address",
                config.observe.metrics_listen
            )
        })?;
        let flag = ready.clone();
        let check: observe::ReadyCheck = Arc::new(move || flag.load(Ordering::Relaxed));
        let bound = crate::services::serve_metrics(addr, check, &shutdown).await?;
        // Scripts and tests read the port from here when it was 0.
        println!("metrics http://{bound}");
    }
    let Some(backends) = connect_until_up(&config, &shutdown).await? else {
        observe::shutdown_tracing();
        return Ok(ExitCode::SUCCESS);
    };
    let backends = crate::services::install_hooks(backends, &config);
    let mut tasks: JoinSet<()> = JoinSet::new();
    spawn_workers(
        &mut tasks,
        &backends,
        &config,
        args.stage,
        in_flight(&config, args.stage, args.concurrency),
        &shutdown,
    );
    if args.janitor {
        crate::services::spawn_janitor(&mut tasks, &backends, &config, &shutdown);
    }
    if !config.observe.metrics_listen.is_empty() {
        // The queue gauges are part of every /metrics (dashboards and alerts read them from
        // whichever pod answers).
        crate::services::spawn_queue_poller(&backends, &config, &shutdown);
        track_readiness(&backends, args.stage, &shutdown, ready);
    }
    stopped(tasks).await
}

/// The backends of a role that serves the API. While a dependency is down, a stand-in on the
/// API address answers `/healthz` 200 and `/readyz` 503 (nothing else), so an orchestrator
/// sees a live, unready pod rather than restarting it into a growing back-off; the API takes
/// the address over once every server answers. `None`: shut down while waiting.
async fn api_backends(
    config: &Config,
    addr: SocketAddr,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Backends>> {
    match backends::connect(config).await {
        Ok(backends) => return Ok(Some(backends)),
        Err(err) if err.code.is_transient() => {}
        Err(err) => return Err(err.into()),
    }
    let stand_in = CancellationToken::new();
    let never_ready: observe::ReadyCheck = Arc::new(|| false);
    observe::serve_metrics(addr, never_ready, stand_in.clone()).await?;
    let connected = connect_until_up(config, shutdown).await;
    stand_in.cancel();
    connected
}

/// First wait between connection attempts; it doubles up to [`CONNECT_BACKOFF_MAX`].
const CONNECT_BACKOFF_MIN: Duration = Duration::from_millis(500);
const CONNECT_BACKOFF_MAX: Duration = Duration::from_secs(15);

/// The configured backends, once every server answers; `None` when shut down first. A
/// configuration error (not an outage) still ends the process at once.
async fn connect_until_up(
    config: &Config,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Backends>> {
    let mut delay = CONNECT_BACKOFF_MIN;
    let mut waiting = false;
    loop {
        match backends::connect(config).await {
            Ok(backends) => {
                if waiting {
                    tracing::info!("dependencies are up: starting");
                }
                return Ok(Some(backends));
            }
            Err(err) if err.code.is_transient() => {
                // One line per state change, then quiet retries.
                if !waiting {
                    tracing::warn!(code = %err.code, %err, "a dependency is down; waiting for it (not ready)");
                    waiting = true;
                } else {
                    tracing::debug!(%err, "still down");
                }
            }
            Err(err) => return Err(err.into()),
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(None),
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(CONNECT_BACKOFF_MAX);
    }
}

/// Keeps a worker's `/readyz` flag current: its queue answered within the last few seconds.
fn track_readiness(
    backends: &Backends,
    stage: Stage,
    shutdown: &CancellationToken,
    ready: Arc<AtomicBool>,
) {
    let queue = backends.queue.clone();
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        while !shutdown.is_cancelled() {
            let reachable = matches!(
                tokio::time::timeout(Duration::from_secs(2), queue.depth(stage)).await,
                Ok(Ok(_))
            );
            if ready.swap(reachable, Ordering::Relaxed) != reachable {
                if reachable {
                    tracing::info!(%stage, "queue answers: ready");
                } else {
                    tracing::warn!(%stage, "queue does not answer: not ready");
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(Duration::from_secs(3)) => {}
            }
        }
        ready.store(false, Ordering::Relaxed);
    });
}

/// Waits for every task of the role, then flushes span export.
async fn stopped(mut tasks: JoinSet<()>) -> anyhow::Result<ExitCode> {
    while let Some(joined) = tasks.join_next().await {
        if let Err(err) = joined {
            tracing::error!(%err, "a task of this process failed");
        }
    }
    tracing::info!("stopped");
    observe::shutdown_tracing();
    Ok(ExitCode::SUCCESS)
}
