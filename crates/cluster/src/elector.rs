//! When a follower campaigns: our own election timer, in place of openraft's.
//!
//! openraft 0.9 gives each process one random election timeout, fixed for its life, and checks it
//! on a tick of 1.5 heartbeats. After a leader dies, both survivors of a 3-node cluster often pass
//! their timeout on the same tick, campaign together, split the vote and wait a whole election
//! timeout again: the failover benchmark showed half the kills taking 0.7-1.8 s instead of 0.4 s.
//!
//! Here openraft's timer is off (`enable_elect = false`) and this task decides. It measures the
//! silence since this node last accepted an AppendEntries or snapshot from a leader (or since its
//! vote last changed: a new term, a vote granted). A voter campaigns once the silence exceeds the
//! leader lease the other voters enforce (openraft refuses votes until `election_timeout_max` has
//! passed since their last heartbeat), plus a margin, plus one `step` per voter ahead of it in
//! rank: voters are ranked by id, leaving out the leader last heard of. So the survivors campaign
//! one after the other, `step` apart, instead of together, and the first usually wins at once. A
//! candidate whose campaign failed waits a random backoff before the next. A lone voter elects
//! itself at once.
//!
//! The task has no tick: it sleeps until the moment it could campaign (which a heard leader keeps
//! moving on), or until the node's Raft state, vote, leader or membership changes. A leader, or a
//! node that is not a voter, sleeps until such a change. So an idle node's elector wakes a few
//! times per election timeout at most, not a hundred times a second.
//!
//! Before campaigning, a voter holds a pre-vote (Raft thesis 9.6, `PreVote` in raft.proto): it
//! campaigns only if a majority has not heard from a leader for the lease either and finds its
//! log up to date. Without it, a node that restarts, or that alone loses its link to the leader,
//! would campaign with a higher term; the leader, seeing that term in the node's replies, would
//! step down, and the cluster would lose its leader for an election although nothing was wrong.

use crate::handle::Inner;
use gateway_model::NodeId;
use openraft::ServerState;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Last contact with a leader, and any hold on elections, as milliseconds since a base instant.
pub(crate) struct Contact {
    base: Instant,
    last: AtomicU64,
    held_until: AtomicU64,
}

impl Contact {
    pub(crate) fn new() -> Contact {
        Contact {
            base: Instant::now(),
            last: AtomicU64::new(0),
            held_until: AtomicU64::new(0),
        }
    }

    fn millis(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.base).as_millis() as u64
    }

    /// A leader was heard from (or the vote changed): the silence starts again.
    pub(crate) fn touch(&self) {
        self.last
            .fetch_max(self.millis(Instant::now()), Ordering::Relaxed);
    }

    pub(crate) fn silence(&self, now: Instant) -> Duration {
        Duration::from_millis(
            self.millis(now)
                .saturating_sub(self.last.load(Ordering::Relaxed)),
        )
    }

    /// No campaign of this node's own accord for `d` (a leader transfer asks this of the voters
    /// that are not its target).
    pub(crate) fn hold(&self, d: Duration) {
        let until = self.millis(Instant::now() + d);
        self.held_until.fetch_max(until, Ordering::Relaxed);
    }

    /// When a voter that campaigns after `wait` of silence may campaign: `wait` after the last
    /// contact, and not before a hold ends.
    fn campaign_at(&self, wait: Duration) -> Instant {
        let at =
            |millis: &AtomicU64| self.base + Duration::from_millis(millis.load(Ordering::Relaxed));
        (at(&self.last) + wait).max(at(&self.held_until))
    }
}

/// Timing of the elector, from the Raft timing options.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timing {
    /// The leader lease other voters enforce (openraft's `election_timeout_max`).
    pub(crate) lease: Duration,
    /// Extra silence beyond the lease before the first-ranked voter campaigns.
    pub(crate) margin: Duration,
    /// Extra silence per voter ranked ahead.
    pub(crate) step: Duration,
    /// Least wait after a campaign of this node before its next (a random part is added).
    pub(crate) backoff: Duration,
}

impl Timing {
    pub(crate) fn from_election_timeout(min: Duration) -> Timing {
        Timing {
            lease: min * 2,
            margin: min / 2,
            step: min,
            backoff: min,
        }
    }

    /// The silence after which the voter `rank` places from the front campaigns.
    fn wait(&self, rank: usize) -> Duration {
        self.lease + self.margin + self.step * rank as u32
    }
}

/// Where `me` stands among the voters that may replace `leader`: how many come before it.
fn rank(me: NodeId, voters: &[NodeId], leader: Option<NodeId>) -> usize {
    voters
        .iter()
        .filter(|v| Some(**v) != leader && **v < me)
        .count()
}

pub(crate) fn spawn(inner: Arc<Inner>, timing: Timing, mut stop: watch::Receiver<bool>) {
    tokio::spawn(async move {
        // Changes of state, vote, leader and membership only (not of the log's progress).
        let mut server = inner.raft.server_metrics();
        let mut last_vote = None;
        let mut was_leader = false;
        let mut next_try = Instant::now();
        // When to look again if nothing changes; `None`: only on a change.
        let mut due = Some(Instant::now());
        loop {
            let sleep = async {
                match due {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = sleep => {}
                changed = server.changed() => {
                    if changed.is_err() {
                        return; // Raft has stopped
                    }
                }
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
            let (state, vote, leader, voters) = {
                let m = server.borrow_and_update();
                let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
                (m.state, m.vote, m.current_leader, voters)
            };
            if last_vote != Some(vote) {
                last_vote = Some(vote);
                inner.contact.touch();
            }
            let leads = matches!(state, ServerState::Leader | ServerState::Shutdown);
            if leads || was_leader {
                // A leader hears itself; a step-down starts the silence.
                inner.contact.touch();
            }
            was_leader = leads;
            if leads || !voters.contains(&inner.id) {
                due = None;
                continue;
            }
            let wait = if voters.len() == 1 {
                Duration::ZERO
            } else {
                timing.wait(rank(inner.id, &voters, leader))
            };
            let at = inner.contact.campaign_at(wait).max(next_try);
            let now = Instant::now();
            if now < at {
                due = Some(at);
                continue;
            }
            let jitter = rand::random::<u64>() % (timing.backoff.as_millis() as u64 + 1);
            next_try = now + timing.backoff + Duration::from_millis(jitter);
            due = Some(next_try);
            // Ask first: a node that merely lost touch (just restarted, or cut off alone) is
            // refused by voters that still hear from a leader, and so never raises the term.
            if voters.len() > 1 && !inner.pre_vote_round(&voters, timing.step).await {
                tracing::debug!(last_leader = ?leader, "pre-vote refused; not campaigning");
                continue;
            }
            tracing::info!(
                silence_ms = inner.contact.silence(Instant::now()).as_millis() as u64,
                last_leader = ?leader,
                "no leader heard from and a majority would vote; campaigning"
            );
            if inner.raft.trigger().elect().await.is_err() {
                return;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survivors_campaign_one_after_the_other() {
        let t = Timing::from_election_timeout(Duration::from_millis(100));
        let voters = [1, 2, 3];
        // Leader 1 died: node 2 goes first, node 3 one step later.
        assert_eq!(rank(2, &voters, Some(1)), 0);
        assert_eq!(rank(3, &voters, Some(1)), 1);
        assert_eq!(t.wait(0), Duration::from_millis(250));
        assert_eq!(t.wait(1), Duration::from_millis(350));
        // Leader 2 died: 1 then 3.
        assert_eq!(rank(1, &voters, Some(2)), 0);
        assert_eq!(rank(3, &voters, Some(2)), 1);
        // No leader known (a whole cluster restarting): plain id order.
        assert_eq!(rank(1, &voters, None), 0);
        assert_eq!(rank(2, &voters, None), 1);
        assert_eq!(rank(3, &voters, None), 2);
        // The first campaign always waits out the lease the other voters enforce.
        assert!(t.wait(0) > t.lease);
    }

    #[test]
    fn silence_and_hold() {
        let c = Contact::new();
        c.touch();
        let later = Instant::now() + Duration::from_millis(500);
        assert!(c.silence(later) >= Duration::from_millis(490));
        // The campaign is `wait` after the last contact, and moves on with it.
        let wait = Duration::from_millis(250);
        let c = Contact::new();
        c.last.store(100, Ordering::Relaxed);
        assert_eq!(
            c.campaign_at(wait),
            c.base + Duration::from_millis(100) + wait
        );
        c.last.store(120, Ordering::Relaxed);
        assert_eq!(
            c.campaign_at(wait),
            c.base + Duration::from_millis(120) + wait
        );
        // A hold puts it off to the hold's end.
        let before = Instant::now();
        c.hold(Duration::from_secs(10));
        assert!(c.campaign_at(wait) >= before + Duration::from_millis(9_999));
    }
}
