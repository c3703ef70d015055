//! Compiles the .proto files under `proto/` with prost. Bytes fields become
//! `bytes::Bytes` (tensor payloads are shared, not copied) and maps become
//! `BTreeMap` so that encoding is deterministic.
//!
//! Message-only files are listed in `PROTOS` (plain prost); files that
//! declare gRPC services are listed in `SERVICES` and go through
//! `tonic_prost_build` with the same configuration. Service files refer to
//! TensorFlow's messages as `crate::tensorflow::…`, so each service package
//! can live in its own top-level module of the crate.

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

const SERVICES: &[&str] = &[
    "proto/psflow/ps.proto",
    "proto/psflow/worker.proto",
    "proto/psflow/coordinator.proto",
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
    tonic_prost_build::configure()
        .extern_path(".tensorflow", "crate::tensorflow")
        // Buffers sized for tensor chunks (see src/codec.rs).
        .codec_path("crate::codec::TensorCodec")
        .compile_with_config(config(), SERVICES, &["proto"])?;
    Ok(())
}
