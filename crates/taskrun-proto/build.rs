//! Compiles `proto/taskrun/v1/*.proto` (at the workspace root) with protox,
//! a pure-Rust proto compiler, so no system `protoc` is needed. Emits the
//! tonic/prost code and the encoded file descriptor set into OUT_DIR.

use std::error::Error;
use std::path::PathBuf;
use std::{env, fs};

fn main() -> Result<(), Box<dyn Error>> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let proto_root = manifest_dir.join("../../proto").canonicalize()?;
    println!("cargo:rerun-if-changed={}", proto_root.display());

    let mut files = Vec::new();
    for entry in fs::read_dir(proto_root.join("taskrun/v1"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == "proto") {
            files.push(path);
        }
    }
    files.sort();

    let mut compiler = protox::Compiler::new([&proto_root])?;
    compiler.include_source_info(true);
    compiler.include_imports(true);
    compiler.open_files(&files)?;

    // Kept with its source info, so reflection clients see the comments.
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out_dir.join("taskrun_v1_descriptor.bin"), compiler.encode_file_descriptor_set())?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // The generated `XClient::connect(url)` constructor would clash with
        // the client method of `rpc Connect`; build clients with
        // `XClient::new(channel)` (TLS needs an explicit Channel anyway).
        .build_transport(false)
        // Maps as BTreeMap, like taskrun-core's Labels: ordered, and
        // deterministic on the wire.
        .btree_map(".")
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
