//! The only crate that knows Ferry's wire format: generated gRPC types for `ferry.v1` and
//! conversions between them and `ferry-core`'s domain types.

#[allow(
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    rust_2018_idioms,
    missing_docs
)]
pub mod v1 {
    tonic::include_proto!("ferry.v1");

    /// Encoded descriptors of every Ferry service, for the gRPC reflection service.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("ferry_descriptor");
}

pub mod bearer;
mod convert;
pub mod identity;
#[cfg(any(feature = "pki", test))]
pub mod pki;
pub mod split;
pub mod tls;

pub use convert::{
    ConversionError, error_class_from_wire, error_class_to_wire, job_state_from_wire,
    job_state_to_wire,
};
