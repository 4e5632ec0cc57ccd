//! A test's error type that remembers, on its thread, that the test failed.
//!
//! A test that returns `Err` drops its locals before the test runner sees the error, and not
//! while panicking, so a [`crate::TestCluster`] could not tell that it should print its logs.
//! Converting any error into a [`Failure`] (which `?` does in a test returning
//! [`TestResult`]) happens while the cluster is still alive and sets a thread-local flag
//! that the cluster's `Drop` reads. libtest runs every test on a thread of its own.

use std::cell::Cell;
use std::fmt;

thread_local! {
    static FAILED: Cell<bool> = const { Cell::new(false) };
}

/// The error of a failed test: any error converted with `?`.
pub struct Failure(anyhow::Error);

/// What a test returns: `?` works on any error and marks the test failed.
pub type TestResult = Result<(), Failure>;

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        FAILED.with(|f| f.set(true));
        Failure(e.into())
    }
}

impl fmt::Debug for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The message and its causes; no backtrace (the harness's messages say where).
        write!(f, "{}", self.0)?;
        for cause in self.0.chain().skip(1) {
            write!(f, "\n  caused by: {cause}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

/// Whether the current test is failing: it is panicking, or an error became a [`Failure`].
pub fn test_failed() -> bool {
    std::thread::panicking() || FAILED.with(|f| f.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converting_an_error_marks_the_test_failed() {
        assert!(!test_failed());
        let f: Failure = anyhow::anyhow!("boom").into();
        assert!(test_failed());
        assert!(format!("{f:?}").contains("boom"));
        FAILED.with(|f| f.set(false)); // this test is not actually failing
    }

    #[test]
    fn anyhow_to_anyhow_does_not_mark() {
        fn inner() -> anyhow::Result<()> {
            crate::ensure!(1 + 1 == 3, "arithmetic");
            Ok(())
        }
        assert!(inner().is_err());
        assert!(!test_failed());
    }
}
