//! `sigil-loadgen`: simulates agents against one or more issuer replicas
//! and prints what it measured. Exit status: 0 when every measurement
//! passed, 3 when the run finished but something failed (agents that did
//! not attach, SVIDs or bundles that never arrived), 1 when it could not run.

#![forbid(unsafe_code)]

mod admin;
mod agent;
mod events;
mod process;
mod queries;
mod report;
mod run;
mod settings;
mod stats;

use std::process::ExitCode;

use clap::Parser;

use crate::settings::{Cli, Settings};

fn main() -> ExitCode {
    let settings = match Settings::try_from(Cli::parse()) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("sigil-loadgen: {error}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("sigil-loadgen: starting the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let report = match runtime.block_on(run::run(&settings)) {
        Ok(report) => report,
        Err(error) => {
            eprintln!("sigil-loadgen: {error}");
            return ExitCode::FAILURE;
        }
    };
    if settings.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("the report serializes")
        );
    } else {
        print!("{}", report.to_text());
    }
    // The agents' tasks are aborted; their connections close with the runtime.
    runtime.shutdown_background();
    if report.pass {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    }
}
