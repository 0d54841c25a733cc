//! Compiles `csi.proto` into `OUT_DIR`. protoc comes from the system (Debian's
//! `protobuf-compiler`, installed by `bin/setup`); `descriptor.proto` comes from
//! `libprotobuf-dev` under /usr/include, which protoc searches by default.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=csi.proto");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&["csi.proto"], &["."])?;
    Ok(())
}
