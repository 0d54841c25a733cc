//! Calls that may block for as long as an AFS server does not answer (statfs of a
//! volume, listing the AFS root), run so that no number of them can stop the
//! driver: each on a thread of its own (never the pool publish and unpublish run
//! on), at most one at a time per key (a later caller shares its answer), and at
//! most `limit` in all (beyond that a caller is answered at once).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

/// Why a check gave no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unanswered {
    #[error("no answer within {}s", .0.as_secs())]
    TimedOut(Duration),
    #[error("{0} checks are already waiting for their servers")]
    TooMany(usize),
    #[error("cannot start a thread: {0}")]
    NoThread(String),
}

#[derive(Debug)]
pub struct BoundedChecks<T> {
    limit: usize,
    running: Mutex<HashMap<String, watch::Receiver<Option<T>>>>,
}

impl<T: Clone + Send + Sync + 'static> BoundedChecks<T> {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            running: Mutex::new(HashMap::new()),
        })
    }

    /// Checks still waiting for an answer.
    pub fn pending(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Receiver<Option<T>>>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `check` for `key`, or joins the run already going for it, and waits at
    /// most `timeout` for the answer. A timed-out check goes on in its thread; the
    /// next caller for the key waits for that one instead of starting another.
    pub async fn run(
        self: &Arc<Self>,
        key: &str,
        timeout: Duration,
        check: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Unanswered> {
        let mut answer = {
            let mut running = self.lock();
            match running.get(key) {
                Some(answer) => answer.clone(),
                None => {
                    if running.len() >= self.limit {
                        return Err(Unanswered::TooMany(running.len()));
                    }
                    let (send, answer) = watch::channel(None);
                    let owner = Arc::clone(self);
                    let owned_key = key.to_owned();
                    std::thread::Builder::new()
                        .name("afs-check".into())
                        .stack_size(256 * 1024)
                        .spawn(move || {
                            let result = check();
                            owner.lock().remove(&owned_key);
                            let _ = send.send(Some(result));
                        })
                        .map_err(|e| Unanswered::NoThread(e.to_string()))?;
                    running.insert(key.to_owned(), answer.clone());
                    answer
                }
            }
        };
        let waited = tokio::time::timeout(timeout, answer.wait_for(Option::is_some)).await;
        match waited {
            Ok(Ok(result)) => Ok(result
                .clone()
                .unwrap_or_else(|| unreachable!("waited for Some"))),
            // The sender is dropped only after sending, so this is a panicked check.
            Ok(Err(_)) => Err(Unanswered::NoThread("the check's thread died".into())),
            Err(_) => Err(Unanswered::TimedOut(timeout)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn one_blocked_call_per_key_and_a_bound_in_all() {
        let checks = BoundedChecks::<u32>::new(2);
        let started = Arc::new(AtomicUsize::new(0));
        let (release, released) = std::sync::mpsc::channel::<()>();
        let released = Arc::new(Mutex::new(released));
        let hang = |started: &Arc<AtomicUsize>,
                    released: &Arc<Mutex<std::sync::mpsc::Receiver<()>>>| {
            let (started, released) = (Arc::clone(started), Arc::clone(released));
            move || {
                started.fetch_add(1, Ordering::SeqCst);
                let _ = released.lock().map(|r| r.recv());
                7
            }
        };
        let short = Duration::from_millis(50);
        for _ in 0..10 {
            assert_eq!(
                checks.run("a", short, hang(&started, &released)).await,
                Err(Unanswered::TimedOut(short))
            );
        }
        assert_eq!(
            started.load(Ordering::SeqCst),
            1,
            "later callers joined the first"
        );
        assert_eq!(
            checks.run("b", short, hang(&started, &released)).await,
            Err(Unanswered::TimedOut(short))
        );
        assert_eq!(
            checks.run("c", short, || 1).await,
            Err(Unanswered::TooMany(2)),
            "the bound answers at once"
        );
        assert_eq!(checks.pending(), 2);
        release.send(()).expect("release");
        release.send(()).expect("release");
        let joined = checks.run("a", Duration::from_secs(5), || 0).await;
        // Either the released run's answer or a fresh one: never a hang.
        assert!(matches!(joined, Ok(7) | Ok(0)), "{joined:?}");
        assert_eq!(checks.run("c", Duration::from_secs(5), || 1).await, Ok(1));
    }
}
