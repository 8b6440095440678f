//! The in-memory index of running just-in-time access grants, so the
//! policy's `grant` fact costs two hash lookups and never a query.

use std::collections::HashMap;

use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    id: Uuid,
    until_us: i64,
}

/// identity -> connection -> grants. Nested so lookups borrow `&str` keys.
#[derive(Debug, Default)]
pub(super) struct Grants {
    by_identity: HashMap<String, HashMap<String, Vec<Entry>>>,
}

impl Grants {
    /// True if a grant of `identity` on `connection` runs at `now_us`. The
    /// end time is checked here, so a grant whose timer has not fired yet
    /// still stops counting exactly when it should.
    pub fn has(&self, identity: &str, connection: &str, now_us: i64) -> bool {
        self.by_identity
            .get(identity)
            .and_then(|c| c.get(connection))
            .is_some_and(|v| v.iter().any(|e| e.until_us > now_us))
    }

    pub fn insert(&mut self, id: Uuid, identity: &str, connection: &str, until_us: i64) {
        let list = self
            .by_identity
            .entry(identity.to_owned())
            .or_default()
            .entry(connection.to_owned())
            .or_default();
        list.retain(|e| e.id != id);
        list.push(Entry { id, until_us });
    }

    /// Forgets grant `id` (revoked or ended).
    pub fn remove(&mut self, id: Uuid) {
        self.by_identity.retain(|_, conns| {
            conns.retain(|_, list| {
                list.retain(|e| e.id != id);
                !list.is_empty()
            });
            !conns.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_count_until_their_end_and_not_after_removal() {
        let mut g = Grants::default();
        let a = Uuid::new_v4();
        g.insert(a, "alice", "prod", 100);
        assert!(g.has("alice", "prod", 99));
        assert!(!g.has("alice", "prod", 100), "ends at until_us");
        assert!(!g.has("alice", "dev", 50));
        assert!(!g.has("bob", "prod", 50));
        let b = Uuid::new_v4();
        g.insert(b, "alice", "prod", 200);
        g.remove(a);
        assert!(g.has("alice", "prod", 150));
        g.remove(b);
        assert!(!g.has("alice", "prod", 150));
        assert!(g.by_identity.is_empty());
    }
}
