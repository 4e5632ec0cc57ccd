//! One `gateway` process: start, signals, restart, its admin API, its log.

use crate::cli::{gateway_command, tail};
use crate::cluster::{Config, LeaderInfo, NodeSpec, Status};
use crate::http::{Http, Resp};
use crate::note;
use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;
use std::fs::OpenOptions;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A handle on one node's process. Dropping it kills the process (SIGKILL) and reaps it.
///
/// All methods take `&self` (the child sits behind a mutex that is never held across an
/// `.await`), so a test can hold several nodes while it waits on conditions.
pub struct Node {
    pub id: u64,
    pub cluster_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub https_addr: SocketAddr,
    pub data_dir: PathBuf,
    /// stdout and stderr of every run of this node, appended.
    pub log_path: PathBuf,
    child: Mutex<Option<Child>>,
    paused: AtomicBool,
    /// The harness killed or stopped the process, or the test said it would exit.
    exit_expected: AtomicBool,
    http: Http,
}

impl Node {
    /// Starts `gateway ARGS` as this node, its output appended to the node's log.
    pub fn spawn(spec: &NodeSpec, args: Vec<String>, http: Http) -> Result<Node> {
        let node = Node {
            id: spec.id,
            cluster_addr: spec.cluster_addr,
            admin_addr: spec.admin_addr,
            http_addr: spec.http_addr,
            https_addr: spec.https_addr,
            data_dir: spec.data_dir.clone(),
            log_path: spec.log_path.clone(),
            child: Mutex::new(None),
            paused: AtomicBool::new(false),
            exit_expected: AtomicBool::new(false),
            http,
        };
        node.launch(args)?;
        Ok(node)
    }

    fn launch(&self, args: Vec<String>) -> Result<()> {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("opening {}", self.log_path.display()))?;
        writeln!(
            log,
            "===== harness {}: gateway {} =====",
            crate::elapsed(),
            args.join(" ")
        )?;
        let mut cmd = gateway_command(&args)?;
        cmd.stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        let child = cmd.spawn().context("spawning gateway")?;
        note!(
            "node {} pid {}: gateway {}",
            self.id,
            child.id(),
            args.join(" ")
        );
        let mut slot = self.child.lock().unwrap();
        if let Some(mut old) = slot.take() {
            let _ = old.kill();
            let _ = old.wait();
        }
        *slot = Some(child);
        self.paused.store(false, Ordering::SeqCst);
        self.exit_expected.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// The process id, while a process is running (or stopped).
    pub fn pid(&self) -> Option<u32> {
        let mut slot = self.child.lock().unwrap();
        let c = slot.as_mut()?;
        match c.try_wait() {
            Ok(None) => Some(c.id()),
            _ => None,
        }
    }

    /// Whether the process exists (it may be stopped with SIGSTOP).
    pub fn is_running(&self) -> bool {
        self.pid().is_some()
    }

    /// Whether the process exists and is not stopped: it should answer requests.
    pub fn is_live(&self) -> bool {
        self.is_running() && !self.paused.load(Ordering::SeqCst)
    }

    /// The exit status, if the process has exited by itself or been killed.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        let mut slot = self.child.lock().unwrap();
        slot.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Fails (with the exit status and the end of the log) if the process is not running.
    pub fn ensure_running(&self) -> Result<()> {
        let mut slot = self.child.lock().unwrap();
        match slot.as_mut() {
            None => bail!("node {} has no process", self.id),
            Some(c) => match c.try_wait()? {
                None => Ok(()),
                Some(st) => bail!(
                    "node {} exited unexpectedly ({st}); end of its log:\n{}",
                    self.id,
                    tail(&self.log(), 40)
                ),
            },
        }
    }

    /// Says that the process will exit by itself (after `leave`, say), so that the harness
    /// does not take its exit for a crash.
    pub fn expect_exit(&self) {
        self.exit_expected.store(true, Ordering::SeqCst);
    }

    /// Why the process is gone, if it exited without the harness or the test expecting it.
    pub fn crashed(&self) -> Option<String> {
        if self.exit_expected.load(Ordering::SeqCst) {
            return None;
        }
        let st = self.exit_status()?;
        Some(format!(
            "node {} exited unexpectedly ({st}); end of its log:\n{}",
            self.id,
            tail(&self.log(), 40)
        ))
    }

    /// kill -9: SIGKILL, then reap.
    pub fn kill(&self) -> Result<()> {
        self.expect_exit();
        let mut slot = self.child.lock().unwrap();
        if let Some(c) = slot.as_mut() {
            if c.try_wait()?.is_none() {
                c.kill().context("SIGKILL")?;
            }
            c.wait()?;
            note!("node {} killed (SIGKILL)", self.id);
        }
        self.paused.store(false, Ordering::SeqCst);
        Ok(())
    }

    fn signal(&self, sig: &str) -> Result<()> {
        let pid = self
            .pid()
            .ok_or_else(|| anyhow!("node {} is not running", self.id))?;
        let st = std::process::Command::new("kill")
            .args([format!("-{sig}"), pid.to_string()])
            .status()
            .context("running kill")?;
        if !st.success() {
            bail!("kill -{sig} {pid} failed: {st}");
        }
        Ok(())
    }

    /// SIGSTOP: the process freezes, its sockets stay open (a partitioned or hung node).
    pub fn pause(&self) -> Result<()> {
        self.signal("STOP")?;
        self.paused.store(true, Ordering::SeqCst);
        note!("node {} stopped (SIGSTOP)", self.id);
        Ok(())
    }

    /// SIGCONT after [`Node::pause`].
    pub fn resume(&self) -> Result<()> {
        self.signal("CONT")?;
        self.paused.store(false, Ordering::SeqCst);
        note!("node {} continued (SIGCONT)", self.id);
        Ok(())
    }

    /// Graceful stop: SIGTERM, then wait for the exit; SIGKILL if it takes longer than
    /// `timeout` (which fails). Returns the exit status.
    pub async fn stop(&self, timeout: Duration) -> Result<ExitStatus> {
        self.expect_exit();
        if self.paused.load(Ordering::SeqCst) {
            self.resume()?;
        }
        if self.is_running() {
            self.signal("TERM")?;
        }
        match self.wait_exit(timeout).await {
            Ok(st) => {
                note!("node {} stopped gracefully: {st}", self.id);
                Ok(st)
            }
            Err(e) => {
                self.kill()?;
                Err(e.context(format!(
                    "node {} did not stop on SIGTERM; killed it",
                    self.id
                )))
            }
        }
    }

    /// Waits for the process to exit by itself and returns its status.
    pub async fn wait_exit(&self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let mut slot = self.child.lock().unwrap();
                match slot.as_mut() {
                    None => bail!("node {} has no process", self.id),
                    Some(c) => {
                        if let Some(st) = c.try_wait()? {
                            return Ok(st);
                        }
                    }
                }
            }
            if Instant::now() >= deadline {
                bail!("node {} was still running after {timeout:?}", self.id);
            }
            tokio::time::sleep(crate::wait::POLL).await;
        }
    }

    /// Starts the node again after a kill or stop, with only `serve --data-dir DIR`: its
    /// identity, addresses and secret are kept in the data dir.
    pub fn restart(&self) -> Result<()> {
        if self.is_running() {
            bail!("node {} is still running; kill or stop it first", self.id);
        }
        self.launch(vec![
            "serve".into(),
            "--data-dir".into(),
            self.data_dir.display().to_string(),
        ])
    }

    /// Everything the node printed so far.
    pub fn log(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Prints the end of the node's log (to the test's captured output).
    pub fn print_log(&self, lines: usize) {
        eprintln!(
            "\n======== node {} log ({}) ========\n{}\n======== end of node {} log ========",
            self.id,
            self.log_path.display(),
            tail(&self.log(), lines),
            self.id
        );
    }

    // ---- admin API -------------------------------------------------------------------

    pub fn http(&self) -> &Http {
        &self.http
    }

    pub async fn get(&self, path: &str) -> Result<Resp> {
        self.http.get(self.admin_addr, path).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Result<Resp> {
        self.http.put_json(self.admin_addr, path, body).await
    }

    pub async fn put_raw(&self, path: &str, body: &str) -> Result<Resp> {
        self.http.put_raw(self.admin_addr, path, body).await
    }

    pub async fn delete(&self, path: &str) -> Result<Resp> {
        self.http.delete(self.admin_addr, path).await
    }

    /// GET /status.
    pub async fn status(&self) -> Result<Status> {
        self.get("/status").await?.expect(200)?.parse()
    }

    /// GET /leader: the leader this node knows of (an error on 503).
    pub async fn leader(&self) -> Result<LeaderInfo> {
        self.get("/leader").await?.expect(200)?.parse()
    }

    /// GET /v1/config, `consistency` = `linearizable` or `stale`.
    pub async fn config(&self, consistency: &str) -> Result<Config> {
        let resp = self
            .get(&format!("/v1/config?consistency={consistency}"))
            .await?;
        let cfg: Config = resp.expect(200)?.parse()?;
        let header = resp.revision_header()?;
        if header != cfg.revision {
            bail!(
                "{resp}: X-Gateway-Revision {header} differs from the body's revision {}",
                cfg.revision
            );
        }
        Ok(cfg)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let slot = self.child.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = slot.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
