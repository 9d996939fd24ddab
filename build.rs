//! Compiles the wire contract in `proto/` into Rust messages and tonic stubs,
//! and exports the file descriptor set that the server registers for gRPC
//! reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    // A vendored protoc keeps a fresh machine free of a system protobuf
    // install; an explicit PROTOC still wins for packagers.
    if std::env::var_os("PROTOC").is_none() {
        std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("expresscache_descriptor.bin"))
        .compile_protos(&["proto/expresscache/v1/cache.proto"], &["proto"])?;
    Ok(())
}
