//! Compiles every contract under `proto/` with protox (no system `protoc`) and writes the encoded
//! descriptor set next to the generated code, for server reflection.

use std::{
    env, fs,
    path::{Path, PathBuf},
};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let proto_root = manifest_dir.join("../../proto").canonicalize()?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    let mut files = Vec::new();
    collect_protos(&proto_root, &mut files)?;
    files.sort();
    println!("cargo:rerun-if-changed={}", proto_root.display());
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }

    let descriptors = protox::compile(&files, [&proto_root])?;
    fs::write(
        out_dir.join("zentra_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    fs::write(
        out_dir.join("idempotent_requests.rs"),
        idempotent_requests(&descriptors),
    )?;

    // Server code and transport-backed clients only when the `server` feature is on; the browser
    // build keeps just the messages and transport-agnostic clients.
    let server = env::var_os("CARGO_FEATURE_SERVER").is_some();
    let client = env::var_os("CARGO_FEATURE_CLIENT").is_some() || server;
    // Type names let events be packed into `google.protobuf.Any` with their full name.
    let mut config = tonic_prost_build::Config::new();
    config.enable_type_names();
    tonic_prost_build::configure()
        .build_server(server)
        .build_client(client)
        .build_transport(server)
        .include_file("zentra.rs")
        .emit_rerun_if_changed(false)
        .compile_fds_with_config(descriptors, config)?;
    Ok(())
}

/// `IdempotentRequest` impls for every message with a string `idempotency_key` field.
fn idempotent_requests(descriptors: &prost_types::FileDescriptorSet) -> String {
    let mut code = String::new();
    for file in &descriptors.file {
        let package = file.package();
        if !package.starts_with("zentra.") {
            continue;
        }
        let module = package.replace('.', "::");
        for message in &file.message_type {
            let keyed = message.field.iter().any(|field| {
                field.name() == "idempotency_key"
                    && field.r#type() == prost_types::field_descriptor_proto::Type::String
            });
            if keyed {
                code.push_str(&format!(
                    "impl crate::IdempotentRequest for crate::{module}::{name} {{\n\
                     \x20   fn idempotency_key(&self) -> &str {{ &self.idempotency_key }}\n\
                     \x20   fn without_key(&self) -> Self {{ Self {{ idempotency_key: String::new(), ..self.clone() }} }}\n\
                     }}\n",
                    name = message.name()
                ));
            }
        }
    }
    code
}

fn collect_protos(dir: &Path, files: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            // A new file or package directory below changes this directory's listing.
            println!("cargo:rerun-if-changed={}", path.display());
            collect_protos(&path, files)?;
        } else if path.extension().is_some_and(|ext| ext == "proto") {
            files.push(path);
        }
    }
    Ok(())
}
