fn main() -> std::process::ExitCode {
    sigil_agent::cli::main()
}
