fn main() -> std::process::ExitCode {
    sigil_issuer::cli::main()
}
