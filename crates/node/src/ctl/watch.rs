//! `gateway watch`: prints every configuration change in order, once.
//!
//! When the stream breaks (the node died, restarted or is stopping) it reconnects to the next
//! `--server` and resumes after the last revision it printed, so across a leader change every
//! revision is printed exactly once. It gives up after `--timeout` seconds without any server.

use super::conn::{Conn, describe_status, from_transport};
use super::output::outln;
use super::output::{self, Output};
use gateway_wire::admin::{self, watch_response::Event};
use gateway_wire::convert::change_set_from_wire;
use std::time::{Duration, Instant};
use tonic::Code;

/// Why a stream stopped.
enum Stop {
    /// The connection or the node went away: try the next server.
    Broken(String),
    /// The server refused the watch (auth, compacted history): give up.
    Fatal(anyhow::Error),
}

/// Follows the stream of server `i` from `*next` (0: from now), printing each change and
/// moving `*next` past it.
async fn follow(
    c: &mut Conn,
    i: usize,
    next: &mut u64,
    out: Output,
    progress: &mut Instant,
) -> Stop {
    let server = c.servers()[i].clone();
    let mut client = match c.client(i).await {
        Ok(cl) => cl,
        Err(e) => return Stop::Broken(format!("{server}: {e}")),
    };
    let req = c.request(admin::WatchRequest {
        start_revision: *next,
    });
    let mut stream = match client.watch(req).await {
        Ok(s) => s.into_inner(),
        Err(s) if from_transport(&s) || s.code() == Code::Unavailable => {
            return Stop::Broken(format!("{server}: {}", describe_status(&s)));
        }
        Err(s) => return Stop::Fatal(c.failed(&s).into()),
    };
    loop {
        match stream.message().await {
            Ok(Some(admin::WatchResponse { event: Some(ev) })) => {
                *progress = Instant::now();
                match ev {
                    Event::Synced(after) => {
                        if *next == 0 {
                            *next = after + 1;
                        }
                        if out == Output::Table {
                            eprintln!("watching changes after revision {} on {server}", *next - 1);
                        }
                    }
                    Event::ChangeSet(set) => {
                        let set = match change_set_from_wire(set) {
                            Ok(s) => s,
                            Err(e) => return Stop::Fatal(e.into()),
                        };
                        if set.revision < *next {
                            continue; // already printed (cannot happen with a correct server)
                        }
                        match out {
                            Output::Table => {
                                for line in output::change_lines(&set) {
                                    outln!("{line}");
                                }
                            }
                            Output::Json => match serde_json::to_string(&set) {
                                Ok(line) => outln!("{line}"),
                                Err(e) => return Stop::Fatal(e.into()),
                            },
                        }
                        *next = set.revision + 1;
                    }
                }
            }
            Ok(Some(admin::WatchResponse { event: None })) => {}
            Ok(None) => return Stop::Broken(format!("{server} ended the stream")),
            Err(s) if from_transport(&s) || s.code() == Code::Unavailable => {
                return Stop::Broken(format!("{server}: {}", describe_status(&s)));
            }
            Err(s) => return Stop::Fatal(c.failed(&s).into()),
        }
    }
}

pub async fn watch(c: &mut Conn, out: Output, from: Option<u64>) -> anyhow::Result<()> {
    let mut next = from.unwrap_or(0);
    let n = c.servers().len();
    let mut i = 0;
    let mut progress = Instant::now();
    let mut pause = Duration::from_millis(100);
    let mut failures = 0usize;
    loop {
        let before = progress;
        let why = match follow(c, i, &mut next, out, &mut progress).await {
            Stop::Fatal(e) => return Err(e),
            Stop::Broken(why) => why,
        };
        c.drop_channel(i);
        if progress != before {
            failures = 0;
            pause = Duration::from_millis(100);
        }
        failures += 1;
        if progress.elapsed() > c.timeout() {
            anyhow::bail!(
                "lost the watch: no server answered for {}s ({why}); check --server, then resume with `gateway watch --from {next}`",
                c.timeout().as_secs()
            );
        }
        i = (i + 1) % n;
        let resume = if next == 0 {
            "from now".to_string()
        } else {
            format!("from revision {next}")
        };
        eprintln!("watch: {why}; resuming {resume} on {}", c.servers()[i]);
        if failures >= n {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }
}
