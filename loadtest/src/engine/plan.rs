//! The process's plan, pure: which sockets this slice opens (session, node, slow or not),
//! how they are dealt to worker threads, when a paced handshake is due, which source
//! address a socket binds, the churn lanes, and how many file descriptors it all needs.
//!
//! Owns: index arithmetic only. May not touch sockets, threads, clocks or the
//! per-worker measurements; callers pass the times in, so every function here is
//! unit-tested below.

use crate::scenario::Scenario;

/// Which share of the sockets this process runs (`--procs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Slice {
    pub index: u32,
    pub count: u32,
}

impl Slice {
    pub const WHOLE: Slice = Slice { index: 0, count: 1 };
}

/// One socket this process opens. Pure data from [`plan`].
#[derive(Debug, Clone, PartialEq)]
pub struct SocketSpec {
    /// Global index across all processes.
    pub g: u64,
    /// Index within this process (paces open-loop connects).
    pub local: u64,
    pub session: u32,
    pub node: usize,
    pub slow: bool,
}

/// The sockets of `slice`: socket g joins session g / sockets_per_session, connects to node
/// g mod nodes, and is slow as [`Scenario::is_slow`] says.
pub fn plan(scn: &Scenario, slice: Slice, nodes: usize) -> Vec<SocketSpec> {
    let per = u64::from(scn.sockets_per_session.max(1));
    let nodes = nodes.max(1) as u64;
    (0..scn.total_sockets())
        .filter(|g| g % u64::from(slice.count) == u64::from(slice.index))
        .enumerate()
        .map(|(local, g)| SocketSpec {
            g,
            local: local as u64,
            session: u32::try_from(g / per).unwrap_or(u32::MAX),
            node: (g % nodes) as usize,
            slow: scn.is_slow(g),
        })
        .collect()
}

/// File descriptors this process needs: its sockets, publisher connections, churn sockets.
pub fn fds_needed(scn: &Scenario, slice: Slice) -> u64 {
    let sockets = plan_len(scn, slice);
    let publishers = if publishes_here(scn, slice) {
        u64::from(scn.publishers)
    } else {
        0
    };
    sockets + publishers + scn.churn_live_max() / u64::from(slice.count) + 1 + crate::sys::FD_SLACK
}

/// How many sockets [`plan`] gives `slice`, without building the list.
pub(super) fn plan_len(scn: &Scenario, slice: Slice) -> u64 {
    let total = scn.total_sockets();
    let n = u64::from(slice.count);
    total / n + u64::from(total % n > u64::from(slice.index))
}

/// Whether this process runs the publisher: the first slice, for kinds that publish.
pub(super) fn publishes_here(scn: &Scenario, slice: Slice) -> bool {
    slice.index == 0 && scn.kind.publishes()
}

/// Deals `items` round-robin over `threads` workers (item i to worker i mod threads), so
/// sessions and nodes spread evenly over the workers.
pub(super) fn deal<T>(items: impl IntoIterator<Item = T>, threads: usize) -> Vec<Vec<T>> {
    let threads = threads.max(1);
    let mut per_worker: Vec<Vec<T>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, item) in items.into_iter().enumerate() {
        per_worker[i % threads].push(item);
    }
    per_worker
}

/// Handshakes one worker may have in flight: the process's budget split across workers,
/// at least one.
pub(super) fn connect_permits(scn: &Scenario, threads: usize) -> usize {
    (scn.connect_concurrency as usize / threads.max(1)).max(1)
}

/// When the handshake of the `local`-th socket of this process is due (UNIX ns), when
/// connects are paced: `connect_rate` is split over the processes and the sockets are
/// spaced evenly from `t0`. `None`: unpaced, as fast as the permits allow.
pub(super) fn connect_at(scn: &Scenario, slice: Slice, t0: u64, local: u64) -> Option<u64> {
    (scn.connect_rate > 0.0).then(|| {
        let per_proc = scn.connect_rate / f64::from(slice.count);
        t0 + (local as f64 * 1e9 / per_proc) as u64
    })
}

/// Which of a node's `addrs` source addresses socket `g` binds: consecutive sockets of
/// one node take consecutive addresses (sockets are spread over `nodes` first).
pub(super) fn src_index(g: u64, nodes: usize, addrs: usize) -> usize {
    (g / nodes.max(1) as u64 % addrs.max(1) as u64) as usize
}

/// One worker's share of the churn schedule. Every worker of every process is a lane;
/// lane `lane` opens churn sockets `lane`, `lane + lanes`, … at `rate / lanes` per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct ChurnLane {
    pub lanes: u64,
    pub lane: u64,
    /// Sockets this lane opens over the run.
    pub count: u64,
    /// Nanoseconds between two of them.
    pub interval_ns: u64,
    /// This lane's share of [`Scenario::churn_live_max`]; beyond it a socket is skipped.
    pub max_live: u64,
}

impl ChurnLane {
    /// Worker `w` of `threads` in `slice`; `None` when the lane has nothing to open.
    pub fn new(scn: &Scenario, slice: Slice, threads: usize, w: usize) -> Option<ChurnLane> {
        let lanes = u64::from(slice.count) * threads as u64;
        let lane = u64::from(slice.index) * threads as u64 + w as u64;
        let rate = scn.churn_rate / lanes as f64;
        if rate <= 0.0 {
            return None;
        }
        Some(ChurnLane {
            lanes,
            lane,
            count: (rate * scn.duration.0.as_secs_f64()).floor() as u64,
            interval_ns: (1e9 / rate) as u64,
            max_live: scn.churn_live_max() / lanes + 1,
        })
    }

    /// The run-wide index of this lane's `i`-th churn socket (names its user, picks its
    /// session and node through [`churn_target`]).
    pub fn socket(&self, i: u64) -> u64 {
        i * self.lanes + self.lane
    }
}

/// Churn socket `c`'s (session index, node index): round-robin over both.
pub(super) fn churn_target(c: u64, sessions: u32, nodes: usize) -> (usize, usize) {
    (
        (c % u64::from(sessions.max(1))) as usize,
        (c % nodes.max(1) as u64) as usize,
    )
}

/// The session index event `e` of the run goes to: events go round-robin over sessions,
/// so a batch of consecutive events spreads over consecutive sessions.
pub(super) fn event_session(e: u64, sessions: u64) -> usize {
    (e % sessions.max(1)) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scn(text: &str) -> Scenario {
        crate::scenario::from_str(text, &[]).expect("valid")
    }

    #[test]
    fn plan_maps_sockets_to_sessions_nodes_and_processes() {
        let s = scn("kind = \"fanout\"\nsessions = 3\nsockets_per_session = 4\n");
        let all = plan(&s, Slice::WHOLE, 2);
        assert_eq!(all.len(), 12);
        assert_eq!(all[5].session, 1);
        assert_eq!(all[5].node, 1);
        assert_eq!(all[11].session, 2);
        let a = plan(&s, Slice { index: 0, count: 5 }, 1);
        let b = plan(&s, Slice { index: 4, count: 5 }, 1);
        assert_eq!(a.len(), 3);
        assert_eq!(b.len(), 2);
        assert_eq!(b[1].g, 9);
        assert_eq!(b[1].local, 1);
        let total: usize = (0..5)
            .map(|i| plan(&s, Slice { index: i, count: 5 }, 1).len())
            .sum();
        assert_eq!(total, 12);
        for i in 0..5 {
            assert_eq!(
                plan_len(&s, Slice { index: i, count: 5 }) as usize,
                plan(&s, Slice { index: i, count: 5 }, 1).len()
            );
        }
    }

    #[test]
    fn fds_needed_counts_sockets_publishers_and_slack() {
        let s =
            scn("kind = \"fanout\"\nsessions = 100\nsockets_per_session = 100\npublishers = 8\n");
        assert_eq!(
            fds_needed(&s, Slice::WHOLE),
            10_000 + 8 + 1 + crate::sys::FD_SLACK
        );
        assert_eq!(
            fds_needed(&s, Slice { index: 1, count: 2 }),
            5_000 + 1 + crate::sys::FD_SLACK
        );
    }

    #[test]
    fn only_the_first_slice_of_a_publishing_kind_publishes() {
        let fanout = scn("kind = \"fanout\"\n");
        assert!(publishes_here(&fanout, Slice::WHOLE));
        assert!(!publishes_here(&fanout, Slice { index: 1, count: 2 }));
        let hold = scn("kind = \"idle-hold\"\n");
        assert!(!publishes_here(&hold, Slice::WHOLE));
    }

    #[test]
    fn slow_sockets_are_planned_where_the_scenario_says() {
        let s = scn(
            "kind = \"slow-consumers\"\nsessions = 2\nsockets_per_session = 10\nslow_percent = 25\n",
        );
        let all = plan(&s, Slice::WHOLE, 1);
        let slow: Vec<u64> = all.iter().filter(|p| p.slow).map(|p| p.g).collect();
        assert_eq!(slow.len(), 5);
        assert!(all.iter().all(|p| p.slow == s.is_slow(p.g)));
    }

    #[test]
    fn deal_spreads_round_robin_and_keeps_order_within_a_worker() {
        let d = deal(0..7, 3);
        assert_eq!(d, vec![vec![0, 3, 6], vec![1, 4], vec![2, 5]]);
        assert_eq!(deal(0..2, 4), vec![vec![0], vec![1], vec![], vec![]]);
        assert_eq!(deal(0..2, 0), vec![vec![0, 1]], "no threads means one");
    }

    #[test]
    fn connect_permits_split_the_budget_but_never_reach_zero() {
        let s = scn("kind = \"connect-storm\"\nconnect_concurrency = 10\n");
        assert_eq!(connect_permits(&s, 1), 10);
        assert_eq!(connect_permits(&s, 3), 3);
        assert_eq!(connect_permits(&s, 64), 1);
    }

    #[test]
    fn paced_connects_are_spaced_over_the_processes_share_of_the_rate() {
        let unpaced = scn("kind = \"connect-storm\"\n");
        assert_eq!(connect_at(&unpaced, Slice::WHOLE, 5, 9), None);
        let s = scn("kind = \"connect-storm\"\nconnect_rate = 1000\n");
        assert_eq!(connect_at(&s, Slice::WHOLE, 5, 0), Some(5));
        assert_eq!(connect_at(&s, Slice::WHOLE, 5, 3), Some(5 + 3_000_000));
        // Two processes share the rate: each opens 500/s, so its sockets are 2 ms apart.
        let half = Slice { index: 1, count: 2 };
        assert_eq!(connect_at(&s, half, 0, 3), Some(6_000_000));
    }

    #[test]
    fn source_addresses_rotate_per_node() {
        // Two nodes: sockets 0, 2, 4 go to node 0 and take its addresses 0, 1, 2.
        assert_eq!(
            [0, 2, 4, 6].map(|g| src_index(g, 2, 3)),
            [0, 1, 2, 0],
            "wraps after the last address"
        );
        assert_eq!(src_index(7, 1, 1), 0);
    }

    #[test]
    fn churn_lanes_cover_every_socket_once() {
        let s = scn("kind = \"churn\"\nduration = \"2s\"\nchurn_rate = 12\n");
        let mut seen = Vec::new();
        for index in 0..2 {
            let slice = Slice { index, count: 2 };
            for w in 0..3 {
                let lane = ChurnLane::new(&s, slice, 3, w).expect("a lane");
                assert_eq!(lane.lanes, 6);
                assert_eq!(lane.count, 4, "12/s over 6 lanes for 2 s");
                assert_eq!(lane.interval_ns, 500_000_000);
                assert_eq!(lane.max_live, s.churn_live_max() / 6 + 1);
                seen.extend((0..lane.count).map(|i| lane.socket(i)));
            }
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..24).collect::<Vec<_>>());
        let none = scn("kind = \"fanout\"\n");
        assert_eq!(ChurnLane::new(&none, Slice::WHOLE, 2, 0), None);
    }

    #[test]
    fn churn_sockets_and_events_go_round_robin() {
        assert_eq!(churn_target(7, 3, 2), (1, 1));
        assert_eq!(churn_target(6, 3, 1), (0, 0));
        assert_eq!(
            (0..5).map(|e| event_session(e, 2)).collect::<Vec<_>>(),
            [0, 1, 0, 1, 0]
        );
    }
}
