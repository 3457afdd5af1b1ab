//! In-process job records (embedded mode). The compare-and-set is the same contract the
//! Redis backend implements with a Lua script.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use pipeline::job::{Job, JobId, JobState};
use pipeline::traits::{BackendError, JobStore};

#[derive(Debug, Default)]
struct Inner {
    /// Record plus its creation sequence, which orders jobs created in the same millisecond.
    jobs: HashMap<JobId, (u64, Job)>,
    next_seq: u64,
    aliases: HashMap<String, JobId>,
    /// Per tenant: the fixed window counted last, and its uploads.
    uploads: HashMap<String, (u64, u64)>,
    /// Leases by name: holder and when it lapses.
    leases: HashMap<String, (String, Instant)>,
}

/// The in-memory [`JobStore`]. Cheap to clone (shared state).
#[derive(Debug, Clone, Default)]
pub struct MemoryJobStore {
    inner: Arc<RwLock<Inner>>,
}

impl MemoryJobStore {
    pub fn new() -> Self {
        Self::default()
    }

    // A poisoned lock means a panic mid-update elsewhere; every update below is a single
    // insert, so the map is still consistent and is used as is.
    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl JobStore for MemoryJobStore {
    async fn create(&self, job: &Job) -> Result<(), BackendError> {
        let mut inner = self.write();
        if inner.jobs.contains_key(&job.id) {
            return Err(BackendError::Conflict(format!("job {} exists", job.id)));
        }
        inner.next_seq += 1;
        let seq = inner.next_seq;
        inner.jobs.insert(job.id.clone(), (seq, job.clone()));
        Ok(())
    }

    async fn get(&self, id: &JobId) -> Result<Option<Job>, BackendError> {
        Ok(self.read().jobs.get(id).map(|(_, job)| job.clone()))
    }

    async fn compare_and_set(
        &self,
        expected: JobState,
        expected_attempt: u32,
        next: &Job,
    ) -> Result<(), BackendError> {
        let mut inner = self.write();
        let Some((_, current)) = inner.jobs.get_mut(&next.id) else {
            return Err(BackendError::NotFound(format!("job {}", next.id)));
        };
        if current.state != expected || current.attempt != expected_attempt {
            return Err(BackendError::Conflict(format!(
                "job {} is {} attempt {}, expected {expected} attempt {expected_attempt}",
                next.id, current.state, current.attempt
            )));
        }
        *current = next.clone();
        Ok(())
    }

    async fn list(&self, tenant: &str, limit: usize) -> Result<Vec<Job>, BackendError> {
        let inner = self.read();
        let mut jobs: Vec<&(u64, Job)> = inner
            .jobs
            .values()
            .filter(|(_, job)| job.tenant == tenant)
            .collect();
        jobs.sort_by(|(seq_a, a), (seq_b, b)| (b.created_ms, seq_b).cmp(&(a.created_ms, seq_a)));
        Ok(jobs
            .into_iter()
            .take(limit)
            .map(|(_, job)| job.clone())
            .collect())
    }

    async fn delete(&self, id: &JobId) -> Result<(), BackendError> {
        let mut inner = self.write();
        inner.jobs.remove(id);
        inner.aliases.retain(|_, bound| bound != id);
        Ok(())
    }

    async fn expired(
        &self,
        ended_before_ms: u64,
        limit: usize,
    ) -> Result<Vec<JobId>, BackendError> {
        let inner = self.read();
        let mut ended: Vec<&Job> = inner
            .jobs
            .values()
            .map(|(_, job)| job)
            .filter(|job| job.state.is_terminal() && job.updated_ms < ended_before_ms)
            .collect();
        ended.sort_by_key(|job| job.updated_ms);
        Ok(ended
            .into_iter()
            .take(limit)
            .map(|job| job.id.clone())
            .collect())
    }

    async fn stale(&self, updated_before_ms: u64, limit: usize) -> Result<Vec<Job>, BackendError> {
        let inner = self.read();
        let mut stale: Vec<&Job> = inner
            .jobs
            .values()
            .map(|(_, job)| job)
            .filter(|job| !job.state.is_terminal() && job.updated_ms < updated_before_ms)
            .collect();
        stale.sort_by_key(|job| job.updated_ms);
        Ok(stale.into_iter().take(limit).cloned().collect())
    }

    async fn bind_alias(&self, alias: &str, id: &JobId) -> Result<JobId, BackendError> {
        let mut inner = self.write();
        // A binding to a deleted record is stale: the alias is free again.
        if let Some(bound) = inner.aliases.get(alias)
            && inner.jobs.contains_key(bound)
        {
            return Ok(bound.clone());
        }
        inner.aliases.insert(alias.to_owned(), id.clone());
        Ok(id.clone())
    }

    async fn resolve_alias(&self, alias: &str) -> Result<Option<JobId>, BackendError> {
        let inner = self.read();
        Ok(inner
            .aliases
            .get(alias)
            .filter(|bound| inner.jobs.contains_key(*bound))
            .cloned())
    }

    async fn lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, BackendError> {
        let now = Instant::now();
        let mut inner = self.write();
        inner.leases.retain(|_, (_, until)| *until > now);
        match inner.leases.get_mut(name) {
            Some((current, until)) if current == holder => *until = now + ttl,
            Some(_) => return Ok(false),
            None => {
                inner
                    .leases
                    .insert(name.to_owned(), (holder.to_owned(), now + ttl));
            }
        }
        Ok(true)
    }

    async fn release(&self, name: &str, holder: &str) -> Result<(), BackendError> {
        let mut inner = self.write();
        if inner
            .leases
            .get(name)
            .is_some_and(|(current, _)| current == holder)
        {
            inner.leases.remove(name);
        }
        Ok(())
    }

    async fn active_count(&self, tenant: &str) -> Result<u64, BackendError> {
        Ok(self
            .read()
            .jobs
            .values()
            .filter(|(_, job)| job.tenant == tenant && !job.state.is_terminal())
            .count() as u64)
    }

    async fn count_upload(
        &self,
        tenant: &str,
        now_ms: u64,
        window_ms: u64,
    ) -> Result<u64, BackendError> {
        let window = now_ms / window_ms.max(1);
        let mut inner = self.write();
        let entry = inner
            .uploads
            .entry(tenant.to_owned())
            .or_insert((window, 0));
        if entry.0 != window {
            *entry = (window, 0);
        }
        entry.1 += 1;
        Ok(entry.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pipeline::job::JobOptions;

    #[tokio::test]
    async fn create_refuses_duplicates() {
        let store = MemoryJobStore::new();
        let job = Job::new("t", "a.wav", JobOptions::default());
        store.create(&job).await.unwrap();
        assert!(matches!(
            store.create(&job).await,
            Err(BackendError::Conflict(_))
        ));
        assert_eq!(store.get(&job.id).await.unwrap(), Some(job));
    }

    #[tokio::test]
    async fn compare_and_set_checks_state_and_attempt() {
        let store = MemoryJobStore::new();
        let job = Job::new("t", "a.wav", JobOptions::default());
        store.create(&job).await.unwrap();

        let mut next = job.clone();
        next.state = JobState::Decoding;
        next.attempt = 1;
        // Wrong state, then wrong attempt: nothing changes.
        assert!(matches!(
            store.compare_and_set(JobState::Decoding, 0, &next).await,
            Err(BackendError::Conflict(_))
        ));
        assert!(matches!(
            store.compare_and_set(JobState::Queued, 1, &next).await,
            Err(BackendError::Conflict(_))
        ));
        assert_eq!(
            store.get(&job.id).await.unwrap().unwrap().state,
            JobState::Queued
        );

        store
            .compare_and_set(JobState::Queued, 0, &next)
            .await
            .unwrap();
        assert_eq!(store.get(&job.id).await.unwrap(), Some(next.clone()));
        // The same move again loses: the record moved on.
        assert!(
            store
                .compare_and_set(JobState::Queued, 0, &next)
                .await
                .is_err()
        );

        let unknown = Job::new("t", "b.wav", JobOptions::default());
        assert!(matches!(
            store.compare_and_set(JobState::Queued, 0, &unknown).await,
            Err(BackendError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn list_is_per_tenant_newest_first() {
        let store = MemoryJobStore::new();
        let mut ids = Vec::new();
        for n in 0..5 {
            let mut job = Job::new("acme", format!("{n}.wav"), JobOptions::default());
            // Some share a creation millisecond: creation order still decides.
            job.created_ms = 1_000 + n / 2;
            store.create(&job).await.unwrap();
            ids.push(job.id);
        }
        store
            .create(&Job::new("other", "x.wav", JobOptions::default()))
            .await
            .unwrap();
        let listed: Vec<JobId> = store
            .list("acme", 3)
            .await
            .unwrap()
            .into_iter()
            .map(|job| job.id)
            .collect();
        assert_eq!(listed, vec![ids[4].clone(), ids[3].clone(), ids[2].clone()]);
        assert_eq!(store.list("other", 10).await.unwrap().len(), 1);
        assert!(store.list("nobody", 10).await.unwrap().is_empty());

        store.delete(&ids[4]).await.unwrap();
        assert_eq!(store.get(&ids[4]).await.unwrap(), None);
        store.delete(&ids[4]).await.unwrap();
    }
}
