//! The state machine publishes every new state to subscribers, applies requests through
//! `State::apply`, and replaces its state wholesale when a snapshot is installed.

mod common;

use common::{blank, log_id, membership, membership_entry, normal, put_pool};
use gateway_model::{Applied, Command, Proposal, Request, Response};
use gateway_store::StoredMembership;
use openraft::RaftSnapshotBuilder;
use openraft::storage::RaftStateMachine;
use std::sync::Arc;

#[tokio::test]
async fn subscriber_sees_state_after_apply_and_after_install() -> anyhow::Result<()> {
    let dir_a = tempfile::tempdir()?;
    let dir_b = tempfile::tempdir()?;
    let mut sm = gateway_store::open(dir_a.path())?.sm;
    let mut rx = sm.subscribe();
    assert_eq!(rx.borrow_and_update().revision, 0);

    // Apply: blank and membership entries answer with the current revision; requests go
    // through State::apply.
    let replies = sm
        .apply(vec![
            blank(1, 1),
            membership_entry(1, 2, &[1]),
            normal(1, 3, put_pool("r1", "a")),
            normal(
                1,
                4,
                Request {
                    id: "r2".into(),
                    command: Command::DeletePool {
                        name: "nope".into(),
                        expect: None,
                    },
                },
            ),
            blank(1, 5),
        ])
        .await?;
    let replies: Vec<Response> = replies.into_iter().map(one).collect();
    assert_eq!(replies.len(), 5);
    assert_eq!(
        replies[0],
        Response {
            revision: 0,
            outcome: Ok(())
        }
    );
    assert_eq!(
        replies[1],
        Response {
            revision: 0,
            outcome: Ok(())
        }
    );
    assert_eq!(
        replies[2],
        Response {
            revision: 1,
            outcome: Ok(())
        }
    );
    assert_eq!(replies[3].revision, 1);
    assert!(
        replies[3].outcome.is_err(),
        "deleting a missing pool is refused"
    );
    assert_eq!(
        replies[4],
        Response {
            revision: 1,
            outcome: Ok(())
        }
    );
    assert!(rx.has_changed()?, "apply publishes");
    let seen = rx.borrow_and_update().clone();
    assert_eq!(seen.revision, 1);
    assert!(seen.pools.contains_key("a"));
    assert_eq!(
        sm.applied_state().await?,
        (
            Some(log_id(1, 5)),
            StoredMembership::new(Some(log_id(1, 2)), membership(&[1]))
        )
    );

    // A batch without requests publishes the same state without copying it.
    sm.apply(vec![blank(2, 6)]).await?;
    assert!(rx.has_changed()?);
    assert!(
        Arc::ptr_eq(&seen, &rx.borrow_and_update()),
        "blank entries do not copy the state"
    );

    // Another state machine builds a snapshot holding pool "b" only.
    let mut other = gateway_store::open(dir_b.path())?.sm;
    other
        .apply(vec![
            membership_entry(1, 1, &[1, 2]),
            normal(1, 2, put_pool("x1", "b")),
            normal(1, 3, put_pool("x2", "c")),
            normal(
                1,
                4,
                Request {
                    id: "x3".into(),
                    command: Command::DeletePool {
                        name: "c".into(),
                        expect: None,
                    },
                },
            ),
            blank(3, 10),
        ])
        .await?;
    let snap = other.get_snapshot_builder().await.build_snapshot().await?;

    // Install it: the old state ("a") is gone, the new one is published and reported.
    let mut buf = sm.begin_receiving_snapshot().await?;
    *buf = *snap.snapshot;
    sm.install_snapshot(&snap.meta, buf).await?;
    assert!(rx.has_changed()?, "install publishes");
    let seen = rx.borrow_and_update().clone();
    assert_eq!(seen.pools.keys().collect::<Vec<_>>(), vec!["b"]);
    assert_eq!(seen.revision, 3);
    assert_eq!(
        sm.applied_state().await?,
        (
            Some(log_id(3, 10)),
            StoredMembership::new(Some(log_id(1, 1)), membership(&[1, 2]))
        )
    );
    assert_eq!(
        sm.get_current_snapshot().await?.map(|s| s.meta),
        Some(snap.meta)
    );

    // The installed state was reindexed: a retried request is answered from the dedup window
    // instead of applying again.
    let replies = sm.apply(vec![normal(3, 11, put_pool("x2", "c"))]).await?;
    let replies: Vec<Response> = replies.into_iter().map(one).collect();
    assert_eq!(
        replies[0],
        Response {
            revision: 2,
            outcome: Ok(())
        }
    );
    assert!(
        !rx.borrow_and_update().pools.contains_key("c"),
        "the retry applied again"
    );
    Ok(())
}

/// A snapshot built from an older view must not replace a newer installed one.
#[tokio::test]
async fn older_built_snapshot_does_not_replace_newer_installed_one() -> anyhow::Result<()> {
    let dir_a = tempfile::tempdir()?;
    let dir_b = tempfile::tempdir()?;
    let mut sm = gateway_store::open(dir_a.path())?.sm;
    sm.apply(vec![
        membership_entry(1, 1, &[1]),
        normal(1, 2, put_pool("r1", "a")),
    ])
    .await?;
    let mut stale_builder = sm.get_snapshot_builder().await;

    let mut other = gateway_store::open(dir_b.path())?.sm;
    other
        .apply(vec![membership_entry(1, 1, &[1]), blank(2, 20)])
        .await?;
    let newer = other.get_snapshot_builder().await.build_snapshot().await?;
    let mut buf = sm.begin_receiving_snapshot().await?;
    *buf = *newer.snapshot;
    sm.install_snapshot(&newer.meta, buf).await?;

    let stale = stale_builder.build_snapshot().await?;
    assert_eq!(stale.meta.last_log_id, Some(log_id(1, 2)));
    let cur = sm.get_current_snapshot().await?.expect("snapshot");
    assert_eq!(cur.meta, newer.meta, "the newer snapshot stays current");
    Ok(())
}

/// A snapshot whose data does not match its meta is refused and changes nothing.
#[tokio::test]
async fn mismatched_or_garbage_snapshot_is_refused() -> anyhow::Result<()> {
    let dir_a = tempfile::tempdir()?;
    let mut sm = gateway_store::open(dir_a.path())?.sm;
    sm.apply(vec![normal(1, 1, put_pool("r1", "a"))]).await?;
    let snap = sm.get_snapshot_builder().await.build_snapshot().await?;
    let rx = sm.subscribe();

    let mut meta = snap.meta.clone();
    meta.last_log_id = Some(log_id(9, 99));
    let mut buf = sm.begin_receiving_snapshot().await?;
    *buf = *snap.snapshot;
    assert!(sm.install_snapshot(&meta, buf).await.is_err());

    let mut buf = sm.begin_receiving_snapshot().await?;
    buf.get_mut().extend_from_slice(b"garbage");
    assert!(sm.install_snapshot(&meta, buf).await.is_err());

    assert_eq!(sm.applied_state().await?.0, Some(log_id(1, 1)));
    assert_eq!(
        sm.get_current_snapshot().await?.map(|s| s.meta),
        Some(snap.meta)
    );
    assert!(rx.borrow().pools.contains_key("a"));
    Ok(())
}

/// The response of an entry that carried one request.
fn one(a: Applied) -> Response {
    match a {
        Applied::One(r) => r,
        Applied::Group { responses } => panic!("a group answered a single request: {responses:?}"),
    }
}

/// A group entry applies each of its requests on its own, in order: one revision and outcome
/// each, and a request id repeated inside the group (a client retry that raced) applies once.
#[tokio::test]
async fn a_group_entry_applies_each_request_once_in_order() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut sm = gateway_store::open(dir.path())?.sm;
    let group = Proposal::Group {
        requests: vec![
            put_pool("g1", "a"),
            Request {
                id: "g2".into(),
                command: Command::DeletePool {
                    name: "missing".into(),
                    expect: None,
                },
            },
            put_pool("g3", "b"),
            put_pool("g1", "a"),
        ],
    };
    let entry = gateway_store::Entry {
        log_id: log_id(1, 1),
        payload: openraft::EntryPayload::Normal(group),
    };
    let replies = sm.apply(vec![entry]).await?;
    let Some(Applied::Group { responses }) = replies.into_iter().next() else {
        panic!("a group entry must answer with a group");
    };
    assert_eq!(responses.len(), 4);
    assert_eq!(
        responses[0],
        Response {
            revision: 1,
            outcome: Ok(())
        }
    );
    assert_eq!(responses[1].revision, 1);
    assert!(
        responses[1].outcome.is_err(),
        "deleting a missing pool is refused"
    );
    assert_eq!(
        responses[2],
        Response {
            revision: 2,
            outcome: Ok(())
        }
    );
    assert_eq!(
        responses[3], responses[0],
        "the repeated id is answered, not applied again"
    );
    let state = sm.subscribe().borrow().clone();
    assert_eq!(state.revision, 2);
    assert!(state.pools.contains_key("a") && state.pools.contains_key("b"));
    Ok(())
}
