//! Ferry's transport between hosts that share no directory: SSH sessions (openssh, one
//! multiplexed master per host), rsync over the session's control socket, and chunk
//! manifests that prove what arrived is what left.

pub mod confine;
pub mod error;
pub mod landing;
pub mod manifest;
pub mod pool;
pub mod rsync;
pub mod ssh;
pub mod transfer;

pub use error::TransferError;
pub use manifest::{HashAlgorithm, MANIFEST_NAME, Manifest};

/// Whether a directory entry is the transfer's own bookkeeping (the manifest a destination
/// keeps, the partial-chunk directory), not data: consumers of a delivery skip it.
pub fn is_transfer_metadata(file_name: &str) -> bool {
    file_name == manifest::MANIFEST_NAME || file_name == transfer::PARTIAL_DIR
}
