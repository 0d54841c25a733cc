//! Per-target serialisation: a second operation on a target that is busy is
//! refused at once (the caller retries) instead of queueing behind it.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

#[derive(Debug, Default)]
pub struct InFlight {
    busy: Mutex<HashSet<PathBuf>>,
}

/// Held while an operation runs; releases the target when dropped, even when
/// the RPC that started it was cancelled.
#[derive(Debug)]
pub struct InFlightGuard {
    owner: Arc<InFlight>,
    key: PathBuf,
}

impl InFlight {
    pub fn try_begin(self: &Arc<Self>, key: PathBuf) -> Option<InFlightGuard> {
        let mut busy = self
            .busy
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        busy.insert(key.clone()).then(|| InFlightGuard {
            owner: Arc::clone(self),
            key,
        })
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let mut busy = self
            .owner
            .busy
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        busy.remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_at_a_time_per_key() {
        let in_flight = Arc::new(InFlight::default());
        let first = in_flight.try_begin("/a".into()).expect("free");
        assert!(in_flight.try_begin("/a".into()).is_none());
        let other = in_flight.try_begin("/b".into());
        assert!(other.is_some(), "other keys proceed");
        drop(first);
        assert!(in_flight.try_begin("/a".into()).is_some());
    }
}
