//! Process identity from /proc: a pid plus its start time names one process across razar
//! restarts (a reused pid has a different start time). Linux only; elsewhere nothing is known
//! to be alive.

use std::time::Duration;

use crate::exec::sys::proc_stat;

/// Start time of `pid` in clock ticks since boot (/proc/PID/stat field 22), if it exists.
pub fn start_time(pid: u32) -> Option<u64> {
    proc_stat(pid).map(|stat| stat.start_time)
}

/// True when `pid` runs (a zombie is as good as dead) and is the process that started at
/// `start` (when known).
pub fn process_alive(pid: u32, start: Option<u64>) -> bool {
    pid != 0
        && proc_stat(pid).is_some_and(|stat| {
            !stat.is_zombie() && start.is_none_or(|expected| expected == stat.start_time)
        })
}

/// How long the process that started at `start` (clock ticks since boot) has been running.
pub fn process_uptime(start: u64) -> Option<Duration> {
    let uptime = std::fs::read_to_string("/proc/uptime").ok()?;
    let since_boot: f64 = uptime.split_whitespace().next()?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks <= 0 {
        return None;
    }
    let started = start as f64 / ticks as f64;
    Some(Duration::from_secs_f64((since_boot - started).max(0.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_wrong_start_time_is_not() {
        let me = std::process::id();
        let start = start_time(me).expect("this process has a /proc entry");
        assert!(process_alive(me, Some(start)));
        assert!(process_alive(me, None));
        assert!(!process_alive(me, Some(start + 1)));
        assert!(process_uptime(start).is_some());
    }

    #[test]
    fn a_reaped_child_is_not_alive() {
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("`true` runs");
        let pid = child.id();
        child.wait().expect("child exits");
        assert!(!process_alive(pid, None));
    }
}
