//! Harness of the distributed tests: PRIVATE servers (Redis with AOF, SeaweedFS, NATS) on free
//! loopback ports, each in its own directory, so a test can kill and restart them without
//! touching the shared ones; `msaas` processes configured through `MSAAS_*` variables; audio.
#![allow(dead_code)] // Each test file uses a different part of the harness.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A port nobody listens on right now (the OS picks it; a race with another process binding it
/// in between is possible but rare, and then the server fails to start with a clear message).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

/// A port `p` with `p + 10000` free too (SeaweedFS puts gRPC there by convention; we pass
/// both explicitly, but keep the pair apart from other servers' choices).
fn free_port_below(limit: u16) -> u16 {
    let pair_free = |port: u16| {
        TcpListener::bind(("127.0.0.1", port)).is_ok()
            && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok()
    };
    loop {
        let port = free_port();
        if port < limit && pair_free(port) {
            return port;
        }
        // Ephemeral ports are usually above 32768; bind one in the lower range instead.
        for _ in 0..200 {
            let candidate = 10_000 + (random_u64() % (limit as u64 - 10_000)) as u16;
            if pair_free(candidate) {
                return candidate;
            }
        }
    }
}

/// Pseudo-random bits (per call), without a rand dependency.
pub fn random_u64() -> u64 {
    let bits = uuid::Uuid::new_v4().as_u128();
    (bits >> 64) as u64 ^ bits as u64
}

/// A random integer in `low..high`.
pub fn random_between(low: u64, high: u64) -> u64 {
    low + random_u64() % (high - low).max(1)
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

fn wait_port(port: u16, what: &str, child: &mut Child, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if port_open(port) {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{what} exited ({status}) before opening port {port}; log {}:\n{}",
                log.display(),
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "{what} did not open port {port} in 30 s; log {}:\n{}",
        log.display(),
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// A tool from PATH, else `$MSAAS_TOOLS/bin`, else the default tools dir; fails naming how to
/// install it.
pub fn find_tool(name: &str, install_hint: &str) -> PathBuf {
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(name))
                .collect()
        })
        .unwrap_or_default();
    if let Some(tools) = std::env::var_os("MSAAS_TOOLS") {
        candidates.push(PathBuf::from(tools).join("bin").join(name));
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")));
    if let Some(cache) = cache {
        candidates.push(cache.join("msaas/tools/bin").join(name));
    }
    candidates
        .into_iter()
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!("`{name}` not found on PATH nor in $MSAAS_TOOLS/bin: {install_hint}")
        })
}

fn log_file(dir: &Path, name: &str) -> (std::fs::File, PathBuf) {
    let path = dir.join(format!("{name}.log"));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .expect("open log");
    (file, path)
}

fn kill_hard(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// redis-server with an append-only file fsynced on every write: a SIGKILL loses nothing
/// acknowledged, as in production with `appendfsync always`.
pub struct PrivateRedis {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl PrivateRedis {
    pub fn start(dir: &Path) -> Self {
        let dir = dir.join("redis");
        std::fs::create_dir_all(&dir).expect("redis dir");
        let mut redis = Self {
            port: free_port(),
            dir,
            child: None,
        };
        redis.spawn();
        redis
    }

    fn spawn(&mut self) {
        let binary = find_tool(
            "redis-server",
            "install redis-server (apt-get install redis-server)",
        );
        let (log, log_path) = log_file(&self.dir, "redis");
        let mut child = Command::new(binary)
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn redis-server");
        wait_port(self.port, "redis-server", &mut child, &log_path);
        self.child = Some(child);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL (a crash, not a clean shutdown).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_hard(&mut child);
        }
    }

    /// Starts it again on the same port and directory (the AOF is replayed).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// nats-server with JetStream, storage in its own directory.
pub struct PrivateNats {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl PrivateNats {
    pub fn start(dir: &Path) -> Self {
        let dir = dir.join("nats");
        std::fs::create_dir_all(&dir).expect("nats dir");
        let binary = find_tool(
            "nats-server",
            "install nats-server (tools/install-test-deps)",
        );
        let port = free_port();
        let (log, log_path) = log_file(&dir, "nats");
        let mut child = Command::new(binary)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(&dir)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn nats-server");
        wait_port(port, "nats-server", &mut child, &log_path);
        Self {
            port,
            dir,
            child: Some(child),
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_hard(&mut child);
        }
    }
}

/// SeaweedFS (`weed server`: master, volume, filer, S3 gateway) on private ports. No S3
/// identities are configured, so it accepts any credentials (a private test server only).
pub struct PrivateWeed {
    pub s3_port: u16,
    ports: [u16; 4],
    dir: PathBuf,
    child: Option<Child>,
}

impl PrivateWeed {
    pub fn start(dir: &Path) -> Self {
        let dir = dir.join("weed");
        std::fs::create_dir_all(&dir).expect("weed dir");
        // gRPC ports (`+ 10000`) are passed explicitly. Both stay below the ephemeral range
        // (32768+ on Linux): an outgoing connection there once took a gRPC port from under a
        // starting server.
        let ports = [
            free_port_below(22_000),
            free_port_below(22_000),
            free_port_below(22_000),
            free_port_below(22_000),
        ];
        let mut weed = Self {
            s3_port: ports[3],
            ports,
            dir,
            child: None,
        };
        weed.spawn();
        weed
    }

    fn spawn(&mut self) {
        let binary = find_tool("weed", "run tools/install.d/10-seaweedfs (make test-deps)");
        let (log, log_path) = log_file(&self.dir, "weed");
        let [master, volume, filer, s3] = self.ports;
        let grpc = |port: u16| (port + 10_000).to_string();
        let mut child = Command::new(binary)
            // The filer keeps its metadata store under the working directory.
            .current_dir(&self.dir)
            .args(["server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .arg(format!("-dir={}", self.dir.display()))
            .arg(format!("-master.port={master}"))
            .arg(format!("-master.port.grpc={}", grpc(master)))
            .arg(format!("-volume.port={volume}"))
            .arg(format!("-volume.port.grpc={}", grpc(volume)))
            .args(["-filer", &format!("-filer.port={filer}")])
            .arg(format!("-filer.port.grpc={}", grpc(filer)))
            .args(["-s3", &format!("-s3.port={s3}")])
            .arg(format!("-s3.port.grpc={}", grpc(s3)))
            .args(["-s3.port.iceberg=0", "-s3.port.lance=0"])
            .args(["-master.volumeSizeLimitMB=64", "-volume.max=30"])
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn weed");
        wait_port(s3, "weed s3", &mut child, &log_path);
        self.child = Some(child);
        // The S3 port opens before the filer behind it can store; wait for a real answer.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self
                .http("GET", "/", None)
                .is_ok_and(|(status, _)| status < 500)
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "weed s3 does not answer; log {}",
                log_path.display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// One unsigned S3 request (the server has no identities); returns status and body.
    fn http(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> std::io::Result<(u16, Vec<u8>)> {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.s3_port))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let body = body.unwrap_or_default();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.s3_port,
            body.len()
        )?;
        stream.write_all(body)?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer)?;
        let split = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or(answer.len());
        let head = String::from_utf8_lossy(&answer[..split]).to_ascii_lowercase();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let raw = answer.get(split + 4..).unwrap_or_default().to_vec();
        let body = if head.contains("transfer-encoding: chunked") {
            dechunk(&raw)
        } else {
            raw
        };
        Ok((status, body))
    }

    pub fn create_bucket(&self, bucket: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.http("PUT", &format!("/{bucket}"), None) {
                Ok((200, _)) => return,
                other if Instant::now() > deadline => {
                    panic!("cannot create bucket {bucket}: {other:?}")
                }
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// Keys under `prefix` in `bucket` (ListObjectsV2, first 1000).
    pub fn list(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let (status, body) = self
            .http(
                "GET",
                &format!("/{bucket}?list-type=2&prefix={prefix}"),
                None,
            )
            .expect("list objects");
        assert_eq!(
            status,
            200,
            "list {bucket}/{prefix}: {}",
            String::from_utf8_lossy(&body)
        );
        String::from_utf8_lossy(&body)
            .split("<Key>")
            .skip(1)
            .filter_map(|part| part.split_once("</Key>").map(|(key, _)| key.to_owned()))
            .collect()
    }

    /// A whole object's bytes.
    pub fn get(&self, bucket: &str, key: &str) -> Vec<u8> {
        let (status, body) = self
            .http("GET", &format!("/{bucket}/{key}"), None)
            .expect("get object");
        assert_eq!(status, 200, "get {bucket}/{key}");
        body
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_hard(&mut child);
        }
    }

    /// Starts it again on the same ports and directory (its data survives).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for PrivateWeed {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The body of a `Transfer-Encoding: chunked` answer.
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let Some(line_end) = raw.windows(2).position(|w| w == b"\r\n") else {
            return body;
        };
        let size_text = String::from_utf8_lossy(&raw[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .unwrap_or(0);
        if size == 0 {
            return body;
        }
        let start = line_end + 2;
        let end = (start + size).min(raw.len());
        body.extend_from_slice(&raw[start..end]);
        raw = raw.get(end + 2..).unwrap_or_default();
    }
}

/// Private Redis, SeaweedFS and NATS plus the `MSAAS_*` environment that points at them.
pub struct Cluster {
    pub redis: PrivateRedis,
    pub weed: PrivateWeed,
    pub nats: PrivateNats,
    pub bucket: String,
    /// `tenant -> key`.
    pub keys: Vec<(String, String)>,
    /// Extra `MSAAS_*` settings of this test.
    pub settings: Vec<(String, String)>,
    /// Last: removed after the servers above are stopped (fields drop in order).
    pub dir: tempfile::TempDir,
}

/// Credentials the private SeaweedFS accepts (it checks none).
const AWS_ENV: [(&str, &str); 3] = [
    ("AWS_ACCESS_KEY_ID", "msaas-test"),
    ("AWS_SECRET_ACCESS_KEY", "msaas-test-secret"),
    ("AWS_REGION", "us-east-1"),
];

impl Cluster {
    pub fn start(tenants: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("msaas-distributed-")
            .tempdir()
            .expect("tempdir");
        let redis = PrivateRedis::start(dir.path());
        let nats = PrivateNats::start(dir.path());
        let weed = PrivateWeed::start(dir.path());
        let bucket = format!("msaas-test-{:08x}", random_u64() as u32);
        weed.create_bucket(&bucket);
        let keys: Vec<(String, String)> = tenants
            .iter()
            .map(|tenant| {
                (
                    (*tenant).to_owned(),
                    format!("key-{tenant}-{:016x}", random_u64()),
                )
            })
            .collect();
        let keys_text: String = keys
            .iter()
            .map(|(tenant, key)| format!("{tenant}:{key}\n"))
            .collect();
        std::fs::write(dir.path().join("keys"), keys_text).expect("keys file");
        Self {
            dir,
            redis,
            weed,
            nats,
            bucket,
            keys,
            settings: Vec::new(),
        }
    }

    pub fn key_of(&self, tenant: &str) -> &str {
        &self
            .keys
            .iter()
            .find(|(t, _)| t == tenant)
            .unwrap_or_else(|| panic!("no tenant {tenant}"))
            .1
    }

    /// Sets (or replaces) one `MSAAS_*` variable for the processes started from now on.
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        self.settings.retain(|(n, _)| n != name);
        self.settings.push((name.to_owned(), value.into()));
    }

    /// The configuration of every process of this cluster.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = [
            ("MSAAS_QUEUE__KIND", "redis".to_owned()),
            ("MSAAS_QUEUE__URL", self.redis.url()),
            ("MSAAS_STORAGE__KIND", "s3".to_owned()),
            ("MSAAS_STORAGE__S3__ENDPOINT", self.weed.endpoint()),
            ("MSAAS_STORAGE__S3__BUCKET", self.bucket.clone()),
            ("MSAAS_STORAGE__S3__PATH_STYLE", "true".to_owned()),
            ("MSAAS_EVENTS__NATS_URL", self.nats.url()),
            (
                "MSAAS_AUTH__KEYS_FILE",
                self.dir.path().join("keys").display().to_string(),
            ),
            ("MSAAS_SERVER__LISTEN", "127.0.0.1:0".to_owned()),
            ("MSAAS_OBSERVE__METRICS_LISTEN", String::new()),
            ("MSAAS_WORKER__VISIBILITY_TIMEOUT_SECS", "2".to_owned()),
            ("MSAAS_WORKER__BACKOFF_BASE_MS", "200".to_owned()),
            ("MSAAS_WORKER__BACKOFF_MAX_MS", "2000".to_owned()),
            ("MSAAS_WORKER__CLAIM_WAIT_MS", "500".to_owned()),
            ("MSAAS_WORKER__MAX_ATTEMPTS", "8".to_owned()),
            ("MSAAS_JOBS__SWEEP_AFTER_SECS", "5".to_owned()),
            ("MSAAS_JOBS__JANITOR_INTERVAL_SECS", "1".to_owned()),
            ("MSAAS_MODELS__THREADS", "1".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        env.extend(
            AWS_ENV
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        for (name, value) in &self.settings {
            env.retain(|(n, _)| n != name);
            env.push((name.clone(), value.clone()));
        }
        env
    }

    /// The configuration the `msaas` processes load, for this test process's own backends.
    pub fn config(&self) -> pipeline::Config {
        let mut env: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| !k.starts_with("MSAAS_") || k == "MSAAS_HOME")
            .collect();
        env.extend(self.env());
        pipeline::Config::load_from(None, env).expect("test configuration")
    }

    /// Backends of this test process (to submit jobs and read records without going
    /// through the API). The S3 client reads the standard AWS variables, so they are set
    /// in this process too (same values in every test, set before any client exists).
    pub async fn backends(&self) -> pipeline::Backends {
        set_aws_env();
        backends::connect(&self.config())
            .await
            .expect("connect to the private servers")
    }

    pub fn spawn(&self, args: &[&str]) -> Msaas {
        Msaas::spawn(args, &self.env())
    }
}

fn set_aws_env() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        for (name, value) in AWS_ENV {
            if std::env::var(name).as_deref() != Ok(value) {
                // SAFETY: tests only; every test sets the same constant values, once, through
                // this Once, and nothing reads them concurrently before it returns.
                unsafe { std::env::set_var(name, value) };
            }
        }
    });
}

/// An `msaas` command with no configuration but `MSAAS_HOME` (for the models) from here.
pub fn msaas_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_msaas"));
    for (name, _) in std::env::vars() {
        if name.starts_with("MSAAS_") && name != "MSAAS_HOME" {
            command.env_remove(name);
        }
    }
    command.env("MSAAS_LOG", "warn,msaas=info,pipeline=info");
    command
}

/// A running `msaas` process; stdout lines are collected (the API / metrics address is printed
/// there), stderr goes to a log file.
pub struct Msaas {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    pub log: PathBuf,
}

impl Msaas {
    pub fn spawn(args: &[&str], env: &[(String, String)]) -> Self {
        let log = std::env::temp_dir().join(format!(
            "msaas-test-{}-{:08x}.log",
            args.first().copied().unwrap_or("x"),
            random_u64() as u32
        ));
        let log_file = std::fs::File::create(&log).expect("log file");
        let mut child = msaas_command()
            .args(args)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .expect("spawn msaas");
        let stdout = child.stdout.take().expect("stdout piped");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The rest of the first stdout line starting with `prefix`.
    pub fn wait_for_line(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left.max(Duration::from_millis(1))) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return rest.trim().to_owned();
                    }
                }
                Err(_) => {
                    let status = self.child.try_wait().ok().flatten();
                    panic!(
                        "msaas printed no {prefix:?} line (exit: {status:?}); log:\n{}",
                        self.log_text()
                    );
                }
            }
        }
    }

    /// The API's base URL, from its `listening http://…` line.
    pub fn api_url(&mut self) -> String {
        let address = self.wait_for_line("listening ", Duration::from_secs(60));
        address.trim_end_matches('/').to_owned()
    }

    pub fn kill9(&mut self) {
        kill_hard(&mut self.child);
    }

    /// SIGTERM, then the exit status (SIGKILL after `grace`).
    pub fn terminate(&mut self, grace: Duration) -> ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + grace;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                kill_hard(&mut self.child);
                panic!(
                    "msaas did not exit within {grace:?} of SIGTERM; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Msaas {
    fn drop(&mut self) {
        kill_hard(&mut self.child);
        // Kept when the test fails, for the post-mortem (its path is in the failure message).
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// The default model must be installed; say how when it is not, rather than skip.
pub fn require_default_model() {
    let output = msaas_command()
        .arg("models")
        .output()
        .expect("run msaas models");
    let listing = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && listing.contains("spleeter-2stems"),
        "the default model is not installed: run `tools/setup` first (stdout: {listing}, stderr: {})",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A stereo 16-bit WAV of tones (under Spleeter's 11 kHz cut); `variant` shifts the tones so
/// every job gets different bytes.
pub fn write_song(path: &Path, seconds: f32, variant: u32) {
    write_song_at(path, seconds, variant, 44_100);
}

/// Writes song `n` (4 s at `rate`) under `dir` and submits it for `tenant` on the default
/// model straight through `backends` (no API), returning its job id.
pub async fn submit_song(
    backends: &pipeline::Backends,
    tenant: &str,
    dir: &Path,
    n: u32,
    rate: u32,
) -> pipeline::JobId {
    let path = dir.join(format!("song-{n}.wav"));
    write_song_at(&path, 4.0, n, rate);
    let options = pipeline::JobOptions {
        model: "spleeter-2stems".to_owned(),
        ..pipeline::JobOptions::default()
    };
    let job = pipeline::Job::new(tenant, format!("song-{n}.wav"), options);
    pipeline::submit_file(backends, job, &path, None)
        .await
        .expect("submit")
        .id
}

/// [`write_song`] at another sample rate (48 kHz makes decode resample: a longer decode stage).
pub fn write_song_at(path: &Path, seconds: f32, variant: u32, rate: u32) {
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut wav = hound::WavWriter::create(path, spec).expect("create wav");
    let frames = (f64::from(seconds) * f64::from(rate)) as usize;
    let shift = 1.0 + f64::from(variant % 97) / 200.0;
    let tone = |hz: f64, t: f64| (2.0 * std::f64::consts::PI * hz * shift * t).sin();
    for i in 0..frames {
        let t = i as f64 / f64::from(rate);
        let left = 0.2 * tone(220.0, t) + 0.1 * tone(1_760.0, t);
        let right = 0.2 * tone(330.0, t) + 0.1 * tone(2_637.0, t);
        wav.write_sample((left * 32_767.0) as i16).expect("sample");
        wav.write_sample((right * 32_767.0) as i16).expect("sample");
    }
    wav.finalize().expect("finalize");
}

/// Frames of a WAV in memory (a finished stem must be a whole, readable file).
pub fn wav_frames(bytes: &[u8]) -> u32 {
    hound::WavReader::new(std::io::Cursor::new(bytes))
        .expect("a readable WAV")
        .duration()
}

/// Standard base64 with padding (the old API's upload encoding; no dependency for 15 lines).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn base64_matches_the_rfc_examples() {
    for (plain, encoded) in [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foobar", "Zm9vYmFy"),
    ] {
        assert_eq!(base64(plain.as_bytes()), encoded);
    }
}

/// Polls `done` (every 50 ms) until it holds; fails the test naming `what` after `limit`.
pub fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Status of a plain `GET http://host:port/path` (None when nothing answers).
pub fn http_get_status(url: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_once('/').map_or((rest, ""), |(h, p)| (h, p));
    let mut stream = std::net::TcpStream::connect(host).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    answer.split_whitespace().nth(1)?.parse().ok()
}
