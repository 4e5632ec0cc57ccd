//! Generates the gRPC code from proto/ with the protoc shipped by `protoc-bin-vendored`, so no
//! system protoc is needed. The admin API's file descriptor set is kept for server reflection.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // A follower's forwarded writes as `Bytes`: a batch keeps them for a per-write fallback
    // without copying them.
    config.bytes([
        ".gateway.cluster.v1.WriteRequest.request_json",
        ".gateway.cluster.v1.WriteBatchRequest.requests_json",
    ]);
    tonic_prost_build::configure().compile_with_config(
        config,
        &["../../proto/raft.proto"],
        &["../../proto"],
    )?;
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .btree_map(".gateway.admin.v1")
        .file_descriptor_set_path(out_dir.join("admin_descriptor.bin"))
        .compile_with_config(config, &["../../proto/admin.proto"], &["../../proto"])?;
    println!("cargo:rerun-if-changed=../../proto");
    Ok(())
}
