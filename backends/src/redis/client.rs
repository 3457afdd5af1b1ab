//! Connecting to Redis and reading its replies: what the job store and the queue share.

use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{RedisError, Value};

use pipeline::traits::BackendError;

/// How long one command may take before the connection is considered broken. Generous: a
/// loaded CI machine is slow, and a reconnect costs more than waiting.
pub(super) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
pub(super) const CONNECTION_TIMEOUT: Duration = Duration::from_secs(3);

/// Every Redis failure is a fault of the moment to the pipeline: retried with backoff.
pub(super) fn redis_error(what: &str, err: RedisError) -> BackendError {
    BackendError::Queue(format!("redis {what}: {err}"))
}

/// A failure that means the connection itself broke (a Redis restart or failover leaves the
/// shared connection dead: the first command after it fails, and the manager reconnects).
fn broken_connection(err: &RedisError) -> bool {
    err.is_unrecoverable_error() || err.is_connection_dropped()
}

/// Runs `command` and, when it failed because the connection broke, once more on the
/// connection the manager reconnects, so a restart of Redis costs no request an error. Only
/// for commands that are safe to repeat: the first may have run before the connection broke.
pub(super) async fn retried<T, F, Fut>(
    conn: &ConnectionManager,
    what: &str,
    command: F,
) -> Result<T, BackendError>
where
    F: Fn(ConnectionManager) -> Fut,
    Fut: std::future::Future<Output = Result<T, RedisError>>,
{
    match command(conn.clone()).await {
        Err(err) if broken_connection(&err) => {
            tracing::debug!(what, %err, "redis connection broke; trying once more on a fresh one");
            command(conn.clone())
                .await
                .map_err(|err| redis_error(what, err))
        }
        result => result.map_err(|err| redis_error(what, err)),
    }
}

pub(super) fn open_client(url: &str) -> Result<::redis::Client, BackendError> {
    ::redis::Client::open(url)
        .map_err(|err| BackendError::Queue(format!("invalid redis url {url:?}: {err}")))
}

/// A shared, auto-reconnecting multiplexed connection for short commands.
pub(super) async fn connection_manager(
    client: ::redis::Client,
) -> Result<ConnectionManager, BackendError> {
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_connection_timeout(Some(CONNECTION_TIMEOUT))
        .set_number_of_retries(3);
    let conn = ConnectionManager::new_with_config(client, config)
        .await
        .map_err(|err| redis_error("connect", err))?;
    refuse_cluster_mode(&conn).await?;
    Ok(conn)
}

/// MSaaS needs one Redis primary (replicas and Sentinel for failover are fine): its scripts
/// move a job's record, indexes, aliases and queue entry together, keys that Redis Cluster
/// would spread over slots. A cluster node is refused at connect, in words, rather than
/// failing later with CROSSSLOT on the first job.
async fn refuse_cluster_mode(conn: &ConnectionManager) -> Result<(), BackendError> {
    let info: String = ::redis::cmd("INFO")
        .arg("cluster")
        .query_async(&mut conn.clone())
        .await
        .map_err(|err| redis_error("INFO cluster", err))?;
    if info.lines().any(|line| line.trim() == "cluster_enabled:1") {
        return Err(BackendError::Unsupported(
            "this Redis runs in cluster mode; MSaaS needs a single primary (with replicas or Sentinel for failover), as helm/msaas/README.md says under dependencies".to_owned(),
        ));
    }
    Ok(())
}

pub(super) fn check_namespace(namespace: &str) -> Result<(), BackendError> {
    if namespace.is_empty() || namespace.chars().any(|c| c.is_whitespace() || c == '*') {
        return Err(BackendError::Queue(format!(
            "invalid redis namespace {namespace:?}: must be non-empty, without spaces or '*'"
        )));
    }
    Ok(())
}

/// The text of a bulk or simple string reply.
pub(super) fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        Value::Okay => Some("OK".to_owned()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

pub(super) fn integer(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        other => text(other)?.parse().ok(),
    }
}

/// A reply that is a list of name/value pairs: a flat array (RESP2) or a map (RESP3).
pub(super) fn pairs(value: &Value) -> Vec<(String, &Value)> {
    match value {
        Value::Array(items) => items
            .chunks_exact(2)
            .filter_map(|pair| Some((text(&pair[0])?, &pair[1])))
            .collect(),
        Value::Map(items) => items
            .iter()
            .filter_map(|(name, value)| Some((text(name)?, value)))
            .collect(),
        _ => Vec::new(),
    }
}

/// The millisecond timestamp of a stream entry id (`{ms}-{seq}`).
pub(super) fn entry_ms(id: &str) -> Option<u64> {
    id.split_once('-').map_or(id, |(ms, _)| ms).parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_read_flat_arrays_and_maps() {
        let flat = Value::Array(vec![
            Value::BulkString(b"name".to_vec()),
            Value::BulkString(b"decode".to_vec()),
            Value::SimpleString("lag".into()),
            Value::Int(3),
        ]);
        let read: Vec<(String, Option<String>)> = pairs(&flat)
            .into_iter()
            .map(|(k, v)| (k, text(v)))
            .collect();
        assert_eq!(
            read,
            vec![
                ("name".into(), Some("decode".into())),
                ("lag".into(), Some("3".into()))
            ]
        );
        let map = Value::Map(vec![(Value::SimpleString("lag".into()), Value::Nil)]);
        assert_eq!(pairs(&map).len(), 1);
        assert_eq!(integer(&Value::BulkString(b"42".to_vec())), Some(42));
    }

    #[test]
    fn entry_ids_carry_their_time() {
        assert_eq!(entry_ms("1764111111111-3"), Some(1_764_111_111_111));
        assert_eq!(entry_ms("oops"), None);
    }

    #[test]
    fn namespaces_are_checked() {
        assert!(check_namespace("msaas").is_ok());
        assert!(check_namespace("").is_err());
        assert!(check_namespace("a b").is_err());
        assert!(check_namespace("a*").is_err());
    }
}
