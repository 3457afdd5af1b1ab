//! The distributed queue and system of record on Redis (DESIGN.md "The flow"): one stream per
//! stage read by a consumer group, and job records as hashes moved by compare-and-set Lua
//! scripts. Every key starts with a namespace (`msaas` in production, a random one in tests).
//!
//! Keys, with `{ns}` the namespace:
//! - `{ns}:stage:{stage}` stream, consumer group `{stage}`; entry fields `job_id`, `attempts`
//!   (deliveries before this entry, carried across retries), `traceparent` (optional)
//! - `{ns}:delayed:{stage}` zset of retried messages by due time, moved to the stream by claims
//! - `{ns}:dead` stream of dead letters (`stage`, `job_id`, `attempt`, `code`, `message`, ...)
//! - `{ns}:job:{id}` hash: `json` (the whole record) plus `state`, `attempt`, `tenant`,
//!   `created_ms`, `updated_ms` as plain fields for the Lua scripts
//! - `{ns}:tenant:{tenant}:jobs` zset of job ids by creation time
//! - `{ns}:jobs:stale` / `{ns}:jobs:expired` zsets of unfinished / finished jobs by `updated_ms`
//! - `{ns}:alias:{alias}` string (job id), `{ns}:job:{id}:aliases` set of a job's aliases
//! - `{ns}:lease:{alias}` string (holder) with a TTL: an Idempotency-Key whose upload is
//!   streaming
//! - `{ns}:apikeys` hash: SHA-256 of an API key (hex) → tenant

mod client;
mod jobs;
mod queue;

pub use jobs::RedisJobStore;
pub use queue::RedisQueue;
