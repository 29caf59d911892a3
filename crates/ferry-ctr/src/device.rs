//! Which burn device computes: the CPU (`flex`) by default; NVIDIA GPUs with the `cuda` or
//! `tch` cargo features. Checked before any work starts, so a misconfigured host fails with a
//! clear message instead of half-way through an epoch.

pub use burn::tensor::Device;

use crate::error::{CtrError, Result};

/// The devices for the configured GPU ids (`servers.<name>.gpus`); the CPU when none.
pub fn devices_for(gpus: &[u32]) -> Result<Vec<Device>> {
    if gpus.is_empty() {
        return Ok(vec![Device::flex()]);
    }
    gpu_devices(gpus)
}

#[cfg(feature = "cuda")]
fn gpu_devices(gpus: &[u32]) -> Result<Vec<Device>> {
    Ok(gpus.iter().map(|&g| Device::cuda(g as usize)).collect())
}

#[cfg(all(feature = "tch", not(feature = "cuda")))]
fn gpu_devices(gpus: &[u32]) -> Result<Vec<Device>> {
    Ok(gpus
        .iter()
        .map(|&g| Device::libtorch_cuda(g as usize))
        .collect())
}

#[cfg(not(any(feature = "cuda", feature = "tch")))]
fn gpu_devices(gpus: &[u32]) -> Result<Vec<Device>> {
    Err(CtrError::Device(format!(
        "GPUs {gpus:?} are configured but this build has no GPU backend; build the agent \
         with `--features cuda` (or `tch`), or set `gpus: []` to train on the CPU"
    )))
}
