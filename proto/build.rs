//! Compiles the .proto files under `proto/` with prost. Bytes fields become
//! `bytes::Bytes` (tensor payloads are shared, not copied) and maps become
//! `BTreeMap` so that encoding is deterministic.
//!
//! To add a file, list it in `PROTOS`; a later gRPC service goes through
//! `tonic_prost_build` with the same configuration.

const PROTOS: &[&str] = &[
    "proto/tensorflow/types.proto",
    "proto/tensorflow/tensor_shape.proto",
    "proto/tensorflow/tensor.proto",
    "proto/tensorflow/attr_value.proto",
    "proto/tensorflow/node_def.proto",
    "proto/tensorflow/versions.proto",
    "proto/tensorflow/graph.proto",
    "proto/tensorflow/summary.proto",
    "proto/tensorflow/event.proto",
];

fn config() -> prost_build::Config {
    let mut config = prost_build::Config::new();
    config.bytes(["."]);
    config.btree_map(["."]);
    config
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // No system protoc is assumed: use the vendored binary.
    std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    println!("cargo:rerun-if-changed=proto");
    config().compile_protos(PROTOS, &["proto"])?;
    Ok(())
}
