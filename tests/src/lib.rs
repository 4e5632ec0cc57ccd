//! Real-process test harness for the `gateway` binary.
//!
//! A test starts a cluster of real `gateway` processes on free loopback ports in one line:
//!
//! ```no_run
//! # async fn t() -> gateway_tests::TestResult {
//! use gateway_tests::TestCluster;
//! let c = TestCluster::start(3).await?;
//! let leader = c.wait_leader(gateway_tests::ELECTION).await?;
//! # let _ = leader; Ok(()) }
//! ```
//!
//! Every process gets its own temporary data dir and a log file (stdout and stderr) beside it;
//! the logs are printed when a test fails (a panic or an `Err` returned through `?` into a
//! [`TestResult`]), and the temporary directory is then kept for inspection. Processes are
//! killed when their handle drops and, through `setpriv --pdeathsig KILL`, when the test
//! process itself dies, so no test leaves an orphan behind.
//!
//! The binary is `$GATEWAY_BIN`, else `<workspace>/target/debug/gateway` (`$CARGO_TARGET_DIR`
//! honoured): build it first with `cargo build -p gateway` (scripts/test.sh does).
//!
//! This crate drives the binary from outside only (CLI, REST, signals): it depends on none of
//! the gateway's crates, so that it tests what a user sees.

mod cli;
mod cluster;
mod failure;
mod http;
mod node;
mod wait;

mod backends;
pub use backends::{DemoBackend, SwitchBackend, holding_backend};
pub use cli::{CliOutput, gateway_bin, run_gateway};
pub use cluster::{
    Config, LeaderInfo, Member, NodeArgsFn, NodeSpec, Status, TestCluster, free_addr, free_port,
};
pub use failure::{Failure, TestResult, test_failed};
pub use http::{Http, Resp};
pub use node::Node;
pub use wait::wait_for;

use std::time::Duration;

/// How long a cluster may take to elect a leader (the CI machine has 2 slow cores).
pub const ELECTION: Duration = Duration::from_secs(60);
/// How long a node may take to become ready, join, or catch up.
pub const CATCH_UP: Duration = Duration::from_secs(90);
/// How long a process that is expected to fail may take to exit.
pub const EXIT: Duration = Duration::from_secs(30);
/// How long one admin request may take before it counts as failed.
pub const REQUEST: Duration = Duration::from_secs(30);

/// Prints a progress line to the test's captured output (shown when the test fails).
#[macro_export]
macro_rules! note {
    ($($arg:tt)*) => {
        eprintln!("[harness {}] {}", $crate::elapsed(), format!($($arg)*))
    };
}

/// Seconds since the harness was first used in this process, for the progress lines.
pub fn elapsed() -> String {
    use std::sync::OnceLock;
    use std::time::Instant;
    static START: OnceLock<Instant> = OnceLock::new();
    let start = START.get_or_init(Instant::now);
    format!("{:8.3}s", start.elapsed().as_secs_f64())
}

#[doc(hidden)]
pub use anyhow;

/// Like `anyhow::ensure!`, but also usable in a test returning [`TestResult`] (the error is
/// converted with `From`, which marks the test failed).
#[macro_export]
macro_rules! ensure {
    ($cond:expr $(,)?) => {
        if !$cond {
            return ::core::result::Result::Err(::core::convert::From::from($crate::anyhow::anyhow!(concat!(
                "condition failed: ",
                stringify!($cond)
            ))));
        }
    };
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return ::core::result::Result::Err(::core::convert::From::from($crate::anyhow::anyhow!($($arg)+)));
        }
    };
}

/// Like `anyhow::bail!`, but also usable in a test returning [`TestResult`].
#[macro_export]
macro_rules! bail {
    ($($arg:tt)+) => {
        return ::core::result::Result::Err(::core::convert::From::from($crate::anyhow::anyhow!($($arg)+)))
    };
}
