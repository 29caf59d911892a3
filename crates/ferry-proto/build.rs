//! Compiles `proto/` with protox (pure Rust, so no system `protoc` is needed).

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time: the compiled build script is shared by checkouts that use the same
    // target directory, so a path baked in at compile time could name another checkout.
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = [
        "ferry/v1/common.proto",
        "ferry/v1/workflow.proto",
        "ferry/v1/agent.proto",
    ];
    // Relative to this package, so checkouts that share a target directory each watch
    // their own files.
    for f in &files {
        println!("cargo:rerun-if-changed=../../proto/{f}");
    }
    let fds = protox::compile(files, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("ferry_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
