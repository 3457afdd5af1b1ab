//! RedisJobStore against a real Redis (MSAAS_TEST_REDIS_URL, default redis://127.0.0.1:6379):
//! records, the compare-and-set, tenant lists, the janitor's indexes, aliases, API keys.

#![allow(clippy::unwrap_used)] // a test that unwraps fails; the service must not (workspace lint)

mod redis_common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use pipeline::job::now_ms;
use pipeline::traits::JobStore;
use pipeline::{BackendError, Job, JobId, JobOptions, JobState};
use redis_common::{TestNamespace, moved};

const RETENTION: Duration = Duration::from_secs(3600);

fn job(tenant: &str) -> Job {
    Job::new(tenant, "song.mp3", JobOptions::default())
}

#[tokio::test]
async fn create_get_and_refuse_duplicates() {
    let ns = TestNamespace::new();
    let store = ns.store(RETENTION).await;
    let mut job = job("acme");
    job.sha256 = Some("ab".repeat(32));
    store.create(&job).await.unwrap();
    assert_eq!(store.get(&job.id).await.unwrap(), Some(job.clone()));
    assert!(matches!(
        store.create(&job).await,
        Err(BackendError::Conflict(_))
    ));
    assert_eq!(store.get(&JobId::new_random()).await.unwrap(), None);
    // The record is a hash with the fields the Lua scripts check beside the JSON.
    let fields: Vec<String> = redis::cmd("HKEYS")
        .arg(ns.key(&format!("job:{}", job.id)))
        .query(&mut ns.raw())
        .unwrap();
    for field in ["json", "state", "attempt", "tenant", "updated_ms"] {
        assert!(fields.iter().any(|f| f == field), "{field} in {fields:?}");
    }
}

#[tokio::test]
async fn compare_and_set_checks_state_and_attempt() {
    let ns = TestNamespace::new();
    let store = ns.store(RETENTION).await;
    let job = job("acme");
    store.create(&job).await.unwrap();
    let next = moved(&job, JobState::Decoding, 1);
    // Wrong state, then wrong attempt: nothing changes.
    assert!(matches!(
        store.compare_and_set(JobState::Decoding, 0, &next).await,
        Err(BackendError::Conflict(_))
    ));
    assert!(matches!(
        store.compare_and_set(JobState::Queued, 1, &next).await,
        Err(BackendError::Conflict(_))
    ));
    assert_eq!(store.get(&job.id).await.unwrap(), Some(job.clone()));

    store
        .compare_and_set(JobState::Queued, 0, &next)
        .await
        .unwrap();
    assert_eq!(store.get(&job.id).await.unwrap(), Some(next.clone()));
    // The same move again loses: the record moved on.
    assert!(matches!(
        store.compare_and_set(JobState::Queued, 0, &next).await,
        Err(BackendError::Conflict(_))
    ));
    let unknown = self::job("acme");
    assert!(matches!(
        store.compare_and_set(JobState::Queued, 0, &unknown).await,
        Err(BackendError::NotFound(_))
    ));
}

#[tokio::test]
async fn concurrent_compare_and_set_has_one_winner() {
    let ns = TestNamespace::new();
    let store = Arc::new(ns.store(RETENTION).await);
    let job = job("acme");
    store.create(&job).await.unwrap();
    let tasks: Vec<_> = (1..=16u32)
        .map(|attempt| {
            let store = store.clone();
            let next = moved(&job, JobState::Decoding, attempt);
            tokio::spawn(async move {
                store
                    .compare_and_set(JobState::Queued, 0, &next)
                    .await
                    .map(|()| attempt)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Ok(attempt) => winners.push(attempt),
            Err(BackendError::Conflict(_)) => {}
            Err(err) => panic!("{err}"),
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    let record = store.get(&job.id).await.unwrap().unwrap();
    assert_eq!(
        (record.state, record.attempt),
        (JobState::Decoding, winners[0])
    );
}

#[tokio::test]
async fn list_is_per_tenant_newest_first() {
    let ns = TestNamespace::new();
    let store = ns.store(RETENTION).await;
    let mut ids = Vec::new();
    for n in 0..5u64 {
        let mut job = job("acme");
        // Some share a creation millisecond: creation order still decides.
        job.created_ms = 1_764_000_000_000 + n / 2;
        store.create(&job).await.unwrap();
        ids.push(job.id);
    }
    store.create(&job("other")).await.unwrap();
    let listed: Vec<JobId> = store
        .list("acme", 3)
        .await
        .unwrap()
        .into_iter()
        .map(|job| job.id)
        .collect();
    assert_eq!(listed, vec![ids[4].clone(), ids[3].clone(), ids[2].clone()]);
    assert_eq!(store.list("acme", 100).await.unwrap().len(), 5);
    let others = store.list("other", 10).await.unwrap();
    assert_eq!(others.len(), 1);
    assert!(others.iter().all(|job| job.tenant == "other"));
    assert!(store.list("nobody", 10).await.unwrap().is_empty());

    store.delete(&ids[4]).await.unwrap();
    assert_eq!(store.get(&ids[4]).await.unwrap(), None);
    store.delete(&ids[4]).await.unwrap();
    assert_eq!(store.list("acme", 1).await.unwrap()[0].id, ids[3]);

    // A record that vanished without a delete (its expiry) is skipped, and the list still
    // fills up to the limit.
    let _: () = redis::cmd("DEL")
        .arg(ns.key(&format!("job:{}", ids[3])))
        .query(&mut ns.raw())
        .unwrap();
    let listed: Vec<JobId> = store
        .list("acme", 2)
        .await
        .unwrap()
        .into_iter()
        .map(|job| job.id)
        .collect();
    assert_eq!(listed, vec![ids[2].clone(), ids[1].clone()]);
}

#[tokio::test]
async fn expired_and_stale_indexes_follow_the_record() {
    let ns = TestNamespace::new();
    let store = ns.store(RETENTION).await;
    let now = now_ms();
    let mut old_done = job("acme");
    old_done.updated_ms = now - 50_000;
    let mut older_failed = job("acme");
    older_failed.updated_ms = now - 90_000;
    let fresh_done = job("acme");
    for job in [&old_done, &older_failed, &fresh_done] {
        store.create(job).await.unwrap();
    }
    let mut stuck = job("acme");
    stuck.updated_ms = now - 70_000;
    store.create(&stuck).await.unwrap();
    let fresh_queued = job("acme");
    store.create(&fresh_queued).await.unwrap();

    // Nothing has ended yet; the old queued records are stale, oldest first.
    assert!(store.expired(now, 10).await.unwrap().is_empty());
    let stale: Vec<JobId> = store
        .stale(now - 10_000, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|job| job.id)
        .collect();
    assert_eq!(
        stale,
        vec![
            older_failed.id.clone(),
            stuck.id.clone(),
            old_done.id.clone()
        ]
    );

    for (job, state) in [
        (&old_done, JobState::Done),
        (&older_failed, JobState::Failed),
        (&fresh_done, JobState::Done),
    ] {
        let mut ended = job.clone();
        ended.state = state;
        store
            .compare_and_set(JobState::Queued, 0, &ended)
            .await
            .unwrap();
    }
    assert_eq!(
        store.expired(now - 10_000, 10).await.unwrap(),
        vec![older_failed.id.clone(), old_done.id.clone()]
    );
    assert_eq!(store.expired(now - 10_000, 1).await.unwrap().len(), 1);
    let stale: Vec<JobId> = store
        .stale(now - 10_000, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|job| job.id)
        .collect();
    assert_eq!(stale, vec![stuck.id.clone()]);

    // A finished record expires (retention + a day) even if no janitor runs; a running one not.
    let mut raw = ns.raw();
    let ttl: i64 = redis::cmd("TTL")
        .arg(ns.key(&format!("job:{}", old_done.id)))
        .query(&mut raw)
        .unwrap();
    assert!(ttl > 3600 && ttl <= 3600 + 86_400, "ttl {ttl}");
    let ttl: i64 = redis::cmd("TTL")
        .arg(ns.key(&format!("job:{}", stuck.id)))
        .query(&mut raw)
        .unwrap();
    assert_eq!(ttl, -1);

    store.delete(&old_done.id).await.unwrap();
    assert_eq!(
        store.expired(now, 10).await.unwrap(),
        vec![older_failed.id.clone()]
    );
}

#[tokio::test]
async fn aliases_bind_once_and_go_with_the_record() {
    let ns = TestNamespace::new();
    let store = Arc::new(ns.store(RETENTION).await);
    let first = job("acme");
    let second = job("acme");
    store.create(&first).await.unwrap();
    store.create(&second).await.unwrap();
    let alias = "idem:acme:key-1";
    assert_eq!(store.resolve_alias(alias).await.unwrap(), None);
    assert_eq!(store.bind_alias(alias, &first.id).await.unwrap(), first.id);
    assert_eq!(store.bind_alias(alias, &second.id).await.unwrap(), first.id);
    assert_eq!(store.bind_alias(alias, &first.id).await.unwrap(), first.id);
    assert_eq!(
        store.resolve_alias(alias).await.unwrap(),
        Some(first.id.clone())
    );

    // Deleting the record removes its aliases: the key is free again.
    store.delete(&first.id).await.unwrap();
    assert_eq!(store.resolve_alias(alias).await.unwrap(), None);
    let exists: bool = redis::cmd("EXISTS")
        .arg(ns.key(&format!("alias:{alias}")))
        .query(&mut ns.raw())
        .unwrap();
    assert!(!exists);
    assert_eq!(
        store.bind_alias(alias, &second.id).await.unwrap(),
        second.id
    );

    // Many binders at once: exactly one wins, and everyone is told the same winner.
    let contested = "sha:acme:0123";
    let mut jobs = Vec::new();
    for _ in 0..12 {
        let job = job("acme");
        store.create(&job).await.unwrap();
        jobs.push(job.id);
    }
    let tasks: Vec<_> = jobs
        .iter()
        .cloned()
        .map(|id| {
            let store = store.clone();
            tokio::spawn(async move { store.bind_alias(contested, &id).await })
        })
        .collect();
    let mut bound = HashSet::new();
    for task in tasks {
        bound.insert(task.await.unwrap().unwrap());
    }
    assert_eq!(bound.len(), 1, "{bound:?}");
    let winner = bound.into_iter().next().unwrap();
    assert!(jobs.contains(&winner));
    assert_eq!(store.resolve_alias(contested).await.unwrap(), Some(winner));
}

#[tokio::test]
async fn an_alias_bound_before_its_record_holds_and_then_lives_with_it() {
    let ns = TestNamespace::new();
    let store = ns.store(RETENTION).await;
    // Ingest binds an Idempotency-Key first and creates the job after: a concurrent request
    // with the same key must lose to the binding even though no record exists yet.
    let first = job("acme");
    let second = job("acme");
    let alias = "idem:acme:pending";
    assert_eq!(store.bind_alias(alias, &first.id).await.unwrap(), first.id);
    assert_eq!(store.bind_alias(alias, &second.id).await.unwrap(), first.id);
    assert_eq!(store.resolve_alias(alias).await.unwrap(), None);
    let mut raw = ns.raw();
    let ttl = |raw: &mut redis::Connection| -> i64 {
        redis::cmd("TTL")
            .arg(ns.key(&format!("alias:{alias}")))
            .query(raw)
            .unwrap()
    };
    // Until the record exists the binding expires by itself (a crashed submission frees it).
    let pending = ttl(&mut raw);
    assert!(pending > 0 && pending <= 300, "ttl {pending}");

    store.create(&first).await.unwrap();
    assert_eq!(ttl(&mut raw), -1);
    assert_eq!(
        store.resolve_alias(alias).await.unwrap(),
        Some(first.id.clone())
    );
}

#[tokio::test]
async fn a_finished_jobs_aliases_expire_with_it() {
    let ns = TestNamespace::new();
    let store = ns.store(RETENTION).await;
    let job = job("acme");
    store.create(&job).await.unwrap();
    store.bind_alias("idem:acme:x", &job.id).await.unwrap();
    let mut done = job.clone();
    done.state = JobState::Done;
    store
        .compare_and_set(JobState::Queued, 0, &done)
        .await
        .unwrap();
    let ttl: i64 = redis::cmd("TTL")
        .arg(ns.key("alias:idem:acme:x"))
        .query(&mut ns.raw())
        .unwrap();
    assert!(ttl > 3600, "ttl {ttl}");
}

#[tokio::test]
async fn api_keys_map_to_tenants() {
    let ns = TestNamespace::new();
    let store = ns.store(RETENTION).await;
    let key = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    assert_eq!(store.api_key_tenant(key).await.unwrap(), None);
    store.add_api_key("acme", key).await.unwrap();
    assert_eq!(
        store.api_key_tenant(key).await.unwrap().as_deref(),
        Some("acme")
    );
    assert_eq!(
        store
            .api_key_tenant(&key.to_ascii_uppercase())
            .await
            .unwrap()
            .as_deref(),
        Some("acme")
    );
    assert_eq!(store.api_key_tenant(&"0".repeat(64)).await.unwrap(), None);
}

/// `create_queued` beside its queue: record, aliases and decode's stream entry in one script.
/// A repeat of the same call (a retry after a broken connection) is `Created` again and adds
/// nothing; an alias bound to a live job names it and writes nothing; a binding left by a job
/// whose record is gone does not block the alias.
#[tokio::test]
async fn create_queued_writes_record_aliases_and_entry_in_one_step() {
    use pipeline::Stage;
    use pipeline::traits::{StageMessage, StageQueue, Submitted};

    let ns = TestNamespace::new();
    let queue = ns.queue(Duration::from_secs(30)).await;
    let store = ns.store(RETENTION).await.beside(&queue);
    let first = job("acme");
    let message = |job: &Job| StageMessage {
        job_id: job.id.clone(),
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
    };
    let aliases = vec!["idem:acme:k1".to_owned()];
    for _ in 0..2 {
        let created = store
            .create_queued(&first, &aliases, &queue, Stage::Decode, &message(&first))
            .await
            .unwrap();
        assert_eq!(created, Submitted::Created);
    }
    assert_eq!(store.get(&first.id).await.unwrap(), Some(first.clone()));
    assert_eq!(
        store.resolve_alias("idem:acme:k1").await.unwrap(),
        Some(first.id.clone())
    );
    let entries: i64 = redis::cmd("XLEN")
        .arg(queue.stream_key(Stage::Decode))
        .query(&mut ns.raw())
        .unwrap();
    assert_eq!(entries, 1, "the repeat added no second entry");
    let delivery = queue
        .claim(Stage::Decode, "test", Duration::from_millis(100))
        .await
        .unwrap()
        .expect("the job is queued");
    assert_eq!(delivery.message, message(&first));
    assert_eq!(delivery.attempt, 1);

    // Another job with the same alias: the first is named, nothing written.
    let second = job("acme");
    let existing = store
        .create_queued(&second, &aliases, &queue, Stage::Decode, &message(&second))
        .await
        .unwrap();
    assert_eq!(existing, Submitted::Existing(first.id.clone()));
    assert_eq!(store.get(&second.id).await.unwrap(), None);
    let depth = queue.depth(Stage::Decode).await.unwrap();
    assert_eq!((depth.waiting, depth.pending), (0, 1));

    // A binding to a job that was never created (a crash before the record) is free.
    let ghost = JobId::new_random();
    assert_eq!(
        store.bind_alias("idem:acme:k2", &ghost).await.unwrap(),
        ghost
    );
    let third = job("acme");
    let created = store
        .create_queued(
            &third,
            &["idem:acme:k2".to_owned()],
            &queue,
            Stage::Decode,
            &message(&third),
        )
        .await
        .unwrap();
    assert_eq!(created, Submitted::Created);
    assert_eq!(
        store.resolve_alias("idem:acme:k2").await.unwrap(),
        Some(third.id.clone())
    );
}

/// Leases: one holder at a time, renewed by its holder, given back only by it, and free
/// again once nobody renews it.
#[tokio::test]
async fn leases_have_one_holder_and_lapse() {
    let ns = TestNamespace::new();
    let store = ns.store(RETENTION).await;
    let ttl = Duration::from_millis(300);
    assert!(store.lease("idem:acme:k", "a", ttl).await.unwrap());
    assert!(!store.lease("idem:acme:k", "b", ttl).await.unwrap());
    assert!(
        store.lease("idem:acme:k", "a", ttl).await.unwrap(),
        "renewed"
    );
    store.release("idem:acme:k", "b").await.unwrap();
    assert!(
        !store.lease("idem:acme:k", "b", ttl).await.unwrap(),
        "not b's to give back"
    );
    store.release("idem:acme:k", "a").await.unwrap();
    assert!(
        store.lease("idem:acme:k", "b", ttl).await.unwrap(),
        "given back"
    );
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    assert!(
        store.lease("idem:acme:k", "c", ttl).await.unwrap(),
        "lapsed"
    );
}
