//! The memory guard: the data plane watches the process's resident memory and, above a soft
//! mark, closes idle keep-alive connections and answers new connections with a fast `503` and
//! `Retry-After` instead of serving them; above the hard mark it stops accepting (new
//! connections wait in the kernel's backlog). It recovers by itself when memory falls below
//! the marks again (with some hysteresis, so it does not flap). Raft and the admin API are
//! not the data plane's and are never shed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// How often resident memory is read.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// The soft mark, as a share of the limit.
pub const SOFT_SHARE: f64 = 0.8;
/// Marks are left only once memory is this share below them.
const HYSTERESIS: f64 = 0.95;

/// What the guard asks of the data plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pressure {
    /// Serve as usual.
    Normal,
    /// Above the soft mark: close idle connections, answer new ones with 503.
    Shedding,
    /// Above the hard mark: accept nothing.
    Refusing,
}

impl Pressure {
    pub fn as_str(self) -> &'static str {
        match self {
            Pressure::Normal => "normal",
            Pressure::Shedding => "shedding",
            Pressure::Refusing => "refusing",
        }
    }
}

/// The guard's settings and its latest reading.
#[derive(Debug)]
pub struct MemoryGuard {
    /// The hard mark (the limit), in bytes.
    pub limit: u64,
    /// The soft mark, in bytes.
    pub soft: u64,
    rss: AtomicU64,
    pressure: watch::Sender<Pressure>,
}

impl MemoryGuard {
    /// A guard for `limit` bytes of resident memory.
    pub fn new(limit: u64) -> std::sync::Arc<MemoryGuard> {
        std::sync::Arc::new(MemoryGuard {
            limit,
            soft: (limit as f64 * SOFT_SHARE) as u64,
            rss: AtomicU64::new(rss_bytes().unwrap_or(0)),
            pressure: watch::channel(Pressure::Normal).0,
        })
    }

    /// The resident memory last read, in bytes.
    pub fn rss(&self) -> u64 {
        self.rss.load(Ordering::Relaxed)
    }

    /// The current pressure, and its changes.
    pub fn pressure(&self) -> watch::Receiver<Pressure> {
        self.pressure.subscribe()
    }

    /// The pressure for a reading, given the current one.
    fn judge(&self, now: Pressure, rss: u64) -> Pressure {
        let (soft, hard) = (self.soft as f64, self.limit as f64);
        let rss = rss as f64;
        match now {
            _ if rss >= hard => Pressure::Refusing,
            Pressure::Refusing if rss >= hard * HYSTERESIS => Pressure::Refusing,
            _ if rss >= soft => Pressure::Shedding,
            Pressure::Refusing | Pressure::Shedding if rss >= soft * HYSTERESIS => {
                Pressure::Shedding
            }
            _ => Pressure::Normal,
        }
    }

    /// Reads resident memory on a short period, publishing changes (runs until aborted).
    pub async fn run(self: std::sync::Arc<Self>) {
        let mut every = tokio::time::interval(SAMPLE_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            every.tick().await;
            let Some(rss) = rss_bytes() else { continue };
            self.rss.store(rss, Ordering::Relaxed);
            let now = *self.pressure.borrow();
            let next = self.judge(now, rss);
            if next != now {
                match next {
                    Pressure::Normal => tracing::info!(
                        rss,
                        soft = self.soft,
                        "memory back below the soft mark: serving normally"
                    ),
                    Pressure::Shedding => tracing::warn!(
                        rss,
                        soft = self.soft,
                        limit = self.limit,
                        "memory above the soft mark: closing idle connections, answering new ones 503"
                    ),
                    Pressure::Refusing => tracing::warn!(
                        rss,
                        limit = self.limit,
                        "memory at the limit: not accepting connections"
                    ),
                }
                self.pressure.send_replace(next);
            }
        }
    }
}

/// This process's resident memory, from `/proc/self/status` (`VmRSS`).
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// The machine's memory (or the cgroup's limit, when lower), for limits given in percent.
pub fn total_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))?
        .trim_start_matches("MemTotal:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    let total = kb * 1024;
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    Some(cgroup.map_or(total, |c| c.min(total)))
}

/// Parses a memory limit: bytes (`1073741824`), with a unit (`512MiB`, `2GiB`, `800MB`,
/// `64K`), or a share of the machine's memory (`50%`).
pub fn parse_limit(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let bad = || {
        format!(
            "'{s}' is not a memory limit; use bytes (1073741824), a size (512MiB, 2GiB) or a share of the machine's memory (50%)"
        )
    };
    if let Some(p) = t.strip_suffix('%') {
        let p: f64 = p.trim().parse().map_err(|_| bad())?;
        if !(p > 0.0 && p <= 100.0) {
            return Err(format!(
                "'{s}': a percentage must be above 0 and at most 100"
            ));
        }
        let total = total_memory().ok_or("cannot read the machine's memory from /proc/meminfo")?;
        return Ok((total as f64 * p / 100.0) as u64);
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| bad())?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "ki" | "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mi" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gi" | "gib" => 1024.0 * 1024.0 * 1024.0,
        _ => return Err(bad()),
    };
    let bytes = (n * mult) as u64;
    if bytes < 16 << 20 {
        return Err(format!(
            "'{s}' is below 16 MiB, less than the gateway needs to run; give a larger limit"
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_with_units_and_percent() {
        assert_eq!(parse_limit("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_limit("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_limit("800MB").unwrap(), 800_000_000);
        assert_eq!(parse_limit("1073741824").unwrap(), 1 << 30);
        assert!(parse_limit("50%").unwrap() > 0);
        assert!(parse_limit("1MiB").is_err());
        assert!(parse_limit("lots").is_err());
        assert!(parse_limit("150%").is_err());
    }

    #[test]
    fn pressure_has_hysteresis() {
        let g = MemoryGuard::new(1000 << 20);
        let mb = |n: u64| n << 20;
        assert_eq!(g.judge(Pressure::Normal, mb(700)), Pressure::Normal);
        assert_eq!(g.judge(Pressure::Normal, mb(800)), Pressure::Shedding);
        assert_eq!(g.judge(Pressure::Shedding, mb(780)), Pressure::Shedding);
        assert_eq!(g.judge(Pressure::Shedding, mb(700)), Pressure::Normal);
        assert_eq!(g.judge(Pressure::Shedding, mb(1000)), Pressure::Refusing);
        assert_eq!(g.judge(Pressure::Refusing, mb(960)), Pressure::Refusing);
        assert_eq!(g.judge(Pressure::Refusing, mb(900)), Pressure::Shedding);
        assert!(rss_bytes().unwrap() > 0);
    }
}
