//! CTR models on burn for the training and inference hosts: FuxiCTR-compatible feature
//! processing and data layout, FuxiCTR's own configuration files, FuxiCTR's models (LR, FM, DNN, WideDeep, DeepFM, PNN, DCNv2, xDeepFM, AutoInt, FiBiNET, FinalMLP, MMoE, ShareBottom, PLE), training with
//! per-epoch checkpoints and exact resume, and part-level inference.

pub mod dataset;
pub mod device;
pub mod error;
pub mod features;
pub mod fuxictr;
pub mod infer;
pub mod metrics;
pub mod model;
pub mod optim;
mod parallel;
pub mod rng;
pub mod tensorboard;
pub mod train;

pub use error::{CtrError, Result};
pub use features::{EncodedBatch, FeatureProcessor, FeatureSpec};
pub use model::{CtrModel, InputShape, ModelConfig, ModelKind};
