//! History reads ([`BridgeMsg::Fetch`](super::BridgeMsg)) in flight beside publishes.
//!
//! A burst of resumes asks for many long reads at once. They never hold up a
//! publisher:
//! - they run on a connection of their own ([`Reader`]), so a publish's script is
//!   never queued behind their replies on one socket;
//! - at most [`FETCH_CONCURRENCY`] run at once, each in chunks of [`FETCH_CHUNK`]
//!   entries, so Redis (one thread) runs a publish after a few short `XRANGE`s,
//!   never after a whole burst;
//! - the bridge loop polls them as one more source of work ([`Fetches::next`]) and
//!   goes on serving publishes while they read;
//! - asks for the same session after the same position from one shard share one
//!   read and one answer (after a node's crash its clients come back at once, most
//!   of a session's from the same place): the shard decodes it once for all.
//!
//! The waiting list is bounded ([`FETCH_QUEUE`]); a fetch beyond it, or one whose
//! link is lost, is answered with nothing, which the shard turns into a resync, never
//! a silent loss.
//!
//! Owns the waiting list, the reads in flight and their chunking; the commands'
//! shape is `reader`'s ([`Reader::range`]), the answers `state`'s. Runs on the bridge
//! thread only.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;

use futures_util::stream::{FuturesUnordered, StreamExt};

use super::link::Lost;
use super::reader::Reader;
use crate::router::FetchPurpose;
use crate::stream::StreamPos;

/// Reads in flight at once.
pub const FETCH_CONCURRENCY: usize = 8;
/// Entries per `XRANGE`: short enough that a publish waits for little in Redis.
pub const FETCH_CHUNK: usize = 500;
/// Events read back for one fetch, at most (a resume beyond it resyncs).
pub const FETCH_MAX: usize = 10_000;
/// Fetches waiting for a slot, at most.
pub const FETCH_QUEUE: usize = 65_536;

/// One shard's request for a session's history after a position, and every
/// purpose it serves.
#[derive(Debug)]
pub struct FetchJob {
    pub from: usize,
    pub session: String,
    pub after: StreamPos,
    pub purposes: Vec<FetchPurpose>,
}

impl FetchJob {
    /// One shard's ask, for one purpose.
    pub fn new(from: usize, session: String, after: StreamPos, purpose: FetchPurpose) -> FetchJob {
        FetchJob {
            from,
            session,
            after,
            purposes: vec![purpose],
        }
    }
}

/// What makes two requests one read.
type Key = (usize, String, StreamPos);

fn key_of(job: &FetchJob) -> Key {
    (job.from, job.session.clone(), job.after)
}

/// What a read produced: the payloads after the position, `None` when the stream
/// does not reach back that far.
pub type Read = Result<Option<Vec<Vec<u8>>>, Lost>;

type InFlight = Pin<Box<dyn Future<Output = (u64, Read)> + Send>>;

/// The fetches waiting and running.
#[derive(Default)]
pub struct Fetches {
    /// Every job, waiting or running, by id.
    jobs: HashMap<u64, FetchJob>,
    /// The id of the job each key's requests join.
    by_key: HashMap<Key, u64>,
    /// Ids waiting for a slot, oldest first.
    waiting: VecDeque<u64>,
    running: usize,
    in_flight: FuturesUnordered<InFlight>,
    next_id: u64,
}

impl Fetches {
    /// Queues `job`, or joins it to a read of the same key waiting or running;
    /// hands it back when the waiting list is full.
    pub fn push(&mut self, job: FetchJob) -> Result<(), FetchJob> {
        let key = key_of(&job);
        if let Some(same) = self.by_key.get(&key).and_then(|id| self.jobs.get_mut(id)) {
            same.purposes.extend(job.purposes);
            return Ok(());
        }
        if self.waiting.len() >= FETCH_QUEUE {
            return Err(job);
        }
        let id = self.next_id;
        self.next_id += 1;
        self.by_key.insert(key, id);
        self.jobs.insert(id, job);
        self.waiting.push_back(id);
        Ok(())
    }

    /// Starts waiting fetches on `reader` while fewer than [`FETCH_CONCURRENCY`] run.
    pub fn start(&mut self, reader: &Reader) {
        while self.running < FETCH_CONCURRENCY {
            let Some(id) = self.waiting.pop_front() else {
                return;
            };
            let Some(job) = self.jobs.get(&id) else {
                continue;
            };
            let reader = reader.clone();
            let (session, after_seq) = (job.session.clone(), job.after.seq);
            self.in_flight.push(Box::pin(async move {
                (id, read_after(reader, &session, after_seq).await)
            }));
            self.running += 1;
        }
    }

    /// True while a read is running (the loop polls [`Fetches::next`] only then).
    pub fn busy(&self) -> bool {
        self.running > 0
    }

    /// The next finished read, with its job. Pending forever when none runs.
    pub async fn next(&mut self) -> (FetchJob, Read) {
        loop {
            match self.in_flight.next().await {
                Some((id, read)) => {
                    self.running -= 1;
                    if let Some(job) = self.jobs.remove(&id) {
                        self.by_key.remove(&key_of(&job));
                        return (job, read);
                    }
                }
                None => std::future::pending::<()>().await,
            }
        }
    }

    /// Every fetch waiting or running, for an answer of nothing: the link is lost.
    pub fn abandon(&mut self) -> Vec<FetchJob> {
        self.in_flight.clear();
        self.running = 0;
        self.waiting.clear();
        self.by_key.clear();
        self.jobs.drain().map(|(_, j)| j).collect()
    }
}

/// Reads `session`'s history after `after_seq` in chunks, up to [`FETCH_MAX`];
/// `None` once a chunk shows the stream does not continue from where it must.
async fn read_after(reader: Reader, session: &str, after_seq: u64) -> Read {
    let mut out: Vec<Vec<u8>> = Vec::new();
    let mut at = after_seq;
    while out.len() < FETCH_MAX {
        let want = FETCH_CHUNK.min(FETCH_MAX - out.len());
        let Some(chunk) = reader.range(session, at, want).await? else {
            // The first chunk decides whether the stream reaches back; a later one
            // that no longer continues was trimmed while reading: the shard resyncs.
            return Ok(None);
        };
        let n = chunk.len();
        at += n as u64;
        out.extend(chunk);
        if n < want {
            break;
        }
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(from: usize, session: &str, seq: u64, socket: u64) -> FetchJob {
        FetchJob {
            from,
            session: session.to_owned(),
            after: StreamPos { epoch: 7, seq },
            purposes: vec![FetchPurpose::Resume { socket }],
        }
    }

    fn sockets(job: &FetchJob) -> Vec<u64> {
        job.purposes
            .iter()
            .filter_map(|p| match p {
                FetchPurpose::Resume { socket } => Some(*socket),
                FetchPurpose::CatchUp { .. } => None,
            })
            .collect()
    }

    #[test]
    fn asks_for_the_same_read_share_one_job_and_others_do_not() {
        let mut f = Fetches::default();
        for socket in 0..100 {
            f.push(job(0, "s", 10, socket)).expect("room");
        }
        // Another position, another session, another shard: a read each.
        f.push(job(0, "s", 11, 100)).expect("room");
        f.push(job(0, "t", 10, 101)).expect("room");
        f.push(job(1, "s", 10, 102)).expect("room");
        assert_eq!(f.waiting.len(), 4);
        let mut jobs = f.abandon();
        jobs.sort_by_key(|j| (j.from, j.session.clone(), j.after.seq));
        assert_eq!(sockets(&jobs[0]), (0..100).collect::<Vec<_>>());
        assert_eq!(sockets(&jobs[1]), vec![100]);
        assert_eq!(sockets(&jobs[2]), vec![101]);
        assert_eq!(sockets(&jobs[3]), vec![102]);
        assert!(!f.busy());
    }

    #[test]
    fn a_full_waiting_list_hands_the_job_back_but_still_joins_reads_waiting() {
        let mut f = Fetches::default();
        for i in 0..FETCH_QUEUE as u64 {
            f.push(job(0, "s", i, i)).expect("room");
        }
        let back = f.push(job(0, "s", u64::MAX, 1)).expect_err("full");
        assert_eq!(back.after.seq, u64::MAX);
        // Joining a read already waiting takes no room.
        f.push(job(0, "s", 3, 99)).expect("joins");
        let jobs = f.abandon();
        assert_eq!(jobs.len(), FETCH_QUEUE);
        let three = jobs.iter().find(|j| j.after.seq == 3).expect("job");
        assert_eq!(sockets(three), vec![3, 99]);
    }

    #[test]
    fn abandoning_forgets_everything_so_the_next_ask_reads_again() {
        let mut f = Fetches::default();
        f.push(job(0, "s", 1, 1)).expect("room");
        assert_eq!(f.abandon().len(), 1);
        assert!(f.abandon().is_empty());
        f.push(job(0, "s", 1, 2)).expect("room");
        let jobs = f.abandon();
        assert_eq!(jobs.len(), 1);
        assert_eq!(sockets(&jobs[0]), vec![2]);
    }
}
