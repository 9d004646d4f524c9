//! Compiles the .proto files with protox (a pure-Rust protobuf compiler), so building needs no `protoc`.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "sealroom/attestation/v1/evidence.proto",
        "sealroom/attestation/v1/attestation.proto",
        "sealroom/keybroker/v1/keybroker.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["."])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    // The encoded descriptor set is served by gRPC reflection so ordinary clients can discover the API.
    std::fs::write(out.join("sealroom_descriptor.bin"), prost::Message::encode_to_vec(&fds))?;
    // Without the `grpc` feature only the messages are generated: the verifier library decodes evidence
    // without pulling in tonic and tokio.
    let grpc = std::env::var_os("CARGO_FEATURE_GRPC").is_some();
    tonic_prost_build::configure().build_client(grpc).build_server(grpc).compile_fds(fds)?;
    Ok(())
}
