//! The history cap against the memory limit the node runs under: a container's cgroup
//! limit read once at start ([`cgroup_memory_limit`]), and the rule that keeps the
//! default `RELAY_HISTORY_MEMORY` below it ([`fit_history_memory`]), so that history
//! sheds streams (counted in `relay_history_evicted_streams_total`) before the kernel's
//! OOM killer ends the node.
//!
//! Owns that one decision. Reads `/proc/self/cgroup` and the cgroup's limit files, once,
//! from `main` before any shard starts; touches nothing else and writes nothing.

use std::path::Path;

/// The share of the memory limit the default history cap may take: the rest is the
/// node's base (about 17 MB), its sockets and the allocator's slack.
pub const HISTORY_SHARE_OF_LIMIT: u64 = 2;

/// Limits at or above this are "no limit" (cgroup v1 spells none as a page-rounded
/// `i64::MAX`).
const UNLIMITED: u64 = 1 << 60;

/// What [`fit_history_memory`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryFit {
    /// The cap fits within the limit's share (or there is no limit): unchanged.
    Fits,
    /// The default cap was above the share: lowered to `to` (bytes).
    Lowered { to: usize },
    /// A cap set by the operator is above the share: kept, to be warned about.
    Above,
}

/// Where `cap` (bytes) stands against `limit` (bytes), when `explicit` says whether the
/// operator set it. Only a default is ever changed.
pub fn fit_history_memory(cap: usize, explicit: bool, limit: u64) -> HistoryFit {
    let share = limit / HISTORY_SHARE_OF_LIMIT;
    if cap as u64 <= share {
        HistoryFit::Fits
    } else if explicit {
        HistoryFit::Above
    } else {
        HistoryFit::Lowered {
            to: usize::try_from(share).unwrap_or(usize::MAX),
        }
    }
}

/// The memory limit of this process's cgroup and its ancestors (the smallest), in
/// bytes; `None` without a cgroup memory controller or without a limit. cgroup v2
/// (`memory.max`) or v1 (`memory.limit_in_bytes`), as mounted at `/sys/fs/cgroup`.
pub fn cgroup_memory_limit() -> Option<u64> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    limit_under(Path::new("/sys/fs/cgroup"), &own)
}

/// [`cgroup_memory_limit`] with the mount point and `/proc/self/cgroup`'s text given.
fn limit_under(root: &Path, proc_cgroup: &str) -> Option<u64> {
    // v1: "N:memory:/path" (or "N:cpu,memory:/path"); v2: "0::/path".
    let v1 = proc_cgroup.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers
            .split(',')
            .any(|c| c == "memory")
            .then_some(path)
    });
    let (base, file, path) = match v1 {
        Some(path) => (root.join("memory"), "memory.limit_in_bytes", path),
        None => {
            let path = proc_cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
            (root.to_path_buf(), "memory.max", path)
        }
    };
    // The effective limit is the smallest on the way up to the root.
    let mut dir = base.join(path.trim().trim_start_matches('/'));
    let mut least: Option<u64> = None;
    loop {
        if let Some(v) = std::fs::read_to_string(dir.join(file))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .filter(|v| *v < UNLIMITED)
        {
            least = Some(least.map_or(v, |l| l.min(v)));
        }
        if dir == base || !dir.pop() || !dir.starts_with(&base) {
            break;
        }
    }
    least
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    #[test]
    fn only_a_default_cap_above_half_the_limit_is_lowered() {
        let limit = 128 * MIB as u64;
        assert_eq!(fit_history_memory(64 * MIB, false, limit), HistoryFit::Fits);
        assert_eq!(
            fit_history_memory(256 * MIB, false, limit),
            HistoryFit::Lowered { to: 64 * MIB }
        );
        assert_eq!(
            fit_history_memory(256 * MIB, true, limit),
            HistoryFit::Above
        );
        assert_eq!(fit_history_memory(32 * MIB, true, limit), HistoryFit::Fits);
    }

    /// A directory of cgroup files for one test, removed on drop.
    struct Tree(std::path::PathBuf);

    impl Tree {
        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn tree(files: &[(&str, &str)]) -> Tree {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("relay-cg-{}-{n}", std::process::id()));
        for (path, text) in files {
            let p = dir.join(path);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, text).expect("write");
        }
        Tree(dir)
    }

    #[test]
    fn v2_reads_memory_max_up_the_tree_and_max_is_no_limit() {
        let d = tree(&[
            ("memory.max", "max\n"),
            ("pod/memory.max", "134217728\n"),
            ("pod/app/memory.max", "max\n"),
        ]);
        assert_eq!(limit_under(d.path(), "0::/pod/app\n"), Some(134_217_728));
        let d = tree(&[("memory.max", "max\n"), ("app/memory.max", "max\n")]);
        assert_eq!(limit_under(d.path(), "0::/app\n"), None);
        // A container sees its own cgroup as the root.
        let d = tree(&[("memory.max", "268435456\n")]);
        assert_eq!(limit_under(d.path(), "0::/\n"), Some(268_435_456));
    }

    #[test]
    fn v1_reads_the_memory_controller_and_its_huge_none() {
        let d = tree(&[
            ("memory/memory.limit_in_bytes", "9223372036854771712\n"),
            ("memory/job/memory.limit_in_bytes", "83886080\n"),
        ]);
        let proc = "9:cpu,cpuacct:/\n4:memory:/job\n0::/\n";
        assert_eq!(limit_under(d.path(), proc), Some(83_886_080));
        let d = tree(&[("memory/memory.limit_in_bytes", "9223372036854771712\n")]);
        assert_eq!(limit_under(d.path(), "4:memory:/\n"), None);
        assert_eq!(limit_under(d.path(), "garbage"), None);
    }
}
