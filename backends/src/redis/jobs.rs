//! [`RedisJobStore`]: job records as Redis hashes, moved by a compare-and-set Lua script on
//! state + attempt, with a per-tenant index, stale / expired indexes for the janitor, aliases
//! (idempotency keys, content fingerprints) and the API key directory.

use std::sync::LazyLock;
use std::time::Duration;

use ::redis::aio::ConnectionManager;
use ::redis::{AsyncCommands, Script};
use async_trait::async_trait;

use super::client::{check_namespace, connection_manager, open_client, redis_error, retried};
use super::queue::RedisQueue;
use pipeline::job::{Job, JobId, JobState, Stage};
use pipeline::traits::{
    BackendError, JobStore, StageMessage, StageQueue, Submitted, create_then_enqueue,
};

static CREATE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/create_job.lua")));
static COMPARE_AND_SET: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/compare_and_set.lua")));
static DELETE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/delete_job.lua")));
static BIND_ALIAS: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/bind_alias.lua")));
static LEASE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/lease.lua")));
static RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/release.lua")));

/// How long an alias bound before its record exists stays bound unless the record is
/// created: long enough for any submission, short enough that a crashed one frees its
/// Idempotency-Key soon.
const PENDING_ALIAS_TTL: Duration = Duration::from_secs(300);
/// Records read per round trip when listing.
const PAGE: usize = 100;

/// Suffix, after `{ns}:tenant:{tenant}`, of the tenant's set of unfinished jobs.
const ACTIVE_SUFFIX: &str = ":active";
/// The safety-net expiry of a finished record outlives the retention by this much, so the
/// janitor (which also deletes the objects) normally gets there first.
const EXPIRY_MARGIN: Duration = Duration::from_secs(24 * 3600);

/// The Redis [`JobStore`]. Cheap to clone (shared connection).
#[derive(Clone)]
pub struct RedisJobStore {
    conn: ConnectionManager,
    namespace: String,
    retention: Duration,
    /// The queue on the same server and namespace: new jobs are created and queued on it in
    /// one script ([`JobStore::create_queued`]).
    queue: Option<RedisQueue>,
}

/// What the create script came to.
enum Created {
    New,
    /// An alias names this earlier job, whose record exists.
    Existing(JobId),
    /// The id exists with another record.
    Exists,
}

impl std::fmt::Debug for RedisJobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisJobStore")
            .field("namespace", &self.namespace)
            .field("retention", &self.retention)
            .finish_non_exhaustive()
    }
}

fn flag(terminal: bool) -> &'static str {
    if terminal { "1" } else { "0" }
}

impl RedisJobStore {
    /// Connects; `retention` is how long finished records are kept (the expiry set on them
    /// is this plus a day, as a safety net behind the janitor).
    pub async fn connect(
        url: &str,
        namespace: &str,
        retention: Duration,
    ) -> Result<Self, BackendError> {
        check_namespace(namespace)?;
        let client = open_client(url)?;
        let conn = connection_manager(client).await?;
        Ok(Self {
            conn,
            namespace: namespace.to_owned(),
            retention,
            queue: None,
        })
    }

    /// Declares `queue` to live on the same Redis server as these records (same namespace),
    /// so that [`JobStore::create_queued`] writes the record and the first stream entry in
    /// one script. Only for the queue the same [`pipeline::Backends`] carry: `connect` pairs
    /// them. Without it, `create_queued` works in steps on the queue it is given.
    pub fn beside(mut self, queue: &RedisQueue) -> Self {
        self.queue = (queue.namespace() == self.namespace).then(|| queue.clone());
        self
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The tenant an API key belongs to, by the key's SHA-256 (hex): keys are never stored.
    pub async fn api_key_tenant(
        &self,
        key_sha256_hex: &str,
    ) -> Result<Option<String>, BackendError> {
        let mut conn = self.conn.clone();
        conn.hget(self.api_keys_key(), key_sha256_hex.to_ascii_lowercase())
            .await
            .map_err(|err| redis_error("HGET api key", err))
    }

    /// Registers an API key (by its SHA-256, hex) for a tenant.
    pub async fn add_api_key(
        &self,
        tenant: &str,
        key_sha256_hex: &str,
    ) -> Result<(), BackendError> {
        let mut conn = self.conn.clone();
        conn.hset::<_, _, _, ()>(
            self.api_keys_key(),
            key_sha256_hex.to_ascii_lowercase(),
            tenant,
        )
        .await
        .map_err(|err| redis_error("HSET api key", err))
    }

    fn api_keys_key(&self) -> String {
        format!("{}:apikeys", self.namespace)
    }

    fn job_key(&self, id: &str) -> String {
        format!("{}:job:{id}", self.namespace)
    }

    fn aliases_key(&self, id: &str) -> String {
        format!("{}:job:{id}:aliases", self.namespace)
    }

    fn alias_key_prefix(&self) -> String {
        format!("{}:alias:", self.namespace)
    }

    fn lease_key(&self, name: &str) -> String {
        format!("{}:lease:{name}", self.namespace)
    }

    fn tenant_key(&self, tenant: &str) -> String {
        format!("{}:tenant:{tenant}:jobs", self.namespace)
    }

    /// The tenant's unfinished jobs (a set): what `tenants.max_active_jobs` counts.
    fn active_key(&self, tenant: &str) -> String {
        format!("{}:tenant:{tenant}{ACTIVE_SUFFIX}", self.namespace)
    }

    /// The tenant's uploads in one fixed window (a counter that expires after it).
    fn uploads_key(&self, tenant: &str, window: u64) -> String {
        format!("{}:tenant:{tenant}:uploads:{window}", self.namespace)
    }

    fn stale_key(&self) -> String {
        format!("{}:jobs:stale", self.namespace)
    }

    fn expired_key(&self) -> String {
        format!("{}:jobs:expired", self.namespace)
    }

    fn sequence_key(&self) -> String {
        format!("{}:jobs:seq", self.namespace)
    }

    fn expiry_secs(&self) -> u64 {
        self.retention
            .saturating_add(EXPIRY_MARGIN)
            .as_secs()
            .max(1)
    }

    fn encode(job: &Job) -> Result<String, BackendError> {
        serde_json::to_string(job)
            .map_err(|err| BackendError::Queue(format!("job {} cannot be encoded: {err}", job.id)))
    }

    fn decode(id: &str, json: &str) -> Result<Job, BackendError> {
        serde_json::from_str(json).map_err(|err| {
            BackendError::Queue(format!(
                "job record {id} in redis is not a valid job: {err}"
            ))
        })
    }

    /// The create script (`create_job.lua`): the record, its indexes and `aliases`, and with
    /// `entry` (stream key, traceparent) the first queue entry, in one step. `repeatable`: a
    /// repeat of the call counts as created (the script compares the record), so it is
    /// retried once on a broken connection; otherwise an existing id is always `Exists`.
    async fn create_record(
        &self,
        job: &Job,
        aliases: &[String],
        entry: Option<(String, Option<&str>)>,
        repeatable: bool,
    ) -> Result<Created, BackendError> {
        let id = job.id.as_str();
        let mut invocation = CREATE.key(self.job_key(id));
        invocation
            .key(self.tenant_key(&job.tenant))
            .key(self.stale_key())
            .key(self.expired_key())
            .key(self.sequence_key())
            .key(self.aliases_key(id))
            .key(self.active_key(&job.tenant));
        let traceparent = entry.as_ref().and_then(|(_, traceparent)| *traceparent);
        if let Some((stream, _)) = &entry {
            invocation.key(stream);
        }
        invocation
            .arg(id)
            .arg(Self::encode(job)?)
            .arg(job.state.as_str())
            .arg(job.attempt)
            .arg(&job.tenant)
            .arg(job.created_ms)
            .arg(job.updated_ms)
            .arg(flag(job.state.is_terminal()))
            .arg(self.expiry_secs())
            .arg(self.alias_key_prefix())
            .arg(self.job_key(""))
            .arg(traceparent.unwrap_or_default())
            .arg(flag(repeatable));
        for alias in aliases {
            invocation.arg(alias);
        }
        let reply: Vec<String> = if repeatable {
            let invocation = &invocation;
            retried(&self.conn, "create job", |mut conn| async move {
                invocation.invoke_async(&mut conn).await
            })
            .await?
        } else {
            invocation
                .invoke_async(&mut self.conn.clone())
                .await
                .map_err(|err| redis_error("create job", err))?
        };
        match (reply.first().map(String::as_str), reply.get(1)) {
            (Some("created"), _) => Ok(Created::New),
            (Some("exists"), _) => Ok(Created::Exists),
            (Some("existing"), Some(earlier)) => {
                earlier.parse().map(Created::Existing).map_err(|_| {
                    BackendError::Queue(format!(
                        "an alias of job {id} names {earlier:?}, not a job id"
                    ))
                })
            }
            _ => Err(BackendError::Queue(format!(
                "create of job {id}: unexpected reply {reply:?}"
            ))),
        }
    }

    /// The records of `ids` (in order), skipping ids whose record is gone; also returns
    /// those ids so an index can drop them.
    async fn records(&self, ids: &[String]) -> Result<(Vec<Job>, Vec<String>), BackendError> {
        if ids.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let mut pipe = ::redis::pipe();
        for id in ids {
            pipe.cmd("HGET").arg(self.job_key(id)).arg("json");
        }
        let mut conn = self.conn.clone();
        let found: Vec<Option<String>> = pipe
            .query_async(&mut conn)
            .await
            .map_err(|err| redis_error("HGET job records", err))?;
        let mut jobs = Vec::with_capacity(ids.len());
        let mut gone = Vec::new();
        for (id, json) in ids.iter().zip(found) {
            match json {
                Some(json) => jobs.push(Self::decode(id, &json)?),
                None => gone.push(id.clone()),
            }
        }
        Ok((jobs, gone))
    }
}

#[async_trait]
impl JobStore for RedisJobStore {
    async fn create(&self, job: &Job) -> Result<(), BackendError> {
        match self.create_record(job, &[], None, false).await? {
            Created::New => Ok(()),
            Created::Existing(_) | Created::Exists => {
                Err(BackendError::Conflict(format!("job {} exists", job.id)))
            }
        }
    }

    async fn create_queued(
        &self,
        job: &Job,
        aliases: &[String],
        queue: &dyn StageQueue,
        stage: Stage,
        message: &StageMessage,
    ) -> Result<Submitted, BackendError> {
        let Some(beside) = &self.queue else {
            return create_then_enqueue(self, job, aliases, queue, stage, message).await;
        };
        let entry = (beside.stream_key(stage), message.traceparent.as_deref());
        match self.create_record(job, aliases, Some(entry), true).await? {
            Created::New => Ok(Submitted::Created),
            Created::Existing(earlier) => Ok(Submitted::Existing(earlier)),
            Created::Exists => Err(BackendError::Conflict(format!("job {} exists", job.id))),
        }
    }

    async fn get(&self, id: &JobId) -> Result<Option<Job>, BackendError> {
        let key = self.job_key(id.as_str());
        let json: Option<String> = retried(&self.conn, "HGET job", |mut conn| {
            let key = &key;
            async move { conn.hget(key, "json").await }
        })
        .await?;
        json.map(|json| Self::decode(id.as_str(), &json))
            .transpose()
    }

    async fn compare_and_set(
        &self,
        expected: JobState,
        expected_attempt: u32,
        next: &Job,
    ) -> Result<(), BackendError> {
        let id = next.id.as_str();
        let mut conn = self.conn.clone();
        let mut invocation = COMPARE_AND_SET.key(self.job_key(id));
        invocation
            .key(self.stale_key())
            .key(self.expired_key())
            .key(self.aliases_key(id))
            .key(self.active_key(&next.tenant))
            .arg(expected.as_str())
            .arg(expected_attempt)
            .arg(Self::encode(next)?)
            .arg(next.state.as_str())
            .arg(next.attempt)
            .arg(next.updated_ms)
            .arg(flag(next.state.is_terminal()))
            .arg(id)
            .arg(self.expiry_secs())
            .arg(self.alias_key_prefix());
        let reply: Vec<String> = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(|err| redis_error("compare-and-set job", err))?;
        match reply.first().map(String::as_str) {
            Some("ok") => Ok(()),
            Some("not_found") => Err(BackendError::NotFound(format!("job {id}"))),
            Some("conflict") => Err(BackendError::Conflict(format!(
                "job {id} is {} attempt {}, expected {expected} attempt {expected_attempt}",
                reply.get(1).map_or("?", String::as_str),
                reply.get(2).map_or("?", String::as_str),
            ))),
            _ => Err(BackendError::Queue(format!(
                "compare-and-set of job {id}: unexpected reply {reply:?}"
            ))),
        }
    }

    async fn list(&self, tenant: &str, limit: usize) -> Result<Vec<Job>, BackendError> {
        let key = self.tenant_key(tenant);
        let mut jobs = Vec::new();
        let mut start = 0usize;
        while jobs.len() < limit {
            let page = PAGE.min(limit - jobs.len());
            let mut conn = self.conn.clone();
            let ids: Vec<String> = conn
                .zrevrange(&key, start as isize, (start + page - 1) as isize)
                .await
                .map_err(|err| redis_error("ZREVRANGE tenant jobs", err))?;
            let fetched = ids.len();
            let (found, gone) = self.records(&ids).await?;
            jobs.extend(found);
            if !gone.is_empty() {
                // Records that expired without the janitor: drop them from the index.
                conn.zrem::<_, _, ()>(&key, &gone)
                    .await
                    .map_err(|err| redis_error("ZREM tenant jobs", err))?;
                start += fetched - gone.len();
            } else {
                start += fetched;
            }
            if fetched < page {
                break;
            }
        }
        Ok(jobs)
    }

    async fn delete(&self, id: &JobId) -> Result<(), BackendError> {
        let id = id.as_str();
        let mut conn = self.conn.clone();
        let mut invocation = DELETE.key(self.job_key(id));
        invocation
            .key(self.aliases_key(id))
            .key(self.stale_key())
            .key(self.expired_key())
            .arg(id)
            .arg(self.alias_key_prefix())
            .arg(format!("{}:tenant:", self.namespace))
            .arg(":jobs")
            .arg(ACTIVE_SUFFIX);
        invocation
            .invoke_async::<i64>(&mut conn)
            .await
            .map_err(|err| redis_error("delete job", err))?;
        Ok(())
    }

    async fn expired(
        &self,
        ended_before_ms: u64,
        limit: usize,
    ) -> Result<Vec<JobId>, BackendError> {
        let mut conn = self.conn.clone();
        let ids: Vec<String> = conn
            .zrangebyscore_limit(
                self.expired_key(),
                "-inf",
                format!("({ended_before_ms}"),
                0,
                limit as isize,
            )
            .await
            .map_err(|err| redis_error("ZRANGEBYSCORE expired", err))?;
        Ok(ids.into_iter().filter_map(|id| id.parse().ok()).collect())
    }

    async fn stale(&self, updated_before_ms: u64, limit: usize) -> Result<Vec<Job>, BackendError> {
        let mut conn = self.conn.clone();
        let ids: Vec<String> = conn
            .zrangebyscore_limit(
                self.stale_key(),
                "-inf",
                format!("({updated_before_ms}"),
                0,
                limit as isize,
            )
            .await
            .map_err(|err| redis_error("ZRANGEBYSCORE stale", err))?;
        let (jobs, gone) = self.records(&ids).await?;
        if !gone.is_empty() {
            conn.zrem::<_, _, ()>(self.stale_key(), &gone)
                .await
                .map_err(|err| redis_error("ZREM stale", err))?;
        }
        Ok(jobs
            .into_iter()
            .filter(|job| !job.state.is_terminal())
            .collect())
    }

    async fn bind_alias(&self, alias: &str, id: &JobId) -> Result<JobId, BackendError> {
        let mut invocation = BIND_ALIAS.key(format!("{}{alias}", self.alias_key_prefix()));
        invocation
            .key(self.aliases_key(id.as_str()))
            .key(self.job_key(id.as_str()))
            .arg(id.as_str())
            .arg(alias)
            .arg(PENDING_ALIAS_TTL.as_secs());
        let invocation = &invocation;
        let bound: String = retried(&self.conn, "bind alias", |mut conn| async move {
            invocation.invoke_async(&mut conn).await
        })
        .await?;
        bound.parse().map_err(|_| {
            BackendError::Queue(format!(
                "alias {alias:?} is bound to {bound:?}, not a job id"
            ))
        })
    }

    async fn resolve_alias(&self, alias: &str) -> Result<Option<JobId>, BackendError> {
        let key = format!("{}{alias}", self.alias_key_prefix());
        let bound: Option<String> = retried(&self.conn, "GET alias", |mut conn| {
            let key = &key;
            async move { conn.get(key).await }
        })
        .await?;
        let Some(bound) = bound else {
            return Ok(None);
        };
        let record = self.job_key(&bound);
        let exists: bool = retried(&self.conn, "EXISTS job", |mut conn| {
            let record = &record;
            async move { conn.exists(record).await }
        })
        .await?;
        Ok(if exists { bound.parse().ok() } else { None })
    }

    async fn lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, BackendError> {
        let mut invocation = LEASE.key(self.lease_key(name));
        invocation
            .arg(holder)
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1));
        let invocation = &invocation;
        let held: i64 = retried(&self.conn, "lease", |mut conn| async move {
            invocation.invoke_async(&mut conn).await
        })
        .await?;
        Ok(held == 1)
    }

    async fn release(&self, name: &str, holder: &str) -> Result<(), BackendError> {
        let mut invocation = RELEASE.key(self.lease_key(name));
        invocation.arg(holder);
        let invocation = &invocation;
        retried(&self.conn, "release lease", |mut conn| async move {
            invocation.invoke_async::<i64>(&mut conn).await
        })
        .await?;
        Ok(())
    }

    async fn active_count(&self, tenant: &str) -> Result<u64, BackendError> {
        let mut conn = self.conn.clone();
        conn.scard(self.active_key(tenant))
            .await
            .map_err(|err| redis_error("SCARD active jobs", err))
    }

    async fn count_upload(
        &self,
        tenant: &str,
        now_ms: u64,
        window_ms: u64,
    ) -> Result<u64, BackendError> {
        let window_ms = window_ms.max(1);
        let key = self.uploads_key(tenant, now_ms / window_ms);
        let mut conn = self.conn.clone();
        // One transaction: a counter never outlives its window for want of an expiry.
        let (count,): (u64,) = ::redis::pipe()
            .atomic()
            .incr(&key, 1u64)
            .pexpire(&key, (2 * window_ms) as i64)
            .ignore()
            .query_async(&mut conn)
            .await
            .map_err(|err| redis_error("INCR uploads", err))?;
        Ok(count)
    }
}
