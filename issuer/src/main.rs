//! The `sigil-issuer` binary: the command line in `sigil_issuer::cli`.

fn main() -> std::process::ExitCode {
    sigil_issuer::cli::main()
}
