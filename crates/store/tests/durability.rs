//! Durability of the store: what was acknowledged survives closing and reopening the data dir
//! and a real crash of the process, and bad data on disk gives errors, never panics.

mod common;

use common::{blank, log_id, membership_entry, normal, put_pool};
use gateway_model::State;
use gateway_store::{Entry, LogStore, StorageError, StoreError, Vote};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{LogState, RaftLogReader, RaftSnapshotBuilder, StorageHelper};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

/// Opens a data dir that this test closed a moment ago. sled releases its file lock only once
/// its background flusher thread lets go of the database, a little after the last handle is
/// dropped, so wait (bounded) for the lock instead of failing on it.
fn reopen(dir: &Path) -> Result<gateway_store::Storage, StoreError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match gateway_store::open(dir) {
            Err(e) if e.is_locked() && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

fn entries() -> Vec<Entry> {
    let mut v = vec![membership_entry(1, 1, &[1])];
    for i in 2..=9 {
        v.push(normal(
            1,
            i,
            put_pool(&format!("req-{i}"), &format!("pool-{i}")),
        ));
    }
    v.push(blank(2, 10));
    v
}

/// The state after applying `entries` up to and including `upto`.
fn expected_state(entries: &[Entry], upto: u64) -> State {
    let mut s = State::default();
    for e in entries.iter().filter(|e| e.log_id.index <= upto) {
        if let openraft::EntryPayload::Normal(req) = &e.payload {
            s.apply_proposal(req);
        }
    }
    s
}

async fn all_entries(log: &mut LogStore) -> Result<Vec<Entry>, StorageError> {
    log.try_get_log_entries(..).await
}

fn index_of(e: &Entry) -> u64 {
    e.log_id.index
}

/// Write everything, close cleanly, reopen: vote, log state, entries, committed id, snapshot
/// and the restored state machine are what was written, and openraft's startup re-applies the
/// committed entries after the snapshot.
#[tokio::test]
async fn reopen_restores_everything_written() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let all = entries();
    let vote = Vote::new(2, 1);

    let (snapshot_meta, snapshot_data, membership) = {
        let s = reopen(dir.path())?;
        let (mut log, mut sm) = (s.log, s.sm);
        log.save_vote(&vote).await?;
        log.blocking_append(all.clone()).await?;
        log.save_committed(Some(log_id(1, 9))).await?;

        sm.apply(all[..6].to_vec()).await?; // indexes 1..=6
        let snap = sm.get_snapshot_builder().await.build_snapshot().await?;
        assert_eq!(snap.meta.last_log_id, Some(log_id(1, 6)));
        sm.apply(all[6..9].to_vec()).await?; // indexes 7..=9: applied, not in the snapshot
        log.purge(log_id(1, 4)).await?;
        s.meta.set("node_id", "1")?;

        let (_, membership) = sm.applied_state().await?;
        (snap.meta, snap.snapshot.into_inner(), membership)
        // log, sm and meta are dropped here: the database closes.
    };

    let s = reopen(dir.path())?;
    let (mut log, mut sm) = (s.log, s.sm);
    assert_eq!(log.read_vote().await?, Some(vote));
    assert_eq!(log.read_committed().await?, Some(log_id(1, 9)));
    assert_eq!(
        log.get_log_state().await?,
        LogState {
            last_purged_log_id: Some(log_id(1, 4)),
            last_log_id: Some(log_id(2, 10))
        }
    );
    let got = all_entries(&mut log).await?;
    assert_eq!(
        got.iter().map(index_of).collect::<Vec<_>>(),
        (5..=10).collect::<Vec<_>>()
    );
    assert_eq!(got, all[4..].to_vec(), "entries after the purge are intact");
    assert_eq!(s.meta.get("node_id")?.as_deref(), Some("1"));

    let cur = sm
        .get_current_snapshot()
        .await?
        .expect("snapshot persisted");
    assert_eq!(cur.meta, snapshot_meta);
    assert_eq!(cur.snapshot.into_inner(), snapshot_data);

    // Restored from the snapshot: applied up to 6 with the membership of index 1.
    assert_eq!(
        sm.applied_state().await?,
        (Some(log_id(1, 6)), membership.clone())
    );
    let rx = sm.subscribe();
    assert_eq!(**rx.borrow(), expected_state(&all, 6).for_readers());

    // What openraft does when the node starts: re-apply committed entries 7..=9 from the log.
    let initial = StorageHelper::new(&mut log, &mut sm)
        .get_initial_state()
        .await?;
    assert_eq!(initial.committed, Some(log_id(1, 9)));
    assert_eq!(sm.applied_state().await?, (Some(log_id(1, 9)), membership));
    assert_eq!(**rx.borrow(), expected_state(&all, 9).for_readers());
    assert_eq!(rx.borrow().revision, 8);

    // The deduplication window came back too (readers do not see it): a retry of request
    // req-3, applied before the snapshot, gets its first answer and changes nothing.
    let replies = sm
        .apply(vec![normal(2, 11, put_pool("req-3", "pool-3"))])
        .await?;
    assert!(
        matches!(&replies[..], [gateway_model::Applied::One(r)] if r.revision == 2 && r.outcome.is_ok()),
        "a retried request applied again: {replies:?}"
    );
    assert_eq!(rx.borrow().revision, 8);
    Ok(())
}

/// A second open of a data dir in use fails with `Locked`, whose message names the dir; the
/// dir opens again once the first user closes it.
#[test]
fn second_open_of_a_dir_in_use_is_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let first = reopen(dir.path())?;
    let err = gateway_store::open(dir.path())
        .err()
        .expect("second open must fail");
    assert!(err.is_locked(), "expected Locked, got {err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "data dir {} is in use by another gateway process",
            dir.path().display()
        )
    );
    drop(first);
    reopen(dir.path())?;
    Ok(())
}

#[test]
fn meta_store_round_trips() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    {
        let s = reopen(dir.path())?;
        assert_eq!(s.meta.get("cluster_id")?, None);
        s.meta.set("cluster_id", "c-1")?;
        s.meta.set("cluster_id", "c-2")?;
        s.meta.clone().set("secret", "s3cr3t")?;
    }
    let s = reopen(dir.path())?;
    assert_eq!(s.meta.get("cluster_id")?.as_deref(), Some("c-2"));
    assert_eq!(s.meta.get("secret")?.as_deref(), Some("s3cr3t"));
    Ok(())
}

/// Writes garbage into the store's trees with sled directly.
fn corrupt(dir: &Path, tree: &str, key: &[u8], value: &[u8]) -> anyhow::Result<()> {
    // The store was closed just before: wait for its lock as `reopen` does.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let db = loop {
        match sled::open(dir) {
            // sled reports the held lock as an I/O error of kind Other, naming it.
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => break other?,
        }
    };
    db.open_tree(tree)?.insert(key, value)?;
    db.flush()?;
    Ok(())
}

#[tokio::test]
async fn corrupt_log_entry_is_an_error_not_a_panic() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    {
        let mut log = reopen(dir.path())?.log;
        log.blocking_append(vec![blank(1, 1), blank(1, 2)]).await?;
    }
    corrupt(dir.path(), "log", &2u64.to_be_bytes(), b"{not json")?;
    corrupt(dir.path(), "raft", b"vote", b"\xff")?;
    let mut log = reopen(dir.path())?.log;
    let err = log
        .try_get_log_entries(1..3)
        .await
        .expect_err("corrupt entry");
    assert!(err.to_string().contains("corrupt"), "{err}");
    assert!(log.get_log_state().await.is_err());
    assert!(log.read_vote().await.is_err());
    assert_eq!(log.try_get_log_entries(1..2).await?, vec![blank(1, 1)]);
    Ok(())
}

#[test]
fn corrupt_snapshot_fails_open_with_an_error() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    drop(reopen(dir.path())?);
    corrupt(dir.path(), "snapshot", b"current", b"\x00\x00\x00\x09short")?;
    match reopen(dir.path()) {
        Err(e @ StoreError::Corrupt { .. }) => assert!(e.to_string().contains("snapshot"), "{e}"),
        Err(e) => panic!("expected Corrupt, got {e:?}"),
        Ok(_) => panic!("a corrupt snapshot must not open"),
    }
    Ok(())
}

const CRASH_CHILD_ENV: &str = "GATEWAY_STORE_CRASH_CHILD_DIR";
const CRASH_TEST_NAME: &str = "abort_after_ack_loses_nothing_acknowledged";
const CRASH_ENTRIES: u64 = 40;

/// The child role: write a vote and entries one append at a time, print an acknowledgement
/// after each flush returns, then abort without dropping or flushing anything.
fn crash_child(dir: &Path) -> ! {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut log = gateway_store::open(dir).expect("open").log;
        let mut out = std::io::stdout().lock();
        log.save_vote(&Vote::new(7, 3)).await.expect("save vote");
        writeln!(out, "VOTE 7")
            .and_then(|_| out.flush())
            .expect("stdout");
        for i in 1..=CRASH_ENTRIES {
            let e = normal(7, i, put_pool(&format!("r{i}"), &format!("p{i}")));
            log.blocking_append(vec![e]).await.expect("append");
            writeln!(out, "ACKED {i}")
                .and_then(|_| out.flush())
                .expect("stdout");
        }
        std::process::abort()
    })
}

/// A real crash: a child process (this test binary, re-executed in the child role) acknowledges
/// a vote and entries after their flush, then aborts. Everything acknowledged is on disk.
#[test]
fn abort_after_ack_loses_nothing_acknowledged() -> anyhow::Result<()> {
    if let Some(dir) = std::env::var_os(CRASH_CHILD_ENV) {
        crash_child(Path::new(&dir));
    }
    let dir = tempfile::tempdir()?;
    let mut child = Command::new(std::env::current_exe()?)
        .args([
            CRASH_TEST_NAME,
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CRASH_CHILD_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().expect("piped stdout");
    let (mut vote_acked, mut acked) = (false, 0u64);
    for line in BufReader::new(stdout).lines() {
        // libtest prints "test NAME ... " on the line where the child's first output lands.
        let line = line?;
        if line.ends_with("VOTE 7") {
            vote_acked = true;
        } else if let Some((_, i)) = line.split_once("ACKED ") {
            acked = i.trim().parse()?;
        }
    }
    let status = child.wait()?;
    assert!(
        !status.success(),
        "the child must die by abort, not finish: {status}"
    );
    assert!(vote_acked, "the child never acknowledged its vote");
    assert_eq!(
        acked, CRASH_ENTRIES,
        "the child stopped before acknowledging every entry"
    );

    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let mut log = reopen(dir.path())?.log;
        assert_eq!(log.read_vote().await?, Some(Vote::new(7, 3)));
        let got = log.try_get_log_entries(1..=acked).await?;
        let want: Vec<Entry> = (1..=acked)
            .map(|i| normal(7, i, put_pool(&format!("r{i}"), &format!("p{i}"))))
            .collect();
        let indexes: Vec<u64> = got.iter().map(index_of).collect();
        assert_eq!(
            indexes,
            (1..=acked).collect::<Vec<_>>(),
            "every acknowledged entry survives the crash"
        );
        assert_eq!(
            got, want,
            "acknowledged entries survive the crash unchanged"
        );
        assert_eq!(
            log.get_log_state().await?.last_log_id,
            Some(log_id(7, acked))
        );
        anyhow::Ok(())
    })
}

/// A leader's committed vote comes back uncommitted after a restart, so the node campaigns
/// again instead of resuming as leader from a committed id that may lag (it is not flushed).
#[tokio::test]
async fn a_committed_vote_reads_back_uncommitted() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    {
        let mut log = reopen(dir.path())?.log;
        log.save_vote(&Vote::new_committed(4, 2)).await?;
        assert_eq!(log.read_vote().await?, Some(Vote::new(4, 2)));
    }
    let mut log = reopen(dir.path())?.log;
    let vote = log.read_vote().await?.expect("the vote survives a reopen");
    assert_eq!(vote, Vote::new(4, 2));
    assert!(!vote.is_committed());
    Ok(())
}
