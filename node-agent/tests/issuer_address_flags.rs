//! `sigil-agent run` takes several issuer addresses: the flag repeated, or
//! a comma-separated SIGIL_ISSUER_ADDRESS. The configuration is refused
//! before anything starts, so these runs end at once.

use std::process::Command;

/// Runs `sigil-agent run` with no configuration file; returns its stderr.
fn run(args: &[&str], env_addresses: Option<&str>) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sigil-agent"));
    command
        .arg("run")
        .args(["--trust-domain", "example.org"])
        .args(args)
        .env_remove("SIGIL_AGENT_CONFIG")
        .env_remove("SIGIL_AGENT_DATA_DIR")
        .env_remove("SIGIL_ISSUER_ADDRESS");
    if let Some(addresses) = env_addresses {
        command.env("SIGIL_ISSUER_ADDRESS", addresses);
    }
    let output = command.output().unwrap();
    assert!(!output.status.success());
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_bad_entry_is_named_wherever_the_list_comes_from() {
    let from_env = run(&[], Some("10.0.0.1:8081,issuer.example"));
    assert!(
        from_env.contains("config key issuer_address: \"issuer.example\" is not host:port"),
        "{from_env}"
    );
    let repeated = run(
        &[
            "--issuer-address",
            "10.0.0.1:8081",
            "--issuer-address",
            "nowhere",
        ],
        None,
    );
    assert!(
        repeated.contains("config key issuer_address: \"nowhere\" is not host:port"),
        "{repeated}"
    );
}

#[test]
fn a_good_list_passes_on_to_the_next_key() {
    // data_dir, validated after issuer_address, is what is missing.
    for (args, env) in [
        (&[][..], Some("10.0.0.1:8081,issuer.example:8081")),
        (
            &[
                "--issuer-address",
                "10.0.0.1:8081",
                "--issuer-address",
                "issuer.example:8081",
            ][..],
            None,
        ),
    ] {
        let stderr = run(args, env);
        assert!(
            stderr.contains("config key data_dir is required"),
            "{args:?} {env:?}: {stderr}"
        );
    }
}
