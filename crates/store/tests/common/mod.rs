//! Helpers shared by the store's integration tests.
#![allow(dead_code)]

use gateway_model::{Backend, Command, NodeAddr, Pool, Proposal, Request};
use gateway_store::{Entry, LogId, Membership};
use openraft::{CommittedLeaderId, EntryPayload};
use std::collections::{BTreeMap, BTreeSet};

pub fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

pub fn blank(term: u64, index: u64) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Blank,
    }
}

pub fn membership(voters: &[u64]) -> Membership {
    let nodes: BTreeMap<u64, NodeAddr> = voters
        .iter()
        .map(|&id| {
            let addr = NodeAddr {
                cluster_addr: format!("127.0.0.1:{}", 7100 + id),
                admin_addr: format!("127.0.0.1:{}", 9100 + id),
                http_addr: format!("127.0.0.1:{}", 8100 + id),
            };
            (id, addr)
        })
        .collect();
    let ids: BTreeSet<u64> = voters.iter().copied().collect();
    Membership::new(vec![ids], nodes)
}

pub fn membership_entry(term: u64, index: u64, voters: &[u64]) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Membership(membership(voters)),
    }
}

pub fn pool(name: &str) -> Pool {
    Pool {
        name: name.into(),
        // From JSON, so fields added to backends later keep their defaults here.
        backends: vec![
            serde_json::from_str::<Backend>(r#"{"id":"a","address":"127.0.0.1:9000"}"#)
                .expect("a valid backend"),
        ],
        ..Default::default()
    }
}

pub fn put_pool(req_id: &str, name: &str) -> Request {
    Request {
        id: req_id.into(),
        command: Command::PutPool {
            pool: pool(name),
            expect: None,
        },
    }
}

pub fn normal(term: u64, index: u64, req: Request) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(Proposal::One(req)),
    }
}
