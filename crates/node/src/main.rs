//! The `gateway` binary: command line, configuration, logging, and the wiring of cluster,
//! admin plane and data plane. The work itself lives in the library crates.

mod alerts;
mod cli;
mod client;
mod config;
mod ctl;
mod demo;
mod metrics;
mod run;
mod supervisor;
mod tlsgen;
mod top;

use clap::Parser;
use std::process::ExitCode;

/// mimalloc instead of glibc's malloc: the proxy and the Raft path allocate many short-lived
/// buffers across threads, where glibc's allocator spent about a seventh of a node's CPU
/// (`_int_malloc`, `malloc_consolidate`, `free`; bench/README.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let action = match cli::prepare(cli::Cli::parse()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match run::runtime(action.runtime_threads()) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::dispatch(action)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
