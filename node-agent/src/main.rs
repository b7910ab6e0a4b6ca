//! The `sigil-agent` binary: the command line in `sigil_agent::cli`.

fn main() -> std::process::ExitCode {
    sigil_agent::cli::main()
}
