//! Generated gRPC/protobuf code for every Keel API (`package keel.v1`), and the file descriptor
//! set that services hand to gRPC reflection. Start from [`v1`].

/// `keel.v1`: messages and the tonic clients/servers of every service.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("keel.v1");
}

/// The encoded `FileDescriptorSet` of all Keel protos, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/keel_descriptor.bin"));
