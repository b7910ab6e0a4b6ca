//! Generates the gRPC code with protox, so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/workload.proto",
        "proto/issuer.proto",
        "proto/admin.proto",
        "proto/agent.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    // The Workload API's descriptors, for gRPC reflection on the agent socket.
    let workload = protox::compile(["proto/workload.proto"], ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("workload_descriptor.bin"),
        prost::Message::encode_to_vec(&workload),
    )?;
    tonic_prost_build::configure()
        .codec_path("crate::codec::LeanCodec")
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
