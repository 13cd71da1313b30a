//! The operating system: open-file limit, CPU pinning, and a process's RSS.
//!
//! Owns: every `unsafe` libc call of the tool, each with its reason.

use std::io;

/// File descriptors the tool needs besides its sockets (stdio, runtime, epoll, pipes…).
pub const FD_SLACK: u64 = 64;

/// Why the tool refuses to start.
#[derive(Debug, thiserror::Error)]
pub enum SysError {
    /// The scenario needs more sockets than the process may open. Lower the socket count,
    /// raise `ulimit -n`, or split the load with `--procs` (each process has its own limit).
    #[error(
        "scenario needs {need} open files per process but RLIMIT_NOFILE is {limit}; \
         lower sessions × sockets_per_session, raise `ulimit -n`, or use --procs N"
    )]
    TooManyFiles { need: u64, limit: u64 },
    /// `--cpus` named a CPU this process may not run on, or the call failed.
    #[error("cannot pin to CPUs {cpus:?}: {source}")]
    Pin { cpus: Vec<usize>, source: io::Error },
    /// `--cpus` did not parse.
    #[error("bad CPU list {0:?} (use e.g. 1, 0-3, 1,3)")]
    CpuList(String),
    /// /proc/PID/status could not be read or has no VmRSS: wrong `--server-pid`?
    #[error("cannot read VmRSS of pid {pid}: {why}")]
    Rss { pid: u32, why: String },
}

/// Soft RLIMIT_NOFILE after trying to raise it to `need` (never above the hard limit).
pub fn ensure_nofile(need: u64) -> Result<u64, SysError> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    let got = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    if got != 0 {
        return Ok(u64::MAX);
    }
    if lim.rlim_cur < need && lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: need.min(lim.rlim_max),
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we own; failure leaves the limit unchanged.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = raised.rlim_cur;
        }
    }
    if lim.rlim_cur < need {
        return Err(SysError::TooManyFiles {
            need,
            limit: lim.rlim_cur,
        });
    }
    Ok(lim.rlim_cur)
}

/// Parses `1`, `0-3`, `1,3,5-6`.
pub fn parse_cpus(text: &str) -> Result<Vec<usize>, SysError> {
    let bad = || SysError::CpuList(text.to_owned());
    let mut cpus = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((a, b)) = part.split_once('-') {
            let a: usize = a.trim().parse().map_err(|_| bad())?;
            let b: usize = b.trim().parse().map_err(|_| bad())?;
            if a > b || b >= 1024 {
                return Err(bad());
            }
            cpus.extend(a..=b);
        } else {
            let c: usize = part.parse().map_err(|_| bad())?;
            if c >= 1024 {
                return Err(bad());
            }
            cpus.push(c);
        }
    }
    if cpus.is_empty() {
        return Err(bad());
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// Pins the calling thread (and the threads it creates afterwards) to `cpus`.
pub fn pin(cpus: &[usize]) -> Result<(), SysError> {
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        // SAFETY: c < 1024 = CPU_SETSIZE, checked by parse_cpus.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: pid 0 is the calling thread; the set lives across the call.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(SysError::Pin {
            cpus: cpus.to_vec(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// How many CPUs this thread may run on (1 if the call fails).
pub fn allowed_cpus() -> usize {
    // SAFETY: as in `pin`; sched_getaffinity writes into the set we own.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return 1;
    }
    // SAFETY: reads the set we own.
    let n = unsafe { libc::CPU_COUNT(&set) };
    usize::try_from(n).unwrap_or(1).max(1)
}

/// Lets the calling thread's sleeps end within ~1 µs of their deadline instead of the
/// default 50 µs slack (used by the publish scheduler). Best effort.
pub fn fine_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer and affects only this thread.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong, 0, 0, 0);
    }
}

/// CPU time (user + system) this process has used, in nanoseconds.
pub fn process_cpu_ns() -> u64 {
    // SAFETY: rusage is plain data; getrusage writes into the struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0;
    }
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// utime + stime in clock ticks from /proc/PID/stat text (fields 14 and 15; the command
/// name in parentheses may contain spaces, so fields are counted after the last `)`).
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ")" the fields start at 3 (state), so utime (14) is index 11, stime (15) is 12.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// CPU time another process has used, in nanoseconds.
pub fn pid_cpu_ns(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = u64::try_from(hz).ok().filter(|h| *h > 0)?;
    Some(parse_stat_ticks(&stat)? * 1_000_000_000 / hz)
}

/// VmRSS in KiB from /proc/PID/status text.
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let rest = l.strip_prefix("VmRSS:")?;
        rest.trim().strip_suffix("kB")?.trim().parse().ok()
    })
}

/// The server's resident memory in KiB.
pub fn vm_rss_kib(pid: u32) -> Result<u64, SysError> {
    let text =
        std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| SysError::Rss {
            pid,
            why: e.to_string(),
        })?;
    parse_vm_rss(&text).ok_or_else(|| SysError::Rss {
        pid,
        why: "no VmRSS line".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse() {
        assert_eq!(parse_cpus("1").ok(), Some(vec![1]));
        assert_eq!(parse_cpus("0-2,5, 1").ok(), Some(vec![0, 1, 2, 5]));
        assert!(parse_cpus("").is_err());
        assert!(parse_cpus("3-1").is_err());
        assert!(parse_cpus("x").is_err());
    }

    #[test]
    fn vm_rss_is_read_from_status() {
        let status = "Name:\trelay\nVmPeak:\t  20000 kB\nVmRSS:\t   12345 kB\nThreads: 3\n";
        assert_eq!(parse_vm_rss(status), Some(12345));
        assert_eq!(parse_vm_rss("Name: x\n"), None);
        assert!(vm_rss_kib(std::process::id()).is_ok());
    }

    #[test]
    fn cpu_ticks_are_read_after_the_command_name() {
        let stat = "42 (my relay) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0";
        assert_eq!(parse_stat_ticks(stat), Some(300));
        assert!(pid_cpu_ns(std::process::id()).is_some());
        assert!(process_cpu_ns() > 0);
    }

    #[test]
    fn modest_needs_fit_the_limit() {
        assert!(ensure_nofile(100).is_ok());
        assert!(matches!(
            ensure_nofile(u64::MAX / 2),
            Err(SysError::TooManyFiles { .. })
        ));
    }
}
