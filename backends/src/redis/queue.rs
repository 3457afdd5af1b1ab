//! [`RedisQueue`]: the stage queues on Redis Streams with consumer groups.
//!
//! A claim first moves due retries from the delayed set onto the stream, then takes over a
//! message whose claimer let the visibility timeout pass (XAUTOCLAIM), and only then reads a
//! new one (XREADGROUP, blocking on a connection of its own). A delivery's attempt is the
//! entry's `attempts` field (deliveries of earlier entries of the same message, carried by
//! retries) plus the stream's delivery count of this entry, so it counts up across reclaims
//! and retries alike. Ack, retry, dead-letter and touch check in Lua that the claim is still
//! this consumer's, same delivery: a worker whose message was reclaimed cannot disturb the
//! new claim.

use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::Duration;

use ::redis::aio::{ConnectionManager, MultiplexedConnection};
use ::redis::{AsyncConnectionConfig, Script, Value};
use async_trait::async_trait;
use tokio::time::Instant;

use super::client::{
    CONNECTION_TIMEOUT, RESPONSE_TIMEOUT, check_namespace, connection_manager, entry_ms, integer,
    open_client, pairs, redis_error, text,
};
use pipeline::job::{JobId, Stage};
use pipeline::traits::{BackendError, Delivery, QueueDepth, StageMessage, StageQueue};
use pipeline::{CodedError, ErrorCode};

static PROMOTE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/promote.lua")));
static RECLAIM: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/reclaim.lua")));
static SETTLE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/settle.lua")));

/// Retries moved onto the stream per claim call; the rest follow on the next calls.
const PROMOTE_BATCH: u32 = 100;
/// Pages of 10 pending entries XAUTOCLAIM scans per claim looking for an expired one.
const RECLAIM_PAGES: u32 = 50;
/// Idle blocking connections kept for reuse.
const BLOCKING_POOL: usize = 16;

/// The Redis Streams [`StageQueue`]. Cheap to clone (shared connections).
#[derive(Clone)]
pub struct RedisQueue {
    client: ::redis::Client,
    /// Short commands, shared by every caller.
    conn: ConnectionManager,
    /// Connections for blocking reads, one per claim in flight, so a claim waiting for a
    /// message never holds up anyone else's commands.
    blocking: Arc<Mutex<Vec<MultiplexedConnection>>>,
    namespace: String,
    visibility_timeout: Duration,
}

impl std::fmt::Debug for RedisQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisQueue")
            .field("namespace", &self.namespace)
            .field("visibility_timeout", &self.visibility_timeout)
            .finish_non_exhaustive()
    }
}

/// Where a claimed entry is: what ack / retry / touch need to find it and check it is ours.
struct Receipt<'a> {
    entry_id: &'a str,
    delivery_count: &'a str,
    consumer: &'a str,
}

fn receipt(entry_id: &str, delivery_count: u32, consumer: &str) -> String {
    format!("{entry_id} {delivery_count} {consumer}")
}

fn parse_receipt(receipt: &str) -> Option<Receipt<'_>> {
    let mut parts = receipt.splitn(3, ' ');
    Some(Receipt {
        entry_id: parts.next()?,
        delivery_count: parts.next()?,
        consumer: parts.next()?,
    })
}

/// A stream entry as XRANGE / XREADGROUP / XAUTOCLAIM return it: `[id, [field, value, ...]]`.
fn parse_entry(value: &Value) -> Option<(String, Vec<(String, String)>)> {
    let Value::Array(parts) = value else {
        return None;
    };
    let id = text(parts.first()?)?;
    let fields = pairs(parts.get(1)?)
        .into_iter()
        .filter_map(|(name, value)| Some((name, text(value)?)))
        .collect();
    Some((id, fields))
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// The message of a stage entry and the deliveries before this entry.
fn parse_message(fields: &[(String, String)]) -> Result<(StageMessage, u32), String> {
    let job_id = field(fields, "job_id").ok_or("no job_id field")?;
    let job_id: JobId = job_id
        .parse()
        .map_err(|_| format!("job_id {job_id:?} is not a job id"))?;
    let attempts = field(fields, "attempts")
        .map(|a| a.parse::<u32>().map_err(|_| format!("attempts {a:?}")))
        .transpose()?
        .unwrap_or(0);
    let traceparent = field(fields, "traceparent")
        .filter(|t| !t.is_empty())
        .map(str::to_owned);
    Ok((
        StageMessage {
            job_id,
            traceparent,
        },
        attempts,
    ))
}

fn is_no_group(err: &::redis::RedisError) -> bool {
    err.code() == Some("NOGROUP") || err.to_string().contains("NOGROUP")
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl RedisQueue {
    /// Connects and creates the stage streams and their consumer groups if missing.
    pub async fn connect(
        url: &str,
        namespace: &str,
        visibility_timeout: Duration,
    ) -> Result<Self, BackendError> {
        check_namespace(namespace)?;
        let client = open_client(url)?;
        let conn = connection_manager(client.clone()).await?;
        let queue = Self {
            client,
            conn,
            blocking: Arc::default(),
            namespace: namespace.to_owned(),
            visibility_timeout,
        };
        for stage in Stage::ALL {
            queue.ensure_group(stage).await?;
        }
        Ok(queue)
    }

    pub fn visibility_timeout(&self) -> Duration {
        self.visibility_timeout
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The stream of a stage (what KEDA's Redis Streams scaler watches, group = stage name).
    pub fn stream_key(&self, stage: Stage) -> String {
        format!("{}:stage:{stage}", self.namespace)
    }

    fn delayed_key(&self, stage: Stage) -> String {
        format!("{}:delayed:{stage}", self.namespace)
    }

    fn dead_key(&self) -> String {
        format!("{}:dead", self.namespace)
    }

    /// The newest `limit` dead letters, oldest first: the message and why it was given up.
    pub async fn dead_letters(
        &self,
        limit: usize,
    ) -> Result<Vec<(StageMessage, CodedError)>, BackendError> {
        let mut conn = self.conn.clone();
        let newest_first: Value = ::redis::cmd("XREVRANGE")
            .arg(self.dead_key())
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(limit)
            .query_async(&mut conn)
            .await
            .map_err(|err| redis_error("XREVRANGE dead letters", err))?;
        let Value::Array(entries) = newest_first else {
            return Ok(Vec::new());
        };
        let mut letters = Vec::with_capacity(entries.len());
        for entry in entries.iter().rev() {
            let Some((id, fields)) = parse_entry(entry) else {
                continue;
            };
            let (message, _) = match parse_message(&fields) {
                Ok(parsed) => parsed,
                Err(problem) => {
                    tracing::warn!(entry = %id, %problem, "unreadable dead letter skipped");
                    continue;
                }
            };
            let code = field(&fields, "code")
                .and_then(|c| serde_json::from_value(serde_json::Value::String(c.to_owned())).ok())
                .unwrap_or(ErrorCode::Internal);
            let reason = CodedError::new(code, field(&fields, "message").unwrap_or_default());
            letters.push((message, reason));
        }
        Ok(letters)
    }

    /// Creates the stage's stream and group unless they exist. The group starts at the
    /// beginning, so messages added before it existed are delivered too.
    async fn ensure_group(&self, stage: Stage) -> Result<(), BackendError> {
        let mut conn = self.conn.clone();
        let created: Result<(), _> = ::redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(self.stream_key(stage))
            .arg(stage.as_str())
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        match created {
            Ok(()) => Ok(()),
            Err(err) if err.code() == Some("BUSYGROUP") => Ok(()),
            Err(err) => Err(redis_error("XGROUP CREATE", err)),
        }
    }

    /// Moves due retries onto the stream; returns how long until the next one is due.
    async fn promote_due(&self, stage: Stage) -> Result<Option<Duration>, BackendError> {
        let mut conn = self.conn.clone();
        let (_moved, next_due_ms): (i64, i64) = PROMOTE
            .key(self.delayed_key(stage))
            .key(self.stream_key(stage))
            .arg(PROMOTE_BATCH)
            .invoke_async(&mut conn)
            .await
            .map_err(|err| redis_error("promote retries", err))?;
        Ok(u64::try_from(next_due_ms).ok().map(Duration::from_millis))
    }

    /// Takes over a message whose claim passed the visibility timeout.
    async fn reclaim(
        &self,
        stage: Stage,
        consumer: &str,
    ) -> Result<Option<Delivery>, BackendError> {
        let mut conn = self.conn.clone();
        let mut invocation = RECLAIM.key(self.stream_key(stage));
        invocation
            .arg(stage.as_str())
            .arg(consumer)
            .arg(millis(self.visibility_timeout))
            .arg(RECLAIM_PAGES);
        let reply: Value = match invocation.invoke_async(&mut conn).await {
            Ok(reply) => reply,
            Err(err) if is_no_group(&err) => {
                self.ensure_group(stage).await?;
                return Ok(None);
            }
            Err(err) => return Err(redis_error("XAUTOCLAIM", err)),
        };
        let Value::Array(parts) = reply else {
            return Ok(None);
        };
        let (Some(id), Some(fields), Some(count)) = (
            parts.first().and_then(text),
            parts.get(1),
            parts.get(2).and_then(integer),
        ) else {
            return Ok(None);
        };
        let fields: Vec<(String, String)> = pairs(fields)
            .into_iter()
            .filter_map(|(name, value)| Some((name, text(value)?)))
            .collect();
        let count = u32::try_from(count).unwrap_or(u32::MAX);
        let delivery = self.delivery(stage, consumer, id, &fields, count).await?;
        if let Some(delivery) = &delivery {
            tracing::debug!(%stage, consumer, job = %delivery.message.job_id, attempt = delivery.attempt,
                "visibility timeout passed; message claimed again");
        }
        Ok(delivery)
    }

    /// Reads a new message, blocking up to `block` on a connection of its own.
    async fn read_new(
        &self,
        stage: Stage,
        consumer: &str,
        block: Duration,
    ) -> Result<Option<Delivery>, BackendError> {
        let mut conn = self.blocking_connection().await?;
        let mut command = ::redis::cmd("XREADGROUP");
        command
            .arg("GROUP")
            .arg(stage.as_str())
            .arg(consumer)
            .arg("COUNT")
            .arg(1);
        // BLOCK 0 would wait forever: no wait means no BLOCK at all.
        let block_ms = millis(block);
        if block_ms > 0 {
            command.arg("BLOCK").arg(block_ms);
        }
        command.arg("STREAMS").arg(self.stream_key(stage)).arg(">");
        let reply: Value =
            match tokio::time::timeout(block + RESPONSE_TIMEOUT, command.query_async(&mut conn))
                .await
            {
                Ok(Ok(reply)) => reply,
                Ok(Err(err)) if is_no_group(&err) => {
                    self.ensure_group(stage).await?;
                    return Ok(None);
                }
                // The connection is dropped, not pooled, and so are the idle ones: after a
                // server restart they are all dead, and the next claim connects afresh.
                Ok(Err(err)) => {
                    self.forget_blocking_connections();
                    return Err(redis_error("XREADGROUP", err));
                }
                Err(_) => {
                    self.forget_blocking_connections();
                    return Err(BackendError::Queue(format!(
                        "redis XREADGROUP on {} did not answer within {:?}",
                        self.stream_key(stage),
                        block + RESPONSE_TIMEOUT
                    )));
                }
            };
        self.return_blocking_connection(conn);
        // [[stream, [[id, [field, value, ...]]]]] or nil when nothing came.
        let entry = match &reply {
            Value::Array(streams) => streams.first().and_then(|stream| match stream {
                Value::Array(parts) => match parts.get(1) {
                    Some(Value::Array(entries)) => entries.first().and_then(parse_entry),
                    _ => None,
                },
                _ => None,
            }),
            Value::Map(streams) => streams.first().and_then(|(_, entries)| match entries {
                Value::Array(entries) => entries.first().and_then(parse_entry),
                _ => None,
            }),
            _ => None,
        };
        match entry {
            Some((id, fields)) => self.delivery(stage, consumer, id, &fields, 1).await,
            None => Ok(None),
        }
    }

    /// Builds the delivery of a claimed entry; an unreadable entry is dropped (it could
    /// never be processed, and would otherwise be reclaimed forever).
    async fn delivery(
        &self,
        stage: Stage,
        consumer: &str,
        entry_id: String,
        fields: &[(String, String)],
        delivery_count: u32,
    ) -> Result<Option<Delivery>, BackendError> {
        match parse_message(fields) {
            Ok((message, attempts_before)) => Ok(Some(Delivery {
                message,
                receipt: receipt(&entry_id, delivery_count, consumer),
                attempt: attempts_before.saturating_add(delivery_count),
            })),
            Err(problem) => {
                tracing::warn!(%stage, entry = %entry_id, %problem, "unreadable queue entry dropped");
                let mut conn = self.conn.clone();
                let key = self.stream_key(stage);
                ::redis::pipe()
                    .cmd("XACK")
                    .arg(&key)
                    .arg(stage.as_str())
                    .arg(&entry_id)
                    .ignore()
                    .cmd("XDEL")
                    .arg(&key)
                    .arg(&entry_id)
                    .ignore()
                    .query_async::<()>(&mut conn)
                    .await
                    .map_err(|err| redis_error("drop unreadable entry", err))?;
                Ok(None)
            }
        }
    }

    async fn blocking_connection(&self) -> Result<MultiplexedConnection, BackendError> {
        let pooled = self
            .blocking
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        if let Some(conn) = pooled {
            return Ok(conn);
        }
        // No response timeout on the connection itself: a blocking read legitimately waits;
        // the caller bounds it.
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECTION_TIMEOUT))
            .set_response_timeout(None);
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|err| redis_error("connect", err))
    }

    fn forget_blocking_connections(&self) {
        self.blocking
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    fn return_blocking_connection(&self, conn: MultiplexedConnection) {
        let mut pool = self.blocking.lock().unwrap_or_else(PoisonError::into_inner);
        if pool.len() < BLOCKING_POOL {
            pool.push(conn);
        }
    }

    /// Runs one action of `settle.lua` on a delivery; `false` if the claim is not this
    /// delivery's any more (or the receipt is not one of ours).
    async fn settle(
        &self,
        stage: Stage,
        delivery: &Delivery,
        action: &str,
        extra: &[String],
    ) -> Result<bool, BackendError> {
        let Some(receipt) = parse_receipt(&delivery.receipt) else {
            return Ok(false);
        };
        let mut conn = self.conn.clone();
        let mut invocation = SETTLE.key(self.stream_key(stage));
        invocation
            .key(self.delayed_key(stage))
            .key(self.dead_key())
            .arg(stage.as_str())
            .arg(receipt.consumer)
            .arg(receipt.entry_id)
            .arg(receipt.delivery_count)
            .arg(action);
        for arg in extra {
            invocation.arg(arg);
        }
        let settled: i64 = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(|err| redis_error(action, err))?;
        Ok(settled == 1)
    }

    fn stale(stage: Stage, delivery: &Delivery, what: &str) {
        tracing::debug!(%stage, receipt = %delivery.receipt, "{what} of a stale or unknown delivery ignored");
    }
}

#[async_trait]
impl StageQueue for RedisQueue {
    async fn enqueue(&self, stage: Stage, message: StageMessage) -> Result<(), BackendError> {
        let mut conn = self.conn.clone();
        let mut command = ::redis::cmd("XADD");
        command
            .arg(self.stream_key(stage))
            .arg("*")
            .arg("job_id")
            .arg(message.job_id.as_str())
            .arg("attempts")
            .arg(0);
        if let Some(traceparent) = &message.traceparent {
            command.arg("traceparent").arg(traceparent);
        }
        command
            .query_async::<String>(&mut conn)
            .await
            .map_err(|err| redis_error("XADD", err))?;
        Ok(())
    }

    async fn claim(
        &self,
        stage: Stage,
        consumer: &str,
        wait: Duration,
    ) -> Result<Option<Delivery>, BackendError> {
        let deadline = Instant::now() + wait;
        // Expired claims and due retries are looked for between blocking reads, so neither
        // waits longer than a slice for a claimer that is blocked on new messages.
        let slice =
            (self.visibility_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        loop {
            let next_due = self.promote_due(stage).await?;
            if let Some(delivery) = self.reclaim(stage, consumer).await? {
                return Ok(Some(delivery));
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            let mut block = remaining.min(slice);
            if let Some(due) = next_due {
                block = block.min(due);
            }
            if let Some(delivery) = self.read_new(stage, consumer, block).await? {
                return Ok(Some(delivery));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
        }
    }

    async fn ack(&self, stage: Stage, delivery: &Delivery) -> Result<(), BackendError> {
        if !self.settle(stage, delivery, "ack", &[]).await? {
            Self::stale(stage, delivery, "ack");
        }
        Ok(())
    }

    async fn retry(
        &self,
        stage: Stage,
        delivery: &Delivery,
        delay: Duration,
    ) -> Result<(), BackendError> {
        let extra = [
            millis(delay).to_string(),
            delivery.attempt.to_string(),
            delivery.message.job_id.to_string(),
            delivery.message.traceparent.clone().unwrap_or_default(),
        ];
        if !self.settle(stage, delivery, "retry", &extra).await? {
            Self::stale(stage, delivery, "retry");
        }
        Ok(())
    }

    async fn dead_letter(
        &self,
        stage: Stage,
        delivery: &Delivery,
        reason: &CodedError,
    ) -> Result<(), BackendError> {
        let extra = [
            stage.as_str().to_owned(),
            delivery.attempt.to_string(),
            delivery.message.job_id.to_string(),
            delivery.message.traceparent.clone().unwrap_or_default(),
            reason.code.as_str().to_owned(),
            reason.message.clone(),
        ];
        if !self.settle(stage, delivery, "dead", &extra).await? {
            Self::stale(stage, delivery, "dead-letter");
        }
        Ok(())
    }

    async fn depth(&self, stage: Stage) -> Result<QueueDepth, BackendError> {
        let mut conn = self.conn.clone();
        let key = self.stream_key(stage);
        let groups: Value = match ::redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&key)
            .query_async(&mut conn)
            .await
        {
            Ok(groups) => groups,
            // No stream yet: nothing was ever enqueued (retries may still wait).
            Err(err) if err.to_string().contains("no such key") => Value::Array(Vec::new()),
            Err(err) => return Err(redis_error("XINFO GROUPS", err)),
        };
        let group = match &groups {
            Value::Array(groups) => groups.iter().find(|group| {
                pairs(group).iter().any(|(name, value)| {
                    name == "name" && text(value).as_deref() == Some(stage.as_str())
                })
            }),
            _ => None,
        };
        let info = group.map(pairs).unwrap_or_default();
        let info_field = |name: &str| info.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
        let last_delivered = info_field("last-delivered-id")
            .and_then(text)
            .unwrap_or_else(|| "0-0".to_owned());
        let lag = info_field("lag").and_then(integer);

        let (pending_summary, oldest_waiting, delayed_count, oldest_delayed, time): (
            Value,
            Value,
            u64,
            Vec<String>,
            (u64, u64),
        ) = ::redis::pipe()
            .cmd("XPENDING")
            .arg(&key)
            .arg(stage.as_str())
            .cmd("XRANGE")
            .arg(&key)
            .arg(format!("({last_delivered}"))
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .cmd("ZCARD")
            .arg(self.delayed_key(stage))
            .cmd("ZRANGE")
            .arg(self.delayed_key(stage))
            .arg(0)
            .arg(0)
            .cmd("TIME")
            .query_async(&mut conn)
            .await
            .or_else(|err| {
                // A missing group or stream: nothing pending, nothing waiting on the stream.
                if is_no_group(&err) || err.to_string().contains("no such key") {
                    Ok((Value::Nil, Value::Nil, 0, Vec::new(), (0, 0)))
                } else {
                    Err(err)
                }
            })
            .map_err(|err| redis_error("queue depth", err))?;

        let waiting_on_stream = match lag {
            Some(lag) => u64::try_from(lag).unwrap_or(0),
            // Redis cannot tell the lag when entries were deleted past the group's position
            // (not done by this queue, but by hand): count them.
            None => {
                let after: Vec<Value> = ::redis::cmd("XRANGE")
                    .arg(&key)
                    .arg(format!("({last_delivered}"))
                    .arg("+")
                    .query_async(&mut conn)
                    .await
                    .map_err(|err| redis_error("XRANGE", err))?;
                after.len() as u64
            }
        };
        let (pending, oldest_pending) = match &pending_summary {
            Value::Array(parts) => (
                parts.first().and_then(integer).unwrap_or(0),
                parts.get(1).and_then(text),
            ),
            _ => (0, None),
        };
        let oldest_waiting = match &oldest_waiting {
            Value::Array(entries) => entries.first().and_then(parse_entry).map(|(id, _)| id),
            _ => None,
        };
        // A retried message's member carries the id of the entry it was retried from.
        let oldest_delayed = oldest_delayed
            .first()
            .and_then(|member| member.split('|').nth(1).map(str::to_owned));
        let now_ms = if time.0 > 0 {
            time.0 * 1000 + time.1 / 1000
        } else {
            pipeline::job::now_ms()
        };
        let oldest_ms = [oldest_pending, oldest_waiting, oldest_delayed]
            .iter()
            .flatten()
            .filter_map(|id| entry_ms(id))
            .min();
        Ok(QueueDepth {
            waiting: waiting_on_stream + delayed_count,
            pending: u64::try_from(pending).unwrap_or(0),
            oldest_age_ms: oldest_ms.map_or(0, |ms| now_ms.saturating_sub(ms)),
        })
    }

    async fn touch(&self, stage: Stage, delivery: &Delivery) -> Result<(), BackendError> {
        if self.settle(stage, delivery, "touch", &[]).await? {
            Ok(())
        } else {
            Err(BackendError::Conflict(format!(
                "delivery {} of stage {stage} is no longer claimed by this consumer",
                delivery.receipt
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipts_round_trip_with_spaces_in_consumer_names() {
        let made = receipt("1-0", 3, "host 1-42");
        let parsed = parse_receipt(&made).expect("parses");
        assert_eq!(
            (parsed.entry_id, parsed.delivery_count, parsed.consumer),
            ("1-0", "3", "host 1-42")
        );
        assert!(parse_receipt("garbage").is_none());
    }

    #[test]
    fn messages_need_a_job_id() {
        let id = JobId::new_random();
        let fields = vec![
            ("job_id".to_owned(), id.to_string()),
            ("attempts".to_owned(), "2".to_owned()),
        ];
        let (message, attempts) = parse_message(&fields).expect("parses");
        assert_eq!(
            (message.job_id, message.traceparent, attempts),
            (id, None, 2)
        );
        assert!(parse_message(&[("job_id".to_owned(), "../x".to_owned())]).is_err());
        assert!(parse_message(&[]).is_err());
    }
}
