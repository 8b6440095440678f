//! Pairs upstream responses with the commands that caused them, so each
//! command's outcome (tags, rows, error, duration) can be recorded, and so a
//! refused command's stand-in error can be replaced by Airlock's own.
//!
//! Responses arrive in the order commands were sent. Each message that ends
//! with ReadyForQuery (Query, Sync, FunctionCall) closes a *batch*; the client
//! half numbers batches as it forwards them and the server half counts
//! ReadyForQuery messages, so an entry is only matched against responses of
//! its own batch even when PostgreSQL skipped messages after an error.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;

/// How the command was sent, which decides where its response ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingKind {
    /// Simple Query: everything up to ReadyForQuery.
    Simple,
    /// Extended Execute: up to CommandComplete, EmptyQuery, PortalSuspended
    /// or an error.
    Execute,
    /// FunctionCall: up to ReadyForQuery.
    FunctionCall,
}

/// A command whose response is still coming.
#[derive(Debug)]
pub struct Pending {
    pub seq: u64,
    pub kind: PendingKind,
    pub batch: u64,
    pub started: Instant,
    /// For refused commands: the ErrorResponse to send instead of the
    /// upstream's error for the stand-in statement.
    pub replacement: Option<Bytes>,
    pub rows: u64,
    pub tags: Vec<String>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    /// For masked sessions: the prepared statement an Execute runs and the
    /// result formats its Bind asked for, so rows can be masked even when
    /// this Execute was not preceded by a RowDescription.
    pub statement: Option<String>,
    pub result_formats: Vec<i16>,
    /// The command is a CSV-format COPY (masked line-wise).
    pub copy_csv: bool,
    /// Masked sessions: the gateway sent its own Describe of the portal
    /// before this Execute; the number is how many of the client's own
    /// Describes are answered first. The gateway's RowDescription (or
    /// NoData) is used for masking and not passed on.
    pub gateway_describe: Option<u32>,
}

impl Pending {
    pub fn new(seq: u64, kind: PendingKind, batch: u64) -> Self {
        Pending {
            seq,
            kind,
            batch,
            started: Instant::now(),
            replacement: None,
            rows: 0,
            tags: Vec::new(),
            error_code: None,
            error_message: None,
            statement: None,
            result_formats: Vec::new(),
            copy_csv: false,
            gateway_describe: None,
        }
    }
}

/// The server half's view of commands in flight.
#[derive(Debug, Default)]
pub struct Tracker {
    queue: VecDeque<Pending>,
    /// ReadyForQuery messages seen so far = index of the current batch.
    batch: u64,
}

impl Tracker {
    pub fn push(&mut self, p: Pending) {
        self.queue.push_back(p);
    }

    /// The command the next response belongs to, if it is in this batch.
    pub fn head(&mut self) -> Option<&mut Pending> {
        let batch = self.batch;
        self.queue.front_mut().filter(|p| p.batch == batch)
    }

    /// Ends the head command (Execute completion).
    pub fn pop_head(&mut self) -> Option<Pending> {
        let batch = self.batch;
        if self.queue.front().is_some_and(|p| p.batch == batch) {
            self.queue.pop_front()
        } else {
            None
        }
    }

    /// ReadyForQuery: every command still open in this batch is finished
    /// (Executes left open were skipped by PostgreSQL after an error).
    pub fn ready_for_query(&mut self) -> Vec<Pending> {
        let batch = self.batch;
        let mut done = Vec::new();
        while self.queue.front().is_some_and(|p| p.batch == batch) {
            if let Some(mut p) = self.queue.pop_front() {
                if p.kind == PendingKind::Execute && p.error_code.is_none() && p.tags.is_empty() {
                    p.error_message =
                        Some("not executed: an earlier message of the batch failed".into());
                }
                done.push(p);
            }
        }
        self.batch += 1;
        done
    }

    /// Index of the batch whose responses are arriving now.
    pub fn current_batch(&self) -> u64 {
        self.batch
    }

    /// The oldest command still waiting for its answer, in any batch.
    pub fn front_seq(&self) -> Option<u64> {
        self.queue.front().map(|p| p.seq)
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_only_match_their_own_batch() {
        let mut t = Tracker::default();
        t.push(Pending::new(1, PendingKind::Execute, 1));
        // Batch 0 has no command: its responses (e.g. a Parse error) match nothing.
        assert!(t.head().is_none());
        assert!(t.ready_for_query().is_empty());
        assert_eq!(t.head().map(|p| p.seq), Some(1));
    }

    #[test]
    fn skipped_executes_finish_at_ready_for_query() {
        let mut t = Tracker::default();
        t.push(Pending::new(1, PendingKind::Execute, 0));
        t.push(Pending::new(2, PendingKind::Execute, 0));
        t.head().unwrap().error_code = Some("22012".into());
        let first = t.pop_head().unwrap();
        assert_eq!(first.seq, 1);
        let rest = t.ready_for_query();
        assert_eq!(rest.len(), 1);
        assert!(
            rest[0]
                .error_message
                .as_deref()
                .unwrap()
                .contains("not executed")
        );
    }

    #[test]
    fn simple_query_waits_for_ready() {
        let mut t = Tracker::default();
        t.push(Pending::new(1, PendingKind::Simple, 0));
        t.head().unwrap().tags.push("SELECT 1".into());
        let done = t.ready_for_query();
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].tags, vec!["SELECT 1".to_string()]);
        assert!(done[0].error_message.is_none());
        assert!(t.is_empty());
    }
}
