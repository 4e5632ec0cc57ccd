//! Why a command was refused. These travel inside Raft responses, so they are plain data.

use serde::{Deserialize, Serialize};

/// One invalid field: where it is, what is wrong with it, and how to fix it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{field}: {problem}; {fix}")]
pub struct Invalid {
    /// Path of the field, e.g. `backends[1].address`.
    pub field: String,
    /// What is wrong with the value.
    pub problem: String,
    /// What to do instead.
    pub fix: String,
}

impl Invalid {
    pub fn new(
        field: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Invalid {
            field: field.into(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }
}

/// A refused command. A refused command changes nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ApplyError {
    /// The input is malformed or inconsistent.
    #[error("{0}")]
    Invalid(Invalid),
    /// The object named does not exist.
    #[error("{what} '{name}' does not exist; list them with GET /v1/{what}s")]
    NotFound { what: String, name: String },
    /// A conditional change found the object at another revision than expected.
    #[error("{}", stale_message(.what, .name, *.expected, .actual))]
    Stale {
        what: String,
        name: String,
        expected: u64,
        actual: Option<u64>,
    },
    /// The change conflicts with other configuration (e.g. deleting a pool a route uses).
    #[error("{message}")]
    Conflict { message: String },
}

impl From<Invalid> for ApplyError {
    fn from(v: Invalid) -> Self {
        ApplyError::Invalid(v)
    }
}

fn stale_message(what: &str, name: &str, expected: u64, actual: &Option<u64>) -> String {
    let state = match actual {
        None => "does not exist".to_string(),
        Some(a) if expected == 0 => format!("already exists (revision {a})"),
        Some(a) => format!("is at revision {a}, not {expected}"),
    };
    format!("{what} '{name}' {state}; read it again and retry with its current revision")
}
