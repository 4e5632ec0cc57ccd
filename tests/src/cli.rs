//! Finding the `gateway` binary, building its command lines, and running it once.

use anyhow::{Context, Result, bail};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The workspace root (this package lives in `<root>/tests`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The `gateway` binary under test: `$GATEWAY_BIN`, else `target/debug/gateway` of this
/// workspace (`$CARGO_TARGET_DIR` honoured). Fails with what to do when it is missing.
pub fn gateway_bin() -> Result<PathBuf> {
    let path = match std::env::var_os("GATEWAY_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => {
            let target = match std::env::var_os("CARGO_TARGET_DIR") {
                Some(t) if !t.is_empty() => {
                    let t = PathBuf::from(t);
                    if t.is_absolute() {
                        t
                    } else {
                        workspace_root().join(t)
                    }
                }
                _ => workspace_root().join("target"),
            };
            target.join("debug").join("gateway")
        }
    };
    if !path.is_file() {
        bail!(
            "the gateway binary was not found at {}: run `cargo build -p gateway` first \
             (scripts/test.sh does), or set GATEWAY_BIN to the binary to test",
            path.display()
        );
    }
    Ok(path)
}

/// `setpriv --pdeathsig KILL` if this machine has it: the child is then killed by the kernel
/// when the thread that started it dies, even if the test process is killed with SIGKILL.
fn pdeathsig_wrapper() -> Option<&'static Path> {
    static WRAPPER: OnceLock<Option<PathBuf>> = OnceLock::new();
    WRAPPER
        .get_or_init(|| {
            ["/usr/bin/setpriv", "/bin/setpriv"]
                .iter()
                .map(PathBuf::from)
                .find(|p| {
                    std::process::Command::new(p)
                        .args(["--pdeathsig", "KILL", "--", "true"])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status()
                        .map(|s| s.success())
                        .unwrap_or(false)
                })
        })
        .as_deref()
}

/// A command running the gateway binary with `args`, its environment cleared of `GATEWAY_*`
/// variables (so the developer's own settings cannot leak into a test), wrapped so that it
/// dies with its parent. Must be spawned from a thread that outlives the child (the test's
/// thread or a runtime worker; not `spawn_blocking`, whose threads come and go).
pub fn gateway_command<I, S>(args: I) -> Result<std::process::Command>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let bin = gateway_bin()?;
    let mut cmd = match pdeathsig_wrapper() {
        Some(w) => {
            let mut c = std::process::Command::new(w);
            c.args(["--pdeathsig", "KILL", "--"]).arg(&bin);
            c
        }
        None => std::process::Command::new(&bin),
    };
    cmd.args(args);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("GATEWAY_") {
            cmd.env_remove(k);
        }
    }
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "info");
    }
    cmd.env("RUST_BACKTRACE", "1");
    cmd.stdin(Stdio::null());
    Ok(cmd)
}

/// What a finished one-shot run of the binary printed.
#[derive(Debug)]
pub struct CliOutput {
    pub args: Vec<String>,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

/// Runs `gateway ARGS` to completion, killing it (and failing) if it is still running after
/// `timeout`.
pub async fn run_gateway<S: AsRef<str>>(args: &[S], timeout: Duration) -> Result<CliOutput> {
    let args: Vec<String> = args.iter().map(|a| a.as_ref().to_string()).collect();
    let mut cmd: tokio::process::Command = gateway_command(&args)?.into();
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    crate::note!("run: gateway {}", args.join(" "));
    let start = Instant::now();
    let child = cmd.spawn().context("spawning gateway")?;
    let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(out) => out?,
        Err(_) => bail!(
            "`gateway {}` was still running after {timeout:?} (expected it to exit); it was killed",
            args.join(" ")
        ),
    };
    let out = CliOutput {
        args,
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: start.elapsed(),
    };
    crate::note!(
        "exited {} after {:.1}s",
        out.status,
        out.elapsed.as_secs_f64()
    );
    Ok(out)
}

impl CliOutput {
    /// The lines of stderr that start with `error:`.
    pub fn error_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| l.starts_with("error:"))
            .collect()
    }

    /// Checks the CONTRACT's failure shape: exit code 1 and exactly one stderr line starting
    /// with `error: `; returns that line.
    pub fn expect_error_line(&self) -> Result<&str> {
        let lines = self.error_lines();
        if self.status.code() != Some(1) || lines.len() != 1 || !lines[0].starts_with("error: ") {
            bail!(
                "expected exit code 1 and one stderr line starting with 'error: ' from `gateway {}`; got {} and {} such line(s)\n{}",
                self.args.join(" "),
                self.status,
                lines.len(),
                self.dump()
            );
        }
        Ok(lines[0])
    }

    /// Like [`CliOutput::expect_error_line`], and the line must mention one of `any_of`
    /// (case-insensitively).
    pub fn expect_error_naming(&self, any_of: &[&str]) -> Result<&str> {
        let line = self.expect_error_line()?;
        let lower = line.to_lowercase();
        if !any_of.iter().any(|w| lower.contains(&w.to_lowercase())) {
            bail!(
                "the error line does not name any of {any_of:?}: {line}\n{}",
                self.dump()
            );
        }
        Ok(line)
    }

    /// Everything the process printed, for failure messages.
    pub fn dump(&self) -> String {
        format!(
            "--- stderr ---\n{}\n--- stdout ---\n{}\n--------------",
            tail(&self.stderr, 60),
            tail(&self.stdout, 60)
        )
    }
}

/// The last `n` lines of `text`.
pub(crate) fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let skip = lines.len().saturating_sub(n);
    let mut out = String::new();
    if skip > 0 {
        out.push_str(&format!("({skip} earlier lines left out)\n"));
    }
    out.push_str(&lines[skip..].join("\n"));
    out
}
