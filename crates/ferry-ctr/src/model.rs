//! The models, in FuxiCTR's shapes, on one code path for every burn backend: the `Device` a
//! model is created on picks the backend at runtime.
//!
//! Every model embeds the fields the same way (FuxiCTR's `FeatureEmbedding`): one table for all
//! categorical fields (each field's indices offset into it) and, per numeric field, a
//! `Linear(1, dim, bias=False)` — so DeepFM's and MMoE's DNN inputs are `num_fields × dim` wide.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId, RunningState};
use burn::nn::{
    BatchNorm, BatchNormConfig, Dropout, DropoutConfig, Embedding, EmbeddingConfig, Initializer,
    Linear, LinearConfig,
};
use burn::tensor::activation::{relu, sigmoid, softmax, tanh};
use burn::tensor::{Device, Int, Tensor, TensorData};
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{CtrError, Result};
use crate::features::{EncodedBatch, FeatureProcessor, FeatureSpec, Pooling};
use crate::rng::SplitMix64;

/// FuxiCTR's model names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ModelKind {
    LR,
    FM,
    DeepFM,
    /// DCN v2: a cross network (full matrices, or a mixture of low-rank experts) with a DNN
    /// stacked on it, beside it, both, or neither (`model_structure`).
    #[serde(alias = "DCNv2")]
    DCN,
    /// Multi-gate mixture of experts, one tower per label.
    MMoE,
    /// An MLP over the concatenated field embeddings.
    DNN,
    /// Wide (first-order) plus deep.
    WideDeep,
    /// Inner-product PNN (IPNN): the embeddings and their pairwise inner products into an MLP.
    PNN,
    /// Compressed interaction network, first-order terms and a DNN.
    #[serde(rename = "xDeepFM")]
    XDeepFM,
    /// Multi-head self-attention over the fields.
    AutoInt,
    /// Squeeze-excitation and bilinear interactions.
    FiBiNET,
    /// Two MLPs with feature selection, fused by bilinear heads.
    FinalMLP,
    /// One shared bottom MLP, one tower per label.
    ShareBottom,
    /// Progressive layered extraction: shared and task-specific experts, one tower per label.
    PLE,
    /// Deep interest network: target attention over a sequence field, then an MLP.
    DIN,
}

impl ModelKind {
    pub fn parse(name: &str) -> Option<ModelKind> {
        match name.to_ascii_lowercase().as_str() {
            "lr" => Some(ModelKind::LR),
            "fm" => Some(ModelKind::FM),
            "deepfm" => Some(ModelKind::DeepFM),
            "dcn" | "dcnv2" => Some(ModelKind::DCN),
            "mmoe" => Some(ModelKind::MMoE),
            "dnn" => Some(ModelKind::DNN),
            "widedeep" | "wide&deep" => Some(ModelKind::WideDeep),
            "pnn" | "ipnn" => Some(ModelKind::PNN),
            "xdeepfm" => Some(ModelKind::XDeepFM),
            "autoint" => Some(ModelKind::AutoInt),
            "fibinet" => Some(ModelKind::FiBiNET),
            "finalmlp" => Some(ModelKind::FinalMLP),
            "sharebottom" | "sharedbottom" => Some(ModelKind::ShareBottom),
            "ple" => Some(ModelKind::PLE),
            "din" => Some(ModelKind::DIN),
            _ => None,
        }
    }

    /// Every model, in the order the documentation lists them.
    pub const ALL: [ModelKind; 15] = [
        ModelKind::LR,
        ModelKind::FM,
        ModelKind::DNN,
        ModelKind::WideDeep,
        ModelKind::DeepFM,
        ModelKind::PNN,
        ModelKind::DCN,
        ModelKind::XDeepFM,
        ModelKind::AutoInt,
        ModelKind::FiBiNET,
        ModelKind::FinalMLP,
        ModelKind::MMoE,
        ModelKind::ShareBottom,
        ModelKind::PLE,
        ModelKind::DIN,
    ];

    pub fn is_multi_task(self) -> bool {
        matches!(
            self,
            ModelKind::MMoE | ModelKind::ShareBottom | ModelKind::PLE
        )
    }

    /// Models that pair fields (all pairs of at least two).
    fn pairs_fields(self) -> bool {
        matches!(self, ModelKind::PNN | ModelKind::FiBiNET)
    }
}

/// DCN v2's `model_structure`: where the DNN sits relative to the cross network.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DcnStructure {
    CrossnetOnly,
    Stacked,
    #[default]
    Parallel,
    StackedParallel,
}

/// FiBiNET's `bilinear_type`: one matrix for all pairs, one per field, or one per pair.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BilinearType {
    FieldAll,
    FieldEach,
    #[default]
    FieldInteraction,
}

fn default_embedding_dim() -> usize {
    16
}
fn default_hidden() -> Vec<usize> {
    vec![400, 400, 400]
}
fn default_batch() -> usize {
    4096
}
fn default_epochs() -> usize {
    1
}
fn default_lr() -> f64 {
    1e-3
}
fn default_optimizer() -> String {
    "adam".into()
}
fn default_seed() -> u64 {
    2024
}
fn default_cross() -> usize {
    3
}
fn default_experts() -> usize {
    4
}
fn default_expert_hidden() -> Vec<usize> {
    vec![512, 256]
}
fn default_gate_hidden() -> Vec<usize> {
    vec![128, 64]
}
fn default_tower_hidden() -> Vec<usize> {
    vec![128, 64]
}
fn default_patience() -> usize {
    2
}
fn default_infer_batch() -> usize {
    10_000
}
fn default_low_rank() -> usize {
    32
}
fn default_cin() -> Vec<usize> {
    vec![16, 16, 16]
}
fn default_attention_layers() -> usize {
    2
}
fn one() -> usize {
    1
}
fn default_attention_dim() -> usize {
    8
}
fn yes() -> bool {
    true
}
fn default_reduction() -> usize {
    3
}
fn default_mlp() -> Vec<usize> {
    vec![64, 64, 64]
}
fn default_fs_hidden() -> Vec<usize> {
    vec![64]
}

/// A model's settings, with FuxiCTR's key names (`model_config.yaml`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub model: ModelKind,
    pub model_id: String,
    #[serde(default = "default_embedding_dim")]
    pub embedding_dim: usize,
    #[serde(default = "default_hidden")]
    pub hidden_units: Vec<usize>,
    #[serde(default, alias = "net_dropout")]
    pub dropout: f64,
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    #[serde(default = "default_lr")]
    pub learning_rate: f64,
    #[serde(default = "default_optimizer")]
    pub optimizer: String,
    #[serde(default = "default_seed")]
    pub seed: u64,
    #[serde(default = "default_cross")]
    pub num_cross_layers: usize,
    #[serde(default = "default_experts")]
    pub num_experts: usize,
    #[serde(default = "default_expert_hidden")]
    pub expert_hidden_units: Vec<usize>,
    #[serde(default = "default_gate_hidden")]
    pub gate_hidden_units: Vec<usize>,
    #[serde(default = "default_tower_hidden")]
    pub tower_hidden_units: Vec<usize>,
    /// Epochs without a better validation AUC before training stops.
    #[serde(default = "default_patience")]
    pub early_stop_patience: usize,
    #[serde(default = "default_infer_batch")]
    pub inference_batch_size: usize,
    /// DCN: where the DNN sits (`parallel` uses `hidden_units`, `stacked` uses
    /// `stacked_hidden_units`).
    #[serde(default)]
    pub model_structure: DcnStructure,
    #[serde(default)]
    pub stacked_hidden_units: Vec<usize>,
    /// DCN: a mixture of `num_experts` low-rank experts per cross layer instead of full
    /// matrices.
    #[serde(default)]
    pub use_low_rank_mixture: bool,
    #[serde(default = "default_low_rank")]
    pub low_rank: usize,
    /// xDeepFM: the feature maps of each CIN layer.
    #[serde(default = "default_cin")]
    pub cin_hidden_units: Vec<usize>,
    /// AutoInt: self-attention layers, heads, width.
    #[serde(default = "default_attention_layers")]
    pub attention_layers: usize,
    /// AutoInt's attention heads and FinalMLP's fusion heads.
    #[serde(default = "one")]
    pub num_heads: usize,
    #[serde(default = "default_attention_dim")]
    pub attention_dim: usize,
    #[serde(default = "yes")]
    pub use_residual: bool,
    #[serde(default)]
    pub use_scale: bool,
    /// AutoInt: add first-order terms.
    #[serde(default)]
    pub use_wide: bool,
    /// FiBiNET.
    #[serde(default = "default_reduction")]
    pub reduction_ratio: usize,
    #[serde(default)]
    pub bilinear_type: BilinearType,
    /// FinalMLP.
    #[serde(default = "default_mlp")]
    pub mlp1_hidden_units: Vec<usize>,
    #[serde(default = "default_mlp")]
    pub mlp2_hidden_units: Vec<usize>,
    #[serde(default)]
    pub mlp1_dropout: f64,
    #[serde(default)]
    pub mlp2_dropout: f64,
    #[serde(default = "yes")]
    pub use_fs: bool,
    #[serde(default = "default_fs_hidden")]
    pub fs_hidden_units: Vec<usize>,
    /// ShareBottom.
    #[serde(default = "default_mlp")]
    pub bottom_hidden_units: Vec<usize>,
    /// PLE: extraction layers and experts per layer.
    #[serde(default = "one")]
    pub num_layers: usize,
    #[serde(default = "one")]
    pub num_shared_experts: usize,
    #[serde(default = "one")]
    pub num_specific_experts: usize,
    /// Penalties on the embedding tables and on the layers' weights and biases, FuxiCTR's
    /// `embedding_regularizer` and `net_regularizer`: `λ/p · ‖w‖ₚᵖ` per term, added to the loss.
    #[serde(default)]
    pub embedding_regularizer: Vec<Penalty>,
    #[serde(default)]
    pub net_regularizer: Vec<Penalty>,
    /// A batch normalization after each hidden layer of the MLPs (FuxiCTR's `batch_norm`);
    /// FinalMLP has one switch per branch.
    #[serde(default)]
    pub batch_norm: bool,
    #[serde(default)]
    pub mlp1_batch_norm: bool,
    #[serde(default)]
    pub mlp2_batch_norm: bool,
    /// What picks the best epoch and stops training early (FuxiCTR's `monitor`): a weighted
    /// sum of validation `AUC` and `logloss` (each the mean over labels); `{AUC: 1}` by default.
    #[serde(default = "default_monitor")]
    pub monitor: BTreeMap<String, f64>,
    /// Whether a larger (`max`) or smaller (`min`) monitored figure is better.
    #[serde(default)]
    pub monitor_mode: MonitorMode,
    /// DIN: the categorical fields attended to, and the sequence fields attended over, pair by
    /// pair; each a field, or fields attended together (FuxiCTR's tuple).
    #[serde(default, deserialize_with = "one_or_many")]
    pub din_target_field: Vec<DinField>,
    #[serde(default, deserialize_with = "one_or_many")]
    pub din_sequence_field: Vec<DinField>,
    #[serde(default = "default_attention_hidden")]
    pub attention_hidden_units: Vec<usize>,
    /// `Dice` (FuxiCTR's default) or `ReLU`.
    #[serde(default = "default_attention_activation")]
    pub attention_hidden_activations: String,
    /// None, or `sigmoid` on each attention weight.
    #[serde(default)]
    pub attention_output_activation: Option<String>,
    #[serde(default)]
    pub attention_dropout: f64,
    /// Softmax over the sequence's real tokens instead of raw weights.
    #[serde(default)]
    pub din_use_softmax: bool,
    /// DIN's DNN: `ReLU` (the default) or `Dice` after each hidden layer (FuxiCTR's
    /// `dnn_activations`).
    #[serde(default = "default_dnn_activation")]
    pub dnn_activations: String,
}

/// One entry of DIN's `din_target_field` / `din_sequence_field`: a field (a name), or fields
/// attended together (a list of names; FuxiCTR's tuple), whose embeddings are concatenated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DinField {
    One(String),
    Together(Vec<String>),
}

impl DinField {
    /// The fields, in order.
    pub fn names(&self) -> &[String] {
        match self {
            DinField::One(name) => std::slice::from_ref(name),
            DinField::Together(names) => names,
        }
    }
}

impl From<&str> for DinField {
    fn from(name: &str) -> DinField {
        DinField::One(name.to_owned())
    }
}

impl std::fmt::Display for DinField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DinField::One(name) => f.write_str(name),
            DinField::Together(names) => write!(f, "({})", names.join(", ")),
        }
    }
}

/// An entry, or a list of entries (FuxiCTR accepts both for DIN's fields).
fn one_or_many<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<DinField>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<DinField>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(name) => vec![DinField::One(name)],
        OneOrMany::Many(fields) => fields,
    })
}

fn default_attention_hidden() -> Vec<usize> {
    vec![64]
}

fn default_attention_activation() -> String {
    "Dice".into()
}

fn default_dnn_activation() -> String {
    "ReLU".into()
}

fn default_monitor() -> BTreeMap<String, f64> {
    BTreeMap::from([("AUC".to_owned(), 1.0)])
}

/// FuxiCTR's `monitor_mode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MonitorMode {
    #[default]
    Max,
    Min,
}

impl ModelConfig {
    /// The monitored figure of one validation pass: Σ weight × metric, each metric the mean
    /// over labels.
    pub fn monitored(&self, auc: &[f64], logloss: &[f64]) -> f64 {
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        self.monitor
            .iter()
            .map(|(name, w)| {
                let metric = if name.eq_ignore_ascii_case("auc") {
                    mean(auc)
                } else {
                    mean(logloss)
                };
                w * metric
            })
            .sum()
    }

    /// Whether `now` is better than `best` in the monitor's direction.
    pub fn improves(&self, now: f64, best: f64) -> bool {
        match self.monitor_mode {
            MonitorMode::Max => now > best,
            MonitorMode::Min => now < best,
        }
    }
}

/// One regularization term: `lambda / p · Σ |w|ᵖ` with p 1 or 2.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Penalty {
    pub p: u8,
    pub lambda: f64,
}

impl ModelConfig {
    pub fn new(model: ModelKind, model_id: &str) -> ModelConfig {
        ModelConfig {
            model,
            model_id: model_id.to_owned(),
            embedding_dim: default_embedding_dim(),
            hidden_units: default_hidden(),
            dropout: 0.0,
            batch_size: default_batch(),
            epochs: default_epochs(),
            learning_rate: default_lr(),
            optimizer: default_optimizer(),
            seed: default_seed(),
            num_cross_layers: default_cross(),
            num_experts: default_experts(),
            expert_hidden_units: default_expert_hidden(),
            gate_hidden_units: default_gate_hidden(),
            tower_hidden_units: default_tower_hidden(),
            early_stop_patience: default_patience(),
            inference_batch_size: default_infer_batch(),
            model_structure: DcnStructure::default(),
            stacked_hidden_units: Vec::new(),
            use_low_rank_mixture: false,
            low_rank: default_low_rank(),
            cin_hidden_units: default_cin(),
            attention_layers: default_attention_layers(),
            num_heads: 1,
            attention_dim: default_attention_dim(),
            use_residual: true,
            use_scale: false,
            use_wide: false,
            reduction_ratio: default_reduction(),
            bilinear_type: BilinearType::default(),
            mlp1_hidden_units: default_mlp(),
            mlp2_hidden_units: default_mlp(),
            mlp1_dropout: 0.0,
            mlp2_dropout: 0.0,
            use_fs: true,
            fs_hidden_units: default_fs_hidden(),
            bottom_hidden_units: default_mlp(),
            num_layers: 1,
            num_shared_experts: 1,
            num_specific_experts: 1,
            embedding_regularizer: Vec::new(),
            net_regularizer: Vec::new(),
            batch_norm: false,
            mlp1_batch_norm: false,
            mlp2_batch_norm: false,
            monitor: default_monitor(),
            monitor_mode: MonitorMode::default(),
            din_target_field: Vec::new(),
            din_sequence_field: Vec::new(),
            attention_hidden_units: default_attention_hidden(),
            attention_hidden_activations: default_attention_activation(),
            attention_output_activation: None,
            attention_dropout: 0.0,
            din_use_softmax: false,
            dnn_activations: default_dnn_activation(),
        }
    }

    /// DIN's attention units use Dice (batch statistics) rather than ReLU.
    pub fn dice(&self) -> bool {
        self.attention_hidden_activations
            .eq_ignore_ascii_case("dice")
    }

    /// DIN's DNN uses Dice (batch statistics) rather than ReLU.
    pub fn dnn_dice(&self) -> bool {
        self.dnn_activations.eq_ignore_ascii_case("dice")
    }

    /// Checks the values a user can get wrong, naming the key.
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, why: &str| Err(CtrError::Config(format!("{key}: {why}")));
        if self.model != ModelKind::DIN && !self.dnn_activations.eq_ignore_ascii_case("relu") {
            return bad(
                "dnn_activations",
                "Dice is DIN's; the other models use ReLU",
            );
        }
        if self.model_id.is_empty()
            || !self
                .model_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
            || self.model_id.starts_with('.')
        {
            return bad("model_id", "use letters, digits, '_', '-' or '.'");
        }
        if self.embedding_dim == 0 {
            return bad("embedding_dim", "must be at least 1");
        }
        if self.batch_size == 0 || self.inference_batch_size == 0 {
            return bad("batch_size", "must be at least 1");
        }
        if self.epochs == 0 {
            return bad("epochs", "must be at least 1");
        }
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            return bad("learning_rate", "must be a positive number");
        }
        for (key, rate) in [
            ("dropout", self.dropout),
            ("mlp1_dropout", self.mlp1_dropout),
            ("mlp2_dropout", self.mlp2_dropout),
            ("attention_dropout", self.attention_dropout),
        ] {
            if !(0.0..1.0).contains(&rate) {
                return bad(key, "must be in [0, 1)");
            }
        }
        if !self.optimizer.eq_ignore_ascii_case("adam") {
            return bad("optimizer", "only adam is supported");
        }
        if self.model == ModelKind::MMoE
            && (self.num_experts == 0 || self.expert_hidden_units.is_empty())
        {
            return bad(
                "num_experts",
                "MMoE needs at least one expert with hidden units",
            );
        }
        for (key, units) in [
            ("hidden_units", &self.hidden_units),
            ("expert_hidden_units", &self.expert_hidden_units),
            ("gate_hidden_units", &self.gate_hidden_units),
            ("tower_hidden_units", &self.tower_hidden_units),
            ("stacked_hidden_units", &self.stacked_hidden_units),
            ("cin_hidden_units", &self.cin_hidden_units),
            ("mlp1_hidden_units", &self.mlp1_hidden_units),
            ("mlp2_hidden_units", &self.mlp2_hidden_units),
            ("fs_hidden_units", &self.fs_hidden_units),
            ("bottom_hidden_units", &self.bottom_hidden_units),
            ("attention_hidden_units", &self.attention_hidden_units),
        ] {
            if units.contains(&0) {
                return bad(key, "layer sizes must be at least 1");
            }
        }
        for (key, terms) in [
            ("embedding_regularizer", &self.embedding_regularizer),
            ("net_regularizer", &self.net_regularizer),
        ] {
            if terms
                .iter()
                .any(|t| !(matches!(t.p, 1 | 2) && t.lambda >= 0.0 && t.lambda.is_finite()))
            {
                return bad(key, "each term needs p 1 or 2 and a lambda of 0 or more");
            }
        }
        if self.monitor.is_empty()
            || self.monitor.iter().any(|(name, w)| {
                !(name.eq_ignore_ascii_case("auc") || name.eq_ignore_ascii_case("logloss"))
                    || !w.is_finite()
            })
        {
            return bad(
                "monitor",
                "weigh AUC and/or logloss, e.g. {AUC: 1} or {AUC: 1, logloss: -1}",
            );
        }
        self.validate_model_keys()
    }

    /// The keys of one model, with the rule FuxiCTR's model would enforce (or crash on).
    fn validate_model_keys(&self) -> Result<()> {
        let bad = |key: &str, why: &str| Err(CtrError::Config(format!("{key}: {why}")));
        match self.model {
            ModelKind::DCN => {
                if matches!(
                    self.model_structure,
                    DcnStructure::Stacked | DcnStructure::StackedParallel
                ) && self.stacked_hidden_units.is_empty()
                {
                    return bad(
                        "stacked_hidden_units",
                        "a stacked DCN needs at least one layer",
                    );
                }
                if self.use_low_rank_mixture && (self.low_rank == 0 || self.num_experts == 0) {
                    return bad(
                        "low_rank",
                        "a low-rank mixture needs low_rank and num_experts of at least 1",
                    );
                }
            }
            ModelKind::XDeepFM if self.cin_hidden_units.is_empty() => {
                return bad("cin_hidden_units", "xDeepFM needs at least one CIN layer");
            }
            ModelKind::AutoInt => {
                if self.attention_layers == 0 {
                    return bad("attention_layers", "must be at least 1");
                }
                if self.num_heads == 0 || !self.attention_dim.is_multiple_of(self.num_heads) {
                    return bad("attention_dim", "must be a positive multiple of num_heads");
                }
            }
            ModelKind::FiBiNET if self.reduction_ratio == 0 => {
                return bad("reduction_ratio", "must be at least 1");
            }
            ModelKind::FinalMLP => {
                for (key, units) in [
                    ("mlp1_hidden_units", &self.mlp1_hidden_units),
                    ("mlp2_hidden_units", &self.mlp2_hidden_units),
                ] {
                    let last = units.last().copied().unwrap_or(0);
                    if last == 0 || self.num_heads == 0 || !last.is_multiple_of(self.num_heads) {
                        return bad(
                            key,
                            "FinalMLP needs a last layer whose size is a multiple of num_heads",
                        );
                    }
                }
            }
            ModelKind::DIN => {
                if self.din_target_field.is_empty()
                    || self.din_target_field.len() != self.din_sequence_field.len()
                {
                    return bad(
                        "din_target_field",
                        "DIN needs target fields and as many sequence fields (din_sequence_field)",
                    );
                }
                for (target, sequence) in self.din_target_field.iter().zip(&self.din_sequence_field)
                {
                    if target.names().is_empty() || target.names().len() != sequence.names().len() {
                        return bad(
                            "din_target_field",
                            &format!(
                                "target {target} and sequence {sequence} must name as many fields (one embedding each, attended together)"
                            ),
                        );
                    }
                }
                if !(self.dice()
                    || self
                        .attention_hidden_activations
                        .eq_ignore_ascii_case("relu"))
                {
                    return bad("attention_hidden_activations", "must be Dice or ReLU");
                }
                if !(self.dnn_dice() || self.dnn_activations.eq_ignore_ascii_case("relu")) {
                    return bad("dnn_activations", "must be Dice or ReLU");
                }
                if self
                    .attention_output_activation
                    .as_ref()
                    .is_some_and(|a| !a.eq_ignore_ascii_case("sigmoid"))
                {
                    return bad("attention_output_activation", "must be none or sigmoid");
                }
            }
            ModelKind::ShareBottom if self.bottom_hidden_units.is_empty() => {
                return bad(
                    "bottom_hidden_units",
                    "ShareBottom needs at least one layer",
                );
            }
            ModelKind::PLE => {
                if self.expert_hidden_units.is_empty() {
                    return bad("expert_hidden_units", "PLE's experts need hidden units");
                }
                if self.num_layers == 0
                    || self.num_shared_experts == 0
                    || self.num_specific_experts == 0
                {
                    return bad(
                        "num_layers",
                        "PLE needs at least one layer, one shared and one task-specific expert",
                    );
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// What the model sees of the data: vocabulary sizes (categorical fields, in order), the
/// number of numeric fields and of tasks (labels).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InputShape {
    pub vocab_sizes: Vec<usize>,
    pub num_numeric: usize,
    pub num_tasks: usize,
    /// The sequence fields, in order, after the categorical ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sequences: Vec<SequenceShape>,
    /// Every field's name in the model's order (numeric, categorical, sequence); what DIN's
    /// fields are found by.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// Per categorical field, the categorical field whose embedding rows it uses
    /// (`share_embedding`); empty when no field shares.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub categorical_shares: Vec<Option<usize>>,
    /// Each field's embedding width in the model's order (FuxiCTR's per-feature
    /// `embedding_dim`; a sharing field has its owner's); empty when every field has the
    /// model's `embedding_dim`. Only the models that flatten their fields' embeddings into one
    /// vector (DNN, DCNv2) take widths that differ.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub embedding_dims: Vec<usize>,
}

/// One sequence field as the model sees it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SequenceShape {
    pub vocab_size: usize,
    pub max_len: usize,
    pub pooling: Pooling,
    /// The categorical field whose embedding rows it shares (`share_embedding`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shares: Option<usize>,
}

impl SequenceShape {
    /// A fitted processor's sequence fields, as a model sees them.
    pub fn of(processor: &FeatureProcessor) -> Vec<SequenceShape> {
        let spec = &processor.spec;
        spec.sequence
            .iter()
            .zip(&processor.sequence_vocabularies)
            .map(|(q, v)| SequenceShape {
                vocab_size: v.vocab_size(),
                max_len: q.max_len,
                pooling: q.pooling,
                shares: spec.shared_field(q),
            })
            .collect()
    }
}

impl InputShape {
    pub fn num_fields(&self) -> usize {
        self.vocab_sizes.len() + self.num_numeric + self.sequences.len()
    }

    /// Whether the fields' embeddings differ in width.
    pub fn mixed_widths(&self) -> bool {
        !self.embedding_dims.is_empty()
    }

    /// The width of the fields' embeddings side by side.
    pub fn flat_width(&self, dim: usize) -> usize {
        if self.mixed_widths() {
            self.embedding_dims.iter().sum()
        } else {
            self.num_fields() * dim
        }
    }

    /// With mixed widths: where each categorical field's rows start in the one embedding
    /// vector (in values, a row being its field's width long), each sequence field's, and the
    /// vector's length.
    fn value_offsets(&self) -> (Vec<usize>, Vec<usize>, usize) {
        let c = self.vocab_sizes.len();
        let dims = &self.embedding_dims[self.num_numeric..];
        let mut at = 0;
        let mut categorical: Vec<usize> = (0..c)
            .map(|i| {
                let o = at;
                if self.categorical_owner(i).is_none() {
                    at += self.vocab_sizes[i] * dims[i];
                }
                o
            })
            .collect();
        for i in 0..c {
            if let Some(o) = self.categorical_owner(i) {
                categorical[i] = categorical[o];
            }
        }
        let sequences = (self.sequences.iter().enumerate())
            .map(|(q, s)| match s.shares {
                Some(o) => categorical.get(o).copied().unwrap_or(0),
                None => {
                    let o = at;
                    at += s.vocab_size * dims[c + q];
                    o
                }
            })
            .collect();
        (categorical, sequences, at)
    }

    /// Checks `embedding_dims` against the fields: one width per field, each at least 1, and
    /// a sharing field as wide as the field it shares.
    pub fn check_widths(&self) -> Result<()> {
        if !self.mixed_widths() {
            return Ok(());
        }
        let (n, c) = (self.num_numeric, self.vocab_sizes.len());
        if self.embedding_dims.len() != self.num_fields() || self.embedding_dims.contains(&0) {
            return Err(CtrError::Config(format!(
                "embedding widths: {} given for {} fields, each at least 1",
                self.embedding_dims.len(),
                self.num_fields()
            )));
        }
        let name = |f: usize| self.names.get(f).cloned().unwrap_or_else(|| f.to_string());
        let owners = (0..c)
            .filter_map(|i| Some((n + i, n + self.categorical_owner(i)?)))
            .chain(
                (self.sequences.iter().enumerate())
                    .filter_map(|(q, s)| Some((n + c + q, n + s.shares?))),
            );
        for (f, o) in owners {
            if self.embedding_dims[f] != self.embedding_dims[o] {
                return Err(CtrError::Config(format!(
                    "embedding_dim of {}: {} shares the embedding of {}, {} wide",
                    name(f),
                    self.embedding_dims[f],
                    name(o),
                    self.embedding_dims[o]
                )));
            }
        }
        Ok(())
    }

    /// `categorical_shares` for a feature spec: empty when no categorical field shares.
    pub fn categorical_shares_of(spec: &FeatureSpec) -> Vec<Option<usize>> {
        let shares: Vec<Option<usize>> = (0..spec.categorical.len())
            .map(|i| spec.categorical_owner(i))
            .collect();
        if shares.iter().all(Option::is_none) {
            Vec::new()
        } else {
            shares
        }
    }

    /// `embedding_dims` for a feature spec: each field's own width (FuxiCTR's per-feature
    /// `embedding_dim`), the model's where it gives none; empty when every field has the
    /// model's.
    pub fn embedding_dims_of(spec: &FeatureSpec, dim: usize) -> Vec<usize> {
        let dims: Vec<usize> = (spec.numeric.iter())
            .chain(&spec.categorical)
            .chain(spec.sequence.iter().map(|q| &q.name))
            .map(|name| {
                spec.embedding_dims
                    .get(name)
                    .copied()
                    .flatten()
                    .unwrap_or(dim)
            })
            .collect();
        if dims.iter().all(|d| *d == dim) {
            Vec::new()
        } else {
            dims
        }
    }

    /// The categorical field whose rows field `i` uses, if another's.
    fn categorical_owner(&self, i: usize) -> Option<usize> {
        self.categorical_shares
            .get(i)
            .copied()
            .flatten()
            .filter(|o| *o < self.vocab_sizes.len())
    }

    /// Rows of the categorical fields that own theirs.
    fn categorical_rows(&self) -> usize {
        (self.vocab_sizes.iter().enumerate())
            .filter(|(i, _)| self.categorical_owner(*i).is_none())
            .map(|(_, v)| v)
            .sum()
    }

    /// Rows in the shared embedding table: every categorical and sequence vocabulary, a
    /// shared one once.
    fn table_rows(&self) -> usize {
        self.categorical_rows()
            + self
                .sequences
                .iter()
                .filter(|q| q.shares.is_none())
                .map(|q| q.vocab_size)
                .sum::<usize>()
    }

    fn sequence_width(&self) -> usize {
        self.sequences.iter().map(|q| q.max_len).sum()
    }

    /// Where each categorical field starts in the shared embedding table (a sharing field
    /// where the field it shares starts).
    pub fn offsets(&self) -> Vec<i64> {
        let mut acc = 0i64;
        let mut offsets: Vec<i64> = (self.vocab_sizes.iter().enumerate())
            .map(|(i, v)| {
                let o = acc;
                if self.categorical_owner(i).is_none() {
                    acc += *v as i64;
                }
                o
            })
            .collect();
        for i in 0..offsets.len() {
            if let Some(o) = self.categorical_owner(i) {
                offsets[i] = offsets[o];
            }
        }
        offsets
    }
}

/// One batch on a device: `[B, C]` global embedding indices, `[B, N]` numerics, and the
/// sequence fields' `[B, Σ max_len]` global indices with their mask (1 for a token, 0 for
/// padding).
///
/// With mixed embedding widths ([`InputShape::mixed_widths`]) the indices are of single values
/// in the one embedding vector, each field's row spelled out: `[B, Σ width]` for the
/// categorical fields, `[B, Σ max_len · width]` for the sequences (the mask stays per token),
/// and each numeric value repeated its field's width times, `[B, Σ width]`.
pub struct Inputs {
    pub categorical: Option<Tensor<2, Int>>,
    pub numeric: Option<Tensor<2>>,
    pub sequence: Option<(Tensor<2, Int>, Tensor<2>)>,
    /// Each sequence field's length and pooling, in order.
    pub sequence_fields: Vec<(usize, Pooling)>,
    pub rows: usize,
}

impl Inputs {
    /// Fails (instead of letting the backend panic) when an index is outside its field's
    /// vocabulary, i.e. the data was encoded by another feature processor than the model's.
    pub fn new(batch: &EncodedBatch, shape: &InputShape, device: &Device) -> Result<Inputs> {
        let c = shape.vocab_sizes.len();
        let offsets = shape.offsets();
        if batch.categorical.len() != batch.rows * c
            || batch.numeric.len() != batch.rows * shape.num_numeric
        {
            return Err(CtrError::Data(format!(
                "batch has {} categorical and {} numeric values for {} rows; the model expects \
                 {c} and {} per row",
                batch.categorical.len(),
                batch.numeric.len(),
                batch.rows,
                shape.num_numeric
            )));
        }
        for (i, v) in batch.categorical.iter().enumerate() {
            check_index("categorical", i % c, *v, shape.vocab_sizes[i % c])?;
        }
        let w = shape.sequence_width();
        if batch.sequence.len() != batch.rows * w {
            return Err(CtrError::Data(format!(
                "batch has {} sequence tokens for {} rows; the model expects {w} per row",
                batch.sequence.len(),
                batch.rows
            )));
        }
        if shape.mixed_widths() {
            return Inputs::spelled_out(batch, shape, device);
        }
        let idx: Vec<i64> = (batch.categorical.iter().enumerate())
            .map(|(i, v)| offsets[i % c] + *v as i64)
            .collect();
        let categorical = (c > 0)
            .then(|| Tensor::<2, Int>::from_data(TensorData::new(idx, [batch.rows, c]), device));
        let numeric = (shape.num_numeric > 0).then(|| {
            Tensor::<2>::from_data(
                TensorData::new(batch.numeric.clone(), [batch.rows, shape.num_numeric]),
                device,
            )
        });
        let sequence = (w > 0)
            .then(|| -> Result<_> {
                let offsets = shape.offsets();
                // Field and table offset of each position of a row: a shared sequence uses its
                // categorical field's rows, the others rows of their own after the
                // categorical fields'.
                let mut at = Vec::with_capacity(w);
                let mut own = shape.categorical_rows();
                for (f, q) in shape.sequences.iter().enumerate() {
                    let offset = match q.shares {
                        Some(c) => offsets.get(c).map_or(0, |o| *o as usize),
                        None => {
                            own += q.vocab_size;
                            own - q.vocab_size
                        }
                    };
                    at.extend(std::iter::repeat_n((f, offset, q.vocab_size), q.max_len));
                }
                let mut idx = Vec::with_capacity(batch.sequence.len());
                let mut mask = Vec::with_capacity(batch.sequence.len());
                for (i, v) in batch.sequence.iter().enumerate() {
                    let (field, offset, vocab) = at[i % w];
                    check_index("sequence", field, *v, vocab)?;
                    idx.push((offset + *v as usize) as i64);
                    mask.push(if *v == 0 { 0.0f32 } else { 1.0 });
                }
                Ok((
                    Tensor::<2, Int>::from_data(TensorData::new(idx, [batch.rows, w]), device),
                    Tensor::<2>::from_data(TensorData::new(mask, [batch.rows, w]), device),
                ))
            })
            .transpose()?;
        Ok(Inputs {
            categorical,
            numeric,
            sequence,
            sequence_fields: shape
                .sequences
                .iter()
                .map(|q| (q.max_len, q.pooling))
                .collect(),
            rows: batch.rows,
        })
    }
}

impl Inputs {
    /// The inputs with mixed embedding widths (see [`Inputs`]); the batch's sizes are checked
    /// by the caller, its sequences' indices here.
    fn spelled_out(batch: &EncodedBatch, shape: &InputShape, device: &Device) -> Result<Inputs> {
        shape.check_widths()?;
        let (n, c, rows) = (shape.num_numeric, shape.vocab_sizes.len(), batch.rows);
        let dims = &shape.embedding_dims;
        let (cat_at, seq_at, _) = shape.value_offsets();
        let num_width: usize = dims[..n].iter().sum();
        let cat_width: usize = dims[n..n + c].iter().sum();
        let mut numeric = Vec::with_capacity(rows * num_width);
        let mut categorical = Vec::with_capacity(rows * cat_width);
        for r in 0..rows {
            for (j, d) in dims[..n].iter().enumerate() {
                numeric.extend(std::iter::repeat_n(batch.numeric[r * n + j], *d));
            }
            for (j, d) in dims[n..n + c].iter().enumerate() {
                let start = (cat_at[j] + batch.categorical[r * c + j] as usize * d) as i64;
                categorical.extend(start..start + *d as i64);
            }
        }
        let w = shape.sequence_width();
        let seq_width: usize = (shape.sequences.iter().enumerate())
            .map(|(q, s)| s.max_len * dims[n + c + q])
            .sum();
        let mut tokens = Vec::with_capacity(rows * seq_width);
        let mut mask = Vec::with_capacity(rows * w);
        for r in 0..rows {
            let mut at = r * w;
            for (q, s) in shape.sequences.iter().enumerate() {
                let d = dims[n + c + q];
                for v in &batch.sequence[at..at + s.max_len] {
                    check_index("sequence", q, *v, s.vocab_size)?;
                    let start = (seq_at[q] + *v as usize * d) as i64;
                    tokens.extend(start..start + d as i64);
                    mask.push(if *v == 0 { 0.0f32 } else { 1.0 });
                }
                at += s.max_len;
            }
        }
        Ok(Inputs {
            categorical: (c > 0).then(|| {
                Tensor::<2, Int>::from_data(TensorData::new(categorical, [rows, cat_width]), device)
            }),
            numeric: (n > 0).then(|| {
                Tensor::<2>::from_data(TensorData::new(numeric, [rows, num_width]), device)
            }),
            sequence: (w > 0).then(|| {
                (
                    Tensor::<2, Int>::from_data(TensorData::new(tokens, [rows, seq_width]), device),
                    Tensor::<2>::from_data(TensorData::new(mask, [rows, w]), device),
                )
            }),
            sequence_fields: shape
                .sequences
                .iter()
                .map(|q| (q.max_len, q.pooling))
                .collect(),
            rows,
        })
    }
}

/// Fails (instead of letting the backend panic) when an index is outside its field's
/// vocabulary, i.e. the data was encoded by another feature processor than the model's.
fn check_index(kind: &str, field: usize, v: i32, vocab: usize) -> Result<()> {
    if v < 0 || v as usize >= vocab {
        return Err(CtrError::Data(format!(
            "{kind} field {field} has index {v} outside its vocabulary of {vocab}; was the data \
             encoded with this model's feature processor?"
        )));
    }
    Ok(())
}

/// Labels `[B, T]` on a device.
pub fn label_tensor(batch: &EncodedBatch, num_tasks: usize, device: &Device) -> Tensor<2> {
    let l = batch.label_width();
    let labels: Vec<f32> = (0..batch.rows)
        .flat_map(|r| (0..num_tasks).map(move |t| (r, t)))
        .map(|(r, t)| batch.labels[r * l + t])
        .collect();
    Tensor::<2>::from_data(TensorData::new(labels, [batch.rows, num_tasks]), device)
}

/// Parameters start as zeros (cheap, never random): `CtrModel::new` draws the real weights in
/// one place (`SeededInit`), and a model built to load saved weights needs none.
const PLACEHOLDER: Initializer = Initializer::Zeros;

fn linear(d_in: usize, d_out: usize, bias: bool, device: &Device) -> Linear {
    LinearConfig::new(d_in, d_out)
        .with_bias(bias)
        .with_initializer(PLACEHOLDER)
        .init(device)
}

/// Field embeddings `[B, F, dim]`: numeric fields first, then categorical (feature_map order).
#[derive(Module, Debug)]
pub struct FeatureEmbedding {
    table: Option<Embedding>,
    numeric: Option<Param<Tensor<2>>>,
    /// With mixed widths ([`InputShape::mixed_widths`]): each sequence field's width; `None`
    /// with one width.
    #[module(skip)]
    mixed: Option<Vec<usize>>,
}

/// Each sequence field's token embeddings `[B, Σ L, d]` pooled over its real tokens (FuxiCTR's
/// masked average or sum pooling): `[B, S, d]`, one row per field.
fn pool_sequences(tokens: Tensor<3>, mask: &Tensor<2>, fields: &[(usize, Pooling)]) -> Tensor<3> {
    let [b, w, _] = tokens.dims();
    let tokens = tokens * mask.clone().reshape([b, w, 1]);
    let mut start = 0;
    let mut pooled = Vec::with_capacity(fields.len());
    for &(len, pooling) in fields {
        let sum = tokens.clone().narrow(1, start, len).sum_dim(1); // [B, 1, d]
        pooled.push(match pooling {
            Pooling::Sum => sum,
            Pooling::Mean => {
                let count = mask.clone().narrow(1, start, len).sum_dim(1).clamp_min(1.0);
                sum / count.reshape([b, 1, 1])
            }
        });
        start += len;
    }
    Tensor::cat(pooled, 1)
}

impl FeatureEmbedding {
    fn new(shape: &InputShape, dim: usize, device: &Device) -> FeatureEmbedding {
        if shape.mixed_widths() {
            // Every table in one vector of single values (FuxiCTR's tables, each its own
            // width, row after row), and the numeric fields' weights side by side.
            let (_, _, values) = shape.value_offsets();
            let numeric: usize = shape.embedding_dims[..shape.num_numeric].iter().sum();
            let sequences = shape.num_numeric + shape.vocab_sizes.len();
            return FeatureEmbedding {
                table: (values > 0).then(|| {
                    EmbeddingConfig::new(values, 1)
                        .with_initializer(PLACEHOLDER)
                        .init(device)
                }),
                numeric: (numeric > 0).then(|| PLACEHOLDER.init([1, numeric], device)),
                mixed: Some(shape.embedding_dims[sequences..].to_vec()),
            };
        }
        let total = shape.table_rows();
        FeatureEmbedding {
            table: (total > 0).then(|| {
                EmbeddingConfig::new(total, dim)
                    .with_initializer(PLACEHOLDER)
                    .init(device)
            }),
            numeric: (shape.num_numeric > 0)
                .then(|| PLACEHOLDER.init([shape.num_numeric, dim], device)),
            mixed: None,
        }
    }

    fn forward(&self, x: &Inputs) -> Tensor<3> {
        self.forward_with_tokens(x).0
    }

    /// The fields' embeddings side by side, `[B, Σ width]` (FuxiCTR's `flatten_emb=True`): with
    /// one width, the rows of [`FeatureEmbedding::forward`] flattened; with mixed widths (see
    /// [`Inputs`]), each field's own.
    fn forward_flat(&self, x: &Inputs) -> Tensor<2> {
        let Some(dims) = &self.mixed else {
            return flatten(self.forward(x));
        };
        let b = x.rows;
        let mut parts = Vec::with_capacity(3);
        if let (Some(w), Some(num)) = (&self.numeric, &x.numeric) {
            parts.push(num.clone() * w.val());
        }
        if let (Some(table), Some(cat)) = (&self.table, &x.categorical) {
            let width = cat.dims()[1];
            parts.push(table.forward(cat.clone()).reshape([b, width]));
        }
        if let (Some(table), Some((seq, mask))) = (&self.table, &x.sequence) {
            let width = seq.dims()[1];
            let values = table.forward(seq.clone()).reshape([b, width]);
            let (mut at, mut token) = (0, 0);
            for ((len, pooling), d) in x.sequence_fields.iter().zip(dims) {
                let tokens = values.clone().narrow(1, at, len * d).reshape([b, *len, *d]);
                let m = mask.clone().narrow(1, token, *len);
                parts.push(pool_sequences(tokens, &m, &[(*len, *pooling)]).reshape([b, *d]));
                at += len * d;
                token += len;
            }
        }
        Tensor::cat(parts, 1)
    }

    /// The field embeddings, and the sequence fields' token embeddings `[B, Σ L, d]` before
    /// pooling (what DIN attends over).
    fn forward_with_tokens(&self, x: &Inputs) -> (Tensor<3>, Option<Tensor<3>>) {
        let mut parts = Vec::with_capacity(3);
        let mut tokens = None;
        if let (Some(w), Some(num)) = (&self.numeric, &x.numeric) {
            let [n, d] = w.val().dims();
            // x[B, N, 1] * w[1, N, d]
            parts.push(num.clone().reshape([x.rows, n, 1]) * w.val().reshape([1, n, d]));
        }
        if let (Some(table), Some(cat)) = (&self.table, &x.categorical) {
            parts.push(table.forward(cat.clone()));
        }
        if let (Some(table), Some((seq, mask))) = (&self.table, &x.sequence) {
            let t = table.forward(seq.clone());
            parts.push(pool_sequences(t.clone(), mask, &x.sequence_fields));
            tokens = Some(t);
        }
        (Tensor::cat(parts, 1), tokens)
    }
}

/// A stack of `Linear → (BatchNorm) → ReLU → Dropout` (FuxiCTR's `MLP_Block`), optionally
/// followed by a plain output layer.
#[derive(Module, Debug)]
pub struct Mlp {
    layers: Vec<Linear>,
    /// One per hidden layer with `batch_norm`, none without.
    norms: Vec<BatchNorm>,
    dropout: Dropout,
    output: Option<Linear>,
}

impl Mlp {
    fn new(
        d_in: usize,
        hidden: &[usize],
        output: Option<usize>,
        dropout: f64,
        batch_norm: bool,
        device: &Device,
    ) -> Mlp {
        let mut layers = Vec::with_capacity(hidden.len());
        let mut d = d_in;
        for &h in hidden {
            layers.push(linear(d, h, true, device));
            d = h;
        }
        Mlp {
            norms: if batch_norm {
                // PyTorch's BatchNorm1d: epsilon 1e-5, momentum 0.1.
                hidden
                    .iter()
                    .map(|&h| BatchNormConfig::new(h).init(device))
                    .collect()
            } else {
                Vec::new()
            },
            layers,
            dropout: DropoutConfig::new(dropout).init(),
            output: output.map(|o| linear(d, o, true, device)),
        }
    }

    fn out_dim(&self, d_in: usize) -> usize {
        match (&self.output, self.layers.last()) {
            (Some(o), _) => o.weight.val().dims()[1],
            (None, Some(l)) => l.weight.val().dims()[1],
            (None, None) => d_in,
        }
    }

    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.forward_with(x, &[])
    }

    /// With `dice[i]` as hidden layer `i`'s activation where given (FuxiCTR's `MLP_Block` with
    /// a list of activations: `Linear → BatchNorm → Dice → Dropout`), ReLU elsewhere.
    fn forward_with(&self, mut x: Tensor<2>, dice: &[Dice]) -> Tensor<2> {
        for (i, l) in self.layers.iter().enumerate() {
            x = l.forward(x);
            if let Some(norm) = self.norms.get(i) {
                x = norm.forward(x);
            }
            x = match dice.get(i) {
                Some(d) => d.forward(x),
                None => relu(x),
            };
            x = self.dropout.forward(x);
        }
        match &self.output {
            Some(o) => o.forward(x),
            None => x,
        }
    }
}

/// 2 · the weight's size: one row through a product with it.
fn weight_flops(dims: &[usize]) -> f64 {
    2.0 * dims.iter().product::<usize>() as f64
}

/// 2 · inputs · outputs: one row through a dense layer.
fn linear_flops(l: &Linear) -> f64 {
    weight_flops(&l.weight.val().dims())
}

fn mlps_flops<'a>(mlps: impl IntoIterator<Item = &'a Mlp>) -> f64 {
    mlps.into_iter().map(Mlp::flops).sum()
}

impl Mlp {
    fn flops(&self) -> f64 {
        self.layers
            .iter()
            .chain(&self.output)
            .map(linear_flops)
            .sum()
    }
}

/// First-order terms: one weight per categorical token, one per numeric field, and a bias.
#[derive(Module, Debug)]
pub struct FirstOrder {
    table: Option<Embedding>,
    numeric: Option<Linear>,
    bias: Param<Tensor<1>>,
}

impl FirstOrder {
    fn flops(&self) -> f64 {
        self.numeric.as_ref().map_or(0.0, linear_flops)
    }

    fn new(shape: &InputShape, device: &Device) -> FirstOrder {
        let total = shape.table_rows();
        FirstOrder {
            table: (total > 0).then(|| {
                EmbeddingConfig::new(total, 1)
                    .with_initializer(PLACEHOLDER)
                    .init(device)
            }),
            numeric: (shape.num_numeric > 0).then(|| linear(shape.num_numeric, 1, false, device)),
            bias: Param::from_tensor(Tensor::zeros([1], device)),
        }
    }

    fn forward(&self, x: &Inputs) -> Tensor<2> {
        let mut out = self.bias.val().reshape([1, 1]).repeat_dim(0, x.rows);
        if let (Some(t), Some(cat)) = (&self.table, &x.categorical) {
            let c = cat.dims()[1];
            out = out + t.forward(cat.clone()).reshape([x.rows, c]).sum_dim(1);
        }
        if let (Some(l), Some(num)) = (&self.numeric, &x.numeric) {
            out = out + l.forward(num.clone());
        }
        if let (Some(t), Some((seq, mask))) = (&self.table, &x.sequence) {
            // Each sequence field's token weights pooled like its embeddings, then summed.
            let pooled = pool_sequences(t.forward(seq.clone()), mask, &x.sequence_fields);
            let s = pooled.dims()[1];
            out = out + pooled.reshape([x.rows, s]).sum_dim(1);
        }
        out
    }
}

/// FM's pairwise term: ½ Σ_d ((Σ_f e_fd)² − Σ_f e_fd²), `[B, 1]`.
fn fm_interaction(e: Tensor<3>) -> Tensor<2> {
    let [b, _, d] = e.dims();
    let sum = e.clone().sum_dim(1).reshape([b, d]);
    let sum_sq = (e.clone() * e).sum_dim(1).reshape([b, d]);
    ((sum.clone() * sum) - sum_sq).sum_dim(1).mul_scalar(0.5)
}

/// `[B, F, d]` → `[B, F·d]`.
fn flatten(e: Tensor<3>) -> Tensor<2> {
    let [b, f, d] = e.dims();
    e.reshape([b, f * d])
}

/// The field pairs i < j, in FuxiCTR's order (`triu_indices(F, F, offset=1)`).
fn pairs(f: usize) -> (Vec<i64>, Vec<i64>) {
    let mut left = Vec::with_capacity(f * f.saturating_sub(1) / 2);
    let mut right = Vec::with_capacity(left.capacity());
    for i in 0..f {
        for j in i + 1..f {
            left.push(i as i64);
            right.push(j as i64);
        }
    }
    (left, right)
}

fn index(values: Vec<i64>, device: &Device) -> Tensor<1, Int> {
    let n = values.len();
    Tensor::<1, Int>::from_data(TensorData::new(values, [n]), device)
}

/// FiBiNET's bilinear interaction `(eᵢ Wᵢⱼ) ⊙ eⱼ` for the pairs i < j, `[B, P, d]`, with `w`
/// `[1, d, d]` (field_all), `[F, d, d]` (field_each) or `[P, d, d]` (field_interaction).
fn bilinear(e: Tensor<3>, w: &Tensor<3>, kind: BilinearType) -> Tensor<3> {
    let [b, f, d] = e.dims();
    let (left, right) = pairs(f);
    let device = e.device();
    let right = e.clone().select(1, index(right, &device));
    let left = match kind {
        // One matrix per pair: [P, B, d] · [P, d, d].
        BilinearType::FieldInteraction => {
            let l = e.select(1, index(left, &device)).swap_dims(0, 1);
            l.matmul(w.clone()).swap_dims(0, 1)
        }
        // One matrix per field, then the pairs' left sides.
        BilinearType::FieldEach => {
            let h = e.swap_dims(0, 1).matmul(w.clone()).swap_dims(0, 1); // [B, F, d]
            h.select(1, index(left, &device))
        }
        BilinearType::FieldAll => {
            let h = e
                .reshape([b * f, d])
                .matmul(w.clone().reshape([d, d]))
                .reshape([b, f, d]);
            h.select(1, index(left, &device))
        }
    };
    left * right
}

impl CgcLayer {
    /// `inputs`: one per task and the shared one last; the same shape out.
    fn forward(&self, inputs: &[Tensor<2>]) -> Vec<Tensor<2>> {
        let Some(shared_in) = inputs.last() else {
            return Vec::new();
        };
        let shared: Vec<Tensor<2>> = self
            .shared
            .iter()
            .map(|e| e.forward(shared_in.clone()))
            .collect();
        let mix = |experts: Vec<Tensor<2>>, gate: &Mlp, x: Tensor<2>| {
            let g = softmax(gate.forward(x), 1); // [B, n]
            let [b, n] = g.dims();
            let stacked = Tensor::stack::<3>(experts, 1); // [B, n, H]
            (stacked * g.reshape([b, n, 1]))
                .sum_dim(1)
                .squeeze_dim::<2>(1)
        };
        let mut out: Vec<Tensor<2>> = self
            .specific
            .iter()
            .zip(&self.gates)
            .zip(inputs)
            .map(|((experts, gate), x)| {
                let mut all: Vec<Tensor<2>> =
                    experts.iter().map(|e| e.forward(x.clone())).collect();
                all.extend(shared.iter().cloned());
                mix(all, gate, x.clone())
            })
            .collect();
        if let Some(gate) = self.gates.last() {
            out.push(mix(shared, gate, shared_in.clone()));
        }
        out
    }
}

#[derive(Module, Debug)]
pub struct Lr {
    first: FirstOrder,
}

#[derive(Module, Debug)]
pub struct Fm {
    first: FirstOrder,
    embedding: FeatureEmbedding,
}

#[derive(Module, Debug)]
pub struct DeepFm {
    first: FirstOrder,
    embedding: FeatureEmbedding,
    dnn: Mlp,
}

#[derive(Module, Debug)]
pub struct Dcn {
    embedding: FeatureEmbedding,
    /// Full-rank cross layers (empty with a low-rank mixture).
    cross: Vec<Linear>,
    mix: Option<CrossMix>,
    stacked: Option<Mlp>,
    /// The parallel DNN.
    dnn: Option<Mlp>,
    head: Linear,
}

/// DCN v2's mixture of low-rank cross experts (FuxiCTR's `CrossNetMix`): per layer and
/// expert `x0 ⊙ (U tanh(C tanh(Vᵀ x)) + b)`, mixed by a softmax gate on the layer's input.
#[derive(Module, Debug)]
pub struct CrossMix {
    /// Per layer: `[E, D, r]`, `[E, D, r]`, `[E, r, r]`, `[D]`.
    u: Vec<Param<Tensor<3>>>,
    v: Vec<Param<Tensor<3>>>,
    c: Vec<Param<Tensor<3>>>,
    bias: Vec<Param<Tensor<1>>>,
    /// One gate logit per expert, shared by the layers.
    gating: Linear,
}

impl CrossMix {
    fn new(d: usize, layers: usize, rank: usize, experts: usize, device: &Device) -> CrossMix {
        let each = |shape: [usize; 3]| (0..layers).map(move |_| PLACEHOLDER.init(shape, device));
        CrossMix {
            u: each([experts, d, rank]).collect(),
            v: each([experts, d, rank]).collect(),
            c: each([experts, rank, rank]).collect(),
            bias: (0..layers)
                .map(|_| Param::from_tensor(Tensor::zeros([d], device)))
                .collect(),
            gating: linear(d, experts, false, device),
        }
    }

    fn forward(&self, x0: Tensor<2>) -> Tensor<2> {
        let [b, d] = x0.dims();
        let ne = self.gating.weight.val().dims()[1];
        let x0e = x0.clone().reshape([1, b, d]);
        let mut xl = x0;
        for (((u, v), c), bias) in self.u.iter().zip(&self.v).zip(&self.c).zip(&self.bias) {
            let gate = softmax(self.gating.forward(xl.clone()), 1) // [B, E]
                .swap_dims(0, 1)
                .reshape([ne, b, 1]);
            let xe = xl.clone().reshape([1, b, d]).repeat_dim(0, ne); // [E, B, D]
            let vx = tanh(xe.matmul(v.val())); // [E, B, r]
            let vx = tanh(vx.matmul(c.val()));
            let uv = vx.matmul(u.val().swap_dims(1, 2)); // [E, B, D]
            let experts = x0e.clone() * (uv + bias.val().reshape([1, 1, d]));
            xl = (experts * gate).sum_dim(0).reshape([b, d]) + xl;
        }
        xl
    }
}

#[derive(Module, Debug)]
pub struct Mmoe {
    embedding: FeatureEmbedding,
    experts: Vec<Mlp>,
    gates: Vec<Mlp>,
    towers: Vec<Mlp>,
}

#[derive(Module, Debug)]
pub struct Dnn {
    embedding: FeatureEmbedding,
    dnn: Mlp,
}

#[derive(Module, Debug)]
pub struct WideDeep {
    first: FirstOrder,
    embedding: FeatureEmbedding,
    dnn: Mlp,
}

#[derive(Module, Debug)]
pub struct Pnn {
    embedding: FeatureEmbedding,
    dnn: Mlp,
}

/// xDeepFM's compressed interaction network: each layer's maps are 1×1 convolutions of the
/// outer product of the previous maps with the field embeddings, sum-pooled over the
/// embedding dimension.
#[derive(Module, Debug)]
pub struct XDeepFm {
    first: FirstOrder,
    embedding: FeatureEmbedding,
    cin: Vec<Linear>,
    cin_head: Linear,
    dnn: Option<Mlp>,
}

#[derive(Module, Debug)]
pub struct AttentionLayer {
    query: Linear,
    key: Linear,
    value: Linear,
    /// The residual's projection, when the input is narrower or wider than the output.
    residual: Option<Linear>,
    #[module(skip)]
    use_residual: bool,
}

#[derive(Module, Debug)]
pub struct AutoInt {
    embedding: FeatureEmbedding,
    attention: Vec<AttentionLayer>,
    dropout: Dropout,
    head: Linear,
    dnn: Option<Mlp>,
    first: Option<FirstOrder>,
    #[module(skip)]
    heads: usize,
    /// Divide the scores by √(head width).
    #[module(skip)]
    scale: bool,
}

impl AttentionLayer {
    /// `[B, F, d_in]` → `[B, F, A]`: multi-head self-attention over the fields, plus the
    /// residual, through a ReLU (FuxiCTR's `MultiHeadSelfAttention`).
    fn forward(&self, x: Tensor<3>, heads: usize, scale: bool, dropout: &Dropout) -> Tensor<3> {
        let [b, f, _] = x.dims();
        let split = |t: Tensor<3>| {
            let [_, _, a] = t.dims();
            t.reshape([b, f, heads, a / heads]).swap_dims(1, 2) // [B, H, F, a/H]
        };
        let q = split(self.query.forward(x.clone()));
        let k = split(self.key.forward(x.clone()));
        let v = split(self.value.forward(x.clone()));
        let [_, _, _, hd] = q.dims();
        let mut scores = q.matmul(k.swap_dims(2, 3)); // [B, H, F, F]
        if scale {
            scores = scores.div_scalar((hd as f64).sqrt());
        }
        let attention = dropout.forward(softmax(scores, 3));
        let out = attention
            .matmul(v)
            .swap_dims(1, 2)
            .reshape([b, f, heads * hd]);
        let residual = match &self.residual {
            Some(w) => Some(w.forward(x)),
            // Same width: the input itself, when residuals are on.
            None if self.residual_same_width(&out, &x) => Some(x),
            None => None,
        };
        relu(match residual {
            Some(r) => out + r,
            None => out,
        })
    }

    fn residual_same_width(&self, out: &Tensor<3>, x: &Tensor<3>) -> bool {
        self.use_residual && out.dims() == x.dims()
    }
}

#[derive(Module, Debug)]
pub struct FiBiNet {
    first: FirstOrder,
    embedding: FeatureEmbedding,
    squeeze: Linear,
    excite: Linear,
    /// `[1, d, d]`, `[F, d, d]` or `[P, d, d]` by `bilinear_type`; one for the embeddings,
    /// one for their squeeze-excited form.
    bilinear: Param<Tensor<3>>,
    bilinear_se: Param<Tensor<3>>,
    dnn: Mlp,
    #[module(skip)]
    bilinear_type: BilinearType,
}

#[derive(Module, Debug)]
pub struct FinalMlp {
    embedding: FeatureEmbedding,
    mlp1: Mlp,
    mlp2: Mlp,
    /// Feature selection: a learnt context (no context fields) through a gate per branch.
    fs1_bias: Option<Param<Tensor<2>>>,
    fs2_bias: Option<Param<Tensor<2>>>,
    fs1_gate: Option<Mlp>,
    fs2_gate: Option<Mlp>,
    w1: Linear,
    w2: Linear,
    /// `[H, d1/H, d2/H]`: one bilinear form per head.
    w12: Param<Tensor<3>>,
}

/// Dice (DIN's activation): `p·x + α·(1 − p)·x` with `p = sigmoid(x̂)`, `x̂` the input
/// normalised by batch statistics while training and by their running averages after (PyTorch's
/// `BatchNorm1d(affine=False, eps=1e-9, momentum=0.01)`, as FuxiCTR builds it).
#[derive(Module, Debug)]
pub struct Dice {
    alpha: Param<Tensor<1>>,
    running_mean: RunningState<Tensor<1>>,
    running_var: RunningState<Tensor<1>>,
}

impl Dice {
    fn new(units: usize, device: &Device) -> Dice {
        Dice {
            alpha: Param::from_tensor(Tensor::zeros([units], device)),
            running_mean: RunningState::new(Tensor::zeros([units], device)),
            running_var: RunningState::new(Tensor::ones([units], device)),
        }
    }

    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        const EPS: f64 = 1e-9;
        let [n, h] = x.dims();
        let device = x.device();
        let (centred, var) = if device.is_autodiff() {
            let mean = x.clone().mean_dim(0); // [1, H]
            let centred = x.clone() - mean.clone();
            let var = (centred.clone() * centred.clone()).mean_dim(0);
            let stats = DiceBatchStats {
                id: self.alpha.id,
                rows: n,
                mean: mean.clone().detach().reshape([h]),
                var: var.clone().detach().reshape([h]),
            };
            // A row range on one of several threads leaves the running averages to the
            // caller, which updates them once from every range's statistics.
            if let Some(stats) = collect_dice_stats(stats) {
                self.update_running(&stats);
            }
            (centred, var)
        } else {
            (
                x.clone() - self.running_mean.value().to_device(&device).reshape([1, h]),
                self.running_var.value().to_device(&device).reshape([1, h]),
            )
        };
        // The centred input serves both the variance and the normalisation.
        let p = sigmoid(centred * (var + EPS).sqrt().recip());
        // p·x + α·(1 − p)·x, as x·(α + p·(1 − α)): three passes over the batch instead of six
        // (α is one value per unit).
        let alpha = self.alpha.val().reshape([1, h]);
        x * (p * (alpha.clone().neg() + 1.0) + alpha)
    }
}

impl Dice {
    /// One training batch's statistics into the running averages (PyTorch's momentum 0.01; the
    /// running variance is the unbiased one, as PyTorch keeps it).
    fn update_running(&self, stats: &DiceBatchStats) {
        const MOMENTUM: f64 = 0.01;
        let n = stats.rows;
        let device = stats.mean.device();
        let unbiased = stats
            .var
            .clone()
            .mul_scalar(n as f64 / (n.max(2) - 1) as f64);
        let rm = self.running_mean.value_sync().to_device(&device);
        let rv = self.running_var.value_sync().to_device(&device);
        self.running_mean.update(
            (rm.mul_scalar(1.0 - MOMENTUM) + stats.mean.clone().mul_scalar(MOMENTUM)).detach(),
        );
        self.running_var
            .update((rv.mul_scalar(1.0 - MOMENTUM) + unbiased.mul_scalar(MOMENTUM)).detach());
    }
}

/// One Dice layer's statistics over the rows it saw in a training forward pass: the per-unit
/// mean and (biased) variance, detached.
#[derive(Debug, Clone)]
pub(crate) struct DiceBatchStats {
    /// The layer's `alpha`: the same id in every copy of the model.
    id: ParamId,
    rows: usize,
    mean: Tensor<1>,
    var: Tensor<1>,
}

impl DiceBatchStats {
    /// The statistics of all the rows of `parts` together, exactly (Chan et al.'s pairwise
    /// combination: the variance within each part plus that of the parts' means).
    fn combined(parts: &[DiceBatchStats]) -> Option<DiceBatchStats> {
        let first = parts.first()?;
        let rows: usize = parts.iter().map(|p| p.rows).sum();
        let total = rows.max(1) as f64;
        let mean = parts
            .iter()
            .map(|p| p.mean.clone().mul_scalar(p.rows as f64 / total))
            .reduce(|a, b| a + b)?;
        let var = parts
            .iter()
            .map(|p| {
                let gap = p.mean.clone() - mean.clone();
                (p.var.clone() + gap.clone() * gap).mul_scalar(p.rows as f64 / total)
            })
            .reduce(|a, b| a + b)?;
        Some(DiceBatchStats {
            id: first.id,
            rows,
            mean,
            var,
        })
    }
}

std::thread_local! {
    /// Set while a row range of a batch computes on its own thread ([`collecting_dice_stats`]).
    static DICE_STATS: std::cell::RefCell<Option<Vec<DiceBatchStats>>> =
        const { std::cell::RefCell::new(None) };
}

/// Keeps `stats` for the caller of [`collecting_dice_stats`] on this thread, if one is
/// collecting; otherwise hands them back.
fn collect_dice_stats(stats: DiceBatchStats) -> Option<DiceBatchStats> {
    DICE_STATS.with(|cell| match cell.borrow_mut().as_mut() {
        Some(kept) => {
            kept.push(stats);
            None
        }
        None => Some(stats),
    })
}

/// Runs `f` (a training forward pass over one row range) with every Dice layer's batch
/// statistics kept for the caller instead of updating the running averages, which several
/// threads would otherwise update in a racy order. Give them to
/// [`CtrModel::update_dice_running_stats`] once every range is done.
pub(crate) fn collecting_dice_stats<R>(f: impl FnOnce() -> R) -> (R, Vec<DiceBatchStats>) {
    /// Puts back what the thread collected before, also when `f` panics (the range threads
    /// are a pool's, kept from batch to batch).
    struct Restore(Option<Vec<DiceBatchStats>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let outer = self.0.take();
            DICE_STATS.with(|cell| *cell.borrow_mut() = outer);
        }
    }
    let restore = Restore(DICE_STATS.with(|cell| cell.borrow_mut().replace(Vec::new())));
    let result = f();
    let kept = DICE_STATS.with(|cell| cell.borrow_mut().take());
    drop(restore);
    (result, kept.unwrap_or_default())
}

/// DIN's attention unit: an MLP over `[target, token, target − token, target ⊙ token]` giving one
/// weight per token of the sequence, masked, then the weighted sum of the tokens.
#[derive(Module, Debug)]
pub struct AttentionUnit {
    layers: Vec<Linear>,
    /// One per layer with Dice, none with ReLU.
    dice: Vec<Dice>,
    dropout: Dropout,
    output: Linear,
    #[module(skip)]
    sigmoid: bool,
    #[module(skip)]
    softmax: bool,
}

impl AttentionUnit {
    fn new(dim: usize, config: &ModelConfig, device: &Device) -> AttentionUnit {
        let mut layers = Vec::new();
        let mut dice = Vec::new();
        let mut d = 4 * dim;
        for &h in &config.attention_hidden_units {
            layers.push(linear(d, h, true, device));
            if config.dice() {
                dice.push(Dice::new(h, device));
            }
            d = h;
        }
        AttentionUnit {
            layers,
            dice,
            dropout: DropoutConfig::new(config.attention_dropout).init(),
            output: linear(d, 1, true, device),
            sigmoid: config.attention_output_activation.is_some(),
            softmax: config.din_use_softmax,
        }
    }

    /// `target` `[B, 1, d]`, `tokens` `[B, L, d]`, `mask` `[B, L]` → `[B, 1, d]`.
    fn forward(&self, target: Tensor<3>, tokens: Tensor<3>, mask: Tensor<2>) -> Tensor<3> {
        let [b, l, d] = tokens.dims();
        // The first layer sees [t, s, t − s, t ⊙ s] at every position (FuxiCTR's input); with
        // its weight in blocks W₁…W₄ that is t·(W₁ + W₃) + s·(W₂ − W₃) + (t ⊙ s)·W₄: the
        // target's part once per row, the tokens' in one product of half the width, and no
        // repeated target or four-way concatenation in memory.
        let mut h = match self.layers.first() {
            Some(first) => {
                let w = first.weight.val(); // [4d, H]
                let block = |i: usize| w.clone().narrow(0, i * d, d);
                let w_target = block(0) + block(2);
                let w_tokens = Tensor::cat(vec![block(1) - block(2), block(3)], 0); // [2d, H]
                let units = w_target.dims()[1];
                let mut per_row = target.clone().reshape([b, d]).matmul(w_target);
                if let Some(bias) = &first.bias {
                    per_row = per_row + bias.val().reshape([1, units]);
                }
                let pairs = Tensor::cat(vec![tokens.clone(), target * tokens.clone()], 2)
                    .reshape([b * l, 2 * d]);
                let h =
                    pairs.matmul(w_tokens).reshape([b, l, units]) + per_row.reshape([b, 1, units]);
                h.reshape([b * l, units])
            }
            None => Tensor::cat(
                vec![
                    target.clone().repeat_dim(1, l),
                    tokens.clone(),
                    target.clone().repeat_dim(1, l) - tokens.clone(),
                    target * tokens.clone(),
                ],
                2,
            )
            .reshape([b * l, 4 * d]),
        };
        for (i, layer) in self.layers.iter().enumerate() {
            if i > 0 {
                h = layer.forward(h);
            }
            h = match self.dice.get(i) {
                Some(dice) => dice.forward(h),
                None => relu(h),
            };
            h = self.dropout.forward(h);
        }
        let mut w = self.output.forward(h).reshape([b, l]);
        if self.sigmoid {
            w = sigmoid(w);
        }
        w = w * mask.clone();
        if self.softmax {
            w = softmax(w + (mask.neg() + 1.0).mul_scalar(-1e9), 1);
        }
        (w.reshape([b, l, 1]) * tokens).sum_dim(1)
    }
}

#[derive(Module, Debug)]
pub struct Din {
    embedding: FeatureEmbedding,
    attention: Vec<AttentionUnit>,
    dnn: Mlp,
    /// With `dnn_activations: Dice`, one per hidden layer of the DNN; none with ReLU.
    dnn_dice: Vec<Dice>,
    /// Per attention unit: the target fields' positions and the sequences' indices (one each,
    /// or several attended together).
    #[module(skip)]
    pairs: Vec<(Vec<usize>, Vec<usize>)>,
    #[module(skip)]
    first_sequence_field: usize,
}

#[derive(Module, Debug)]
pub struct ShareBottom {
    embedding: FeatureEmbedding,
    bottom: Mlp,
    towers: Vec<Mlp>,
}

/// One customized gate control layer of PLE: task-specific experts per task, shared
/// experts, and a gate per task (over its own and the shared experts) plus one for the shared
/// output (over the shared experts).
#[derive(Module, Debug)]
pub struct CgcLayer {
    specific: Vec<Vec<Mlp>>,
    shared: Vec<Mlp>,
    gates: Vec<Mlp>,
}

#[derive(Module, Debug)]
pub struct Ple {
    embedding: FeatureEmbedding,
    layers: Vec<CgcLayer>,
    towers: Vec<Mlp>,
}

// One model is built per training or inference job: the largest variant's size costs nothing,
// and burn's `Module` derive does not see through boxes.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum CtrModel {
    Lr(Lr),
    Fm(Fm),
    DeepFm(DeepFm),
    Dcn(Dcn),
    Mmoe(Mmoe),
    Dnn(Dnn),
    WideDeep(WideDeep),
    Pnn(Pnn),
    XDeepFm(XDeepFm),
    AutoInt(AutoInt),
    FiBiNet(FiBiNet),
    FinalMlp(FinalMlp),
    ShareBottom(ShareBottom),
    Ple(Ple),
    Din(Din),
}

impl CtrModel {
    /// A freshly initialised model (seeded by `config.seed`).
    pub fn new(config: &ModelConfig, shape: &InputShape, device: &Device) -> Result<CtrModel> {
        Ok(Self::structure(config, shape, device)?.map(&mut SeededInit::new(config.seed, shape)))
    }

    /// The model's structure with placeholder (zero, lazily created) parameters, to load
    /// saved weights into without drawing millions of random numbers first.
    pub fn structure(
        config: &ModelConfig,
        shape: &InputShape,
        device: &Device,
    ) -> Result<CtrModel> {
        config.validate()?;
        if shape.num_fields() == 0 {
            return Err(CtrError::Config("the model has no input fields".into()));
        }
        if config.model.pairs_fields() && shape.num_fields() < 2 {
            return Err(CtrError::Config(format!(
                "model: {:?} pairs fields and needs at least two",
                config.model
            )));
        }
        let dim = config.embedding_dim;
        shape.check_widths()?;
        if shape.mixed_widths() && !matches!(config.model, ModelKind::DNN | ModelKind::DCN) {
            return Err(CtrError::Config(format!(
                "model: {:?} takes one embedding width for every field (FuxiCTR's stacks the \
                 fields' embeddings); only DNN and DCNv2 take a width per feature",
                config.model
            )));
        }
        let flat = shape.flat_width(dim);
        let emb = || FeatureEmbedding::new(shape, dim, device);
        let mlp = |d_in: usize, hidden: &[usize], out: Option<usize>| {
            Mlp::new(d_in, hidden, out, config.dropout, config.batch_norm, device)
        };
        let model = match config.model {
            ModelKind::LR => CtrModel::Lr(Lr {
                first: FirstOrder::new(shape, device),
            }),
            ModelKind::FM => CtrModel::Fm(Fm {
                first: FirstOrder::new(shape, device),
                embedding: emb(),
            }),
            ModelKind::DeepFM => CtrModel::DeepFm(DeepFm {
                first: FirstOrder::new(shape, device),
                embedding: emb(),
                dnn: mlp(flat, &config.hidden_units, Some(1)),
            }),
            ModelKind::DCN => {
                let st = config.model_structure;
                let parallel = matches!(st, DcnStructure::Parallel | DcnStructure::StackedParallel);
                let stacked = matches!(st, DcnStructure::Stacked | DcnStructure::StackedParallel);
                let dnn = parallel.then(|| mlp(flat, &config.hidden_units, None));
                let stacked = stacked.then(|| mlp(flat, &config.stacked_hidden_units, None));
                let head_in = match (&stacked, &dnn) {
                    (None, None) => flat,
                    (Some(s), None) => s.out_dim(flat),
                    (None, Some(p)) => flat + p.out_dim(flat),
                    (Some(s), Some(p)) => s.out_dim(flat) + p.out_dim(flat),
                };
                let (cross, mix) = if config.use_low_rank_mixture {
                    let mix = CrossMix::new(
                        flat,
                        config.num_cross_layers,
                        config.low_rank,
                        config.num_experts,
                        device,
                    );
                    (Vec::new(), Some(mix))
                } else {
                    let cross = (0..config.num_cross_layers)
                        .map(|_| linear(flat, flat, true, device))
                        .collect();
                    (cross, None)
                };
                CtrModel::Dcn(Dcn {
                    embedding: emb(),
                    cross,
                    mix,
                    stacked,
                    dnn,
                    head: linear(head_in, 1, true, device),
                })
            }
            ModelKind::MMoE => {
                let experts: Vec<Mlp> = (0..config.num_experts)
                    .map(|_| mlp(flat, &config.expert_hidden_units, None))
                    .collect();
                let expert_out = experts[0].out_dim(flat);
                CtrModel::Mmoe(Mmoe {
                    embedding: emb(),
                    gates: (0..shape.num_tasks)
                        .map(|_| mlp(flat, &config.gate_hidden_units, Some(config.num_experts)))
                        .collect(),
                    towers: (0..shape.num_tasks)
                        .map(|_| mlp(expert_out, &config.tower_hidden_units, Some(1)))
                        .collect(),
                    experts,
                })
            }
            ModelKind::DNN => CtrModel::Dnn(Dnn {
                embedding: emb(),
                dnn: mlp(flat, &config.hidden_units, Some(1)),
            }),
            ModelKind::WideDeep => CtrModel::WideDeep(WideDeep {
                first: FirstOrder::new(shape, device),
                embedding: emb(),
                dnn: mlp(flat, &config.hidden_units, Some(1)),
            }),
            ModelKind::PNN => {
                let f = shape.num_fields();
                CtrModel::Pnn(Pnn {
                    embedding: emb(),
                    dnn: mlp(flat + f * (f - 1) / 2, &config.hidden_units, Some(1)),
                })
            }
            ModelKind::XDeepFM => {
                let f = shape.num_fields();
                let mut maps = f;
                let mut cin = Vec::with_capacity(config.cin_hidden_units.len());
                for &h in &config.cin_hidden_units {
                    cin.push(linear(f * maps, h, true, device));
                    maps = h;
                }
                CtrModel::XDeepFm(XDeepFm {
                    first: FirstOrder::new(shape, device),
                    embedding: emb(),
                    cin,
                    cin_head: linear(config.cin_hidden_units.iter().sum(), 1, true, device),
                    dnn: (!config.hidden_units.is_empty())
                        .then(|| mlp(flat, &config.hidden_units, Some(1))),
                })
            }
            ModelKind::AutoInt => {
                let a = config.attention_dim;
                let attention = (0..config.attention_layers)
                    .map(|i| {
                        let d_in = if i == 0 { dim } else { a };
                        AttentionLayer {
                            query: linear(d_in, a, false, device),
                            key: linear(d_in, a, false, device),
                            value: linear(d_in, a, false, device),
                            residual: (config.use_residual && d_in != a)
                                .then(|| linear(d_in, a, false, device)),
                            use_residual: config.use_residual,
                        }
                    })
                    .collect();
                CtrModel::AutoInt(AutoInt {
                    embedding: emb(),
                    attention,
                    dropout: DropoutConfig::new(config.dropout).init(),
                    head: linear(shape.num_fields() * a, 1, true, device),
                    dnn: (!config.hidden_units.is_empty())
                        .then(|| mlp(flat, &config.hidden_units, Some(1))),
                    first: config.use_wide.then(|| FirstOrder::new(shape, device)),
                    heads: config.num_heads,
                    scale: config.use_scale,
                })
            }
            ModelKind::FiBiNET => {
                let f = shape.num_fields();
                let pairs = f * (f - 1) / 2;
                let reduced = (f / config.reduction_ratio).max(1);
                let n = match config.bilinear_type {
                    BilinearType::FieldAll => 1,
                    BilinearType::FieldEach => f,
                    BilinearType::FieldInteraction => pairs,
                };
                CtrModel::FiBiNet(FiBiNet {
                    first: FirstOrder::new(shape, device),
                    embedding: emb(),
                    squeeze: linear(f, reduced, false, device),
                    excite: linear(reduced, f, false, device),
                    bilinear: PLACEHOLDER.init([n, dim, dim], device),
                    bilinear_se: PLACEHOLDER.init([n, dim, dim], device),
                    dnn: mlp(2 * pairs * dim, &config.hidden_units, Some(1)),
                    bilinear_type: config.bilinear_type,
                })
            }
            ModelKind::FinalMLP => {
                let mlp1 = Mlp::new(
                    flat,
                    &config.mlp1_hidden_units,
                    None,
                    config.mlp1_dropout,
                    config.mlp1_batch_norm,
                    device,
                );
                let mlp2 = Mlp::new(
                    flat,
                    &config.mlp2_hidden_units,
                    None,
                    config.mlp2_dropout,
                    config.mlp2_batch_norm,
                    device,
                );
                let (d1, d2) = (mlp1.out_dim(flat), mlp2.out_dim(flat));
                let h = config.num_heads;
                let fs = config.use_fs;
                let gate =
                    || Mlp::new(dim, &config.fs_hidden_units, Some(flat), 0.0, false, device);
                let ctx = || Param::from_tensor(Tensor::zeros([1, dim], device));
                CtrModel::FinalMlp(FinalMlp {
                    embedding: emb(),
                    mlp1,
                    mlp2,
                    fs1_bias: fs.then(ctx),
                    fs2_bias: fs.then(ctx),
                    fs1_gate: fs.then(gate),
                    fs2_gate: fs.then(gate),
                    w1: linear(d1, 1, true, device),
                    w2: linear(d2, 1, true, device),
                    w12: PLACEHOLDER.init([h, d1 / h, d2 / h], device),
                })
            }
            ModelKind::ShareBottom => {
                let bottom = mlp(flat, &config.bottom_hidden_units, None);
                let out = bottom.out_dim(flat);
                CtrModel::ShareBottom(ShareBottom {
                    embedding: emb(),
                    towers: (0..shape.num_tasks)
                        .map(|_| mlp(out, &config.tower_hidden_units, Some(1)))
                        .collect(),
                    bottom,
                })
            }
            ModelKind::DIN => {
                let position = |name: &str| shape.names.iter().position(|n| n == name);
                let first_sequence = shape.num_numeric + shape.vocab_sizes.len();
                let mut pairs = Vec::new();
                for (targets, sequences) in config
                    .din_target_field
                    .iter()
                    .zip(&config.din_sequence_field)
                {
                    let mut t = Vec::new();
                    for target in targets.names() {
                        t.push(
                            position(target)
                                .filter(|p| (shape.num_numeric..first_sequence).contains(p))
                                .ok_or_else(|| {
                                    CtrError::Config(format!(
                                        "din_target_field: {target} is not a categorical feature of the dataset"
                                    ))
                                })?,
                        );
                    }
                    let mut q = Vec::new();
                    for sequence in sequences.names() {
                        q.push(
                            position(sequence)
                                .filter(|p| *p >= first_sequence)
                                .ok_or_else(|| {
                                    CtrError::Config(format!(
                                        "din_sequence_field: {sequence} is not a sequence feature of the dataset"
                                    ))
                                })?
                                - first_sequence,
                        );
                    }
                    // Attended together, the sequences' tokens line up position by position.
                    let lengths: Vec<usize> = q
                        .iter()
                        .map(|j| shape.sequences.get(*j).map_or(0, |s| s.max_len))
                        .collect();
                    if lengths.windows(2).any(|w| w[0] != w[1]) {
                        return Err(CtrError::Config(format!(
                            "din_sequence_field: {sequences} are attended together, so they need one max_len; they have {lengths:?}"
                        )));
                    }
                    pairs.push((t, q));
                }
                CtrModel::Din(Din {
                    embedding: emb(),
                    attention: pairs
                        .iter()
                        .map(|(t, _)| AttentionUnit::new(dim * t.len(), config, device))
                        .collect(),
                    dnn: mlp(flat, &config.hidden_units, Some(1)),
                    dnn_dice: if config.dnn_dice() {
                        (config.hidden_units.iter())
                            .map(|h| Dice::new(*h, device))
                            .collect()
                    } else {
                        Vec::new()
                    },
                    pairs,
                    first_sequence_field: first_sequence,
                })
            }
            ModelKind::PLE => {
                let t = shape.num_tasks;
                let (ns, nt) = (config.num_shared_experts, config.num_specific_experts);
                let expert_out = config.expert_hidden_units.last().copied().unwrap_or(flat);
                let layers = (0..config.num_layers)
                    .map(|i| {
                        let d_in = if i == 0 { flat } else { expert_out };
                        let expert = || mlp(d_in, &config.expert_hidden_units, None);
                        CgcLayer {
                            specific: (0..t)
                                .map(|_| (0..nt).map(|_| expert()).collect())
                                .collect(),
                            shared: (0..ns).map(|_| expert()).collect(),
                            gates: (0..=t)
                                .map(|k| {
                                    let out = if k < t { nt + ns } else { ns };
                                    mlp(d_in, &config.gate_hidden_units, Some(out))
                                })
                                .collect(),
                        }
                    })
                    .collect();
                CtrModel::Ple(Ple {
                    embedding: emb(),
                    layers,
                    towers: (0..t)
                        .map(|_| mlp(expert_out, &config.tower_hidden_units, Some(1)))
                        .collect(),
                })
            }
        };
        // `new` draws the weights from our own seeded generator, not the backend's: its RNG
        // is global to the process, so concurrent jobs (or tests) would perturb each other.
        Ok(model)
    }

    /// Logits `[B, T]`: one column per task (1 for single-task models).
    pub fn forward(&self, x: &Inputs) -> Tensor<2> {
        match self {
            CtrModel::Lr(m) => m.first.forward(x),
            CtrModel::Fm(m) => m.first.forward(x) + fm_interaction(m.embedding.forward(x)),
            CtrModel::DeepFm(m) => {
                let e = m.embedding.forward(x);
                let [b, f, d] = e.dims();
                let deep = m.dnn.forward(e.clone().reshape([b, f * d]));
                m.first.forward(x) + fm_interaction(e) + deep
            }
            CtrModel::Dcn(m) => {
                let x0 = m.embedding.forward_flat(x);
                let cross = match &m.mix {
                    Some(mix) => mix.forward(x0.clone()),
                    None => {
                        let mut xl = x0.clone();
                        for layer in &m.cross {
                            xl = x0.clone() * layer.forward(xl.clone()) + xl;
                        }
                        xl
                    }
                };
                let last = match (&m.stacked, &m.dnn) {
                    (None, None) => cross,
                    (Some(s), None) => s.forward(cross),
                    (None, Some(p)) => Tensor::cat(vec![cross, p.forward(x0)], 1),
                    (Some(s), Some(p)) => Tensor::cat(vec![s.forward(cross), p.forward(x0)], 1),
                };
                m.head.forward(last)
            }
            CtrModel::Mmoe(m) => {
                let e = m.embedding.forward(x);
                let [b, f, d] = e.dims();
                let x0 = e.reshape([b, f * d]);
                let experts = experts_forward(&m.experts, x0.clone()); // [E, B, H]
                let [ne, _, h] = experts.dims();
                let outs: Vec<Tensor<2>> = m
                    .gates
                    .iter()
                    .zip(&m.towers)
                    .map(|(gate, tower)| {
                        let g = softmax(gate.forward(x0.clone()), 1); // [B, E]
                        let g = g.swap_dims(0, 1).reshape([ne, b, 1]);
                        let mixed = (g * experts.clone()).sum_dim(0);
                        tower.forward(mixed.reshape([b, h]))
                    })
                    .collect();
                Tensor::cat(outs, 1)
            }
            CtrModel::Dnn(m) => m.dnn.forward(m.embedding.forward_flat(x)),
            CtrModel::WideDeep(m) => {
                m.first.forward(x) + m.dnn.forward(flatten(m.embedding.forward(x)))
            }
            CtrModel::Pnn(m) => {
                let e = m.embedding.forward(x);
                let [b, f, _] = e.dims();
                // All inner products [B, F, F], then the pairs i < j.
                let gram = e
                    .clone()
                    .matmul(e.clone().swap_dims(1, 2))
                    .reshape([b, f * f]);
                let (left, right) = pairs(f);
                let upper: Vec<i64> = left
                    .iter()
                    .zip(&right)
                    .map(|(i, j)| i * f as i64 + j)
                    .collect();
                let products = gram.select(1, index(upper, &e.device()));
                m.dnn.forward(Tensor::cat(vec![flatten(e), products], 1))
            }
            CtrModel::XDeepFm(m) => {
                let e = m.embedding.forward(x);
                let [b, f, d] = e.dims();
                let x0 = e.clone().reshape([b, f, 1, d]);
                let mut maps = e.clone();
                let mut pooled = Vec::with_capacity(m.cin.len());
                for conv in &m.cin {
                    let h = maps.dims()[1];
                    // [B, F, H, d] → [B, F·H, d]; a 1×1 convolution over channels is a
                    // product on the channel axis.
                    let outer = (x0.clone() * maps.reshape([b, 1, h, d])).reshape([b, f * h, d]);
                    maps = conv.forward(outer.swap_dims(1, 2)).swap_dims(1, 2); // [B, H', d]
                    let h2 = maps.dims()[1];
                    pooled.push(maps.clone().sum_dim(2).reshape([b, h2]));
                }
                let mut out = m.first.forward(x) + m.cin_head.forward(Tensor::cat(pooled, 1));
                if let Some(dnn) = &m.dnn {
                    out = out + dnn.forward(flatten(e));
                }
                out
            }
            CtrModel::AutoInt(m) => {
                let e = m.embedding.forward(x);
                let mut h = e.clone();
                let heads = m.heads;
                for layer in &m.attention {
                    h = layer.forward(h, heads, m.scale, &m.dropout);
                }
                let mut out = m.head.forward(flatten(h));
                if let Some(dnn) = &m.dnn {
                    out = out + dnn.forward(flatten(e));
                }
                if let Some(first) = &m.first {
                    out = out + first.forward(x);
                }
                out
            }
            CtrModel::FiBiNet(m) => {
                let e = m.embedding.forward(x);
                let [b, f, _] = e.dims();
                // Squeeze (mean over the embedding) and excite: one weight per field.
                let z = e.clone().mean_dim(2).reshape([b, f]);
                let a = relu(m.excite.forward(relu(m.squeeze.forward(z))));
                let se = e.clone() * a.reshape([b, f, 1]);
                let p = bilinear(e, &m.bilinear.val(), m.bilinear_type);
                let q = bilinear(se, &m.bilinear_se.val(), m.bilinear_type);
                m.first.forward(x) + m.dnn.forward(flatten(Tensor::cat(vec![p, q], 1)))
            }
            CtrModel::FinalMlp(m) => {
                let flat = flatten(m.embedding.forward(x));
                let select =
                    |bias: &Option<Param<Tensor<2>>>, gate: &Option<Mlp>| match (bias, gate) {
                        // Without context fields the gate is the same for every row.
                        (Some(bias), Some(gate)) => {
                            flat.clone() * sigmoid(gate.forward(bias.val())).mul_scalar(2.0)
                        }
                        _ => flat.clone(),
                    };
                let o1 = m.mlp1.forward(select(&m.fs1_bias, &m.fs1_gate));
                let o2 = m.mlp2.forward(select(&m.fs2_bias, &m.fs2_gate));
                let [b, d1] = o1.dims();
                let [_, d2] = o2.dims();
                let [h, _, _] = m.w12.val().dims();
                let lin = m.w1.forward(o1.clone()) + m.w2.forward(o2.clone());
                // Per head: o1ₕᵀ W₁₂ₕ o2ₕ, summed over heads.
                let x1 = o1.reshape([b, h, d1 / h]).swap_dims(0, 1); // [H, B, d1/H]
                let x2 = o2.reshape([b, h, d2 / h]).swap_dims(0, 1);
                let xy = (x1.matmul(m.w12.val()) * x2).sum_dim(2).sum_dim(0); // [1, B, 1]
                lin + xy.reshape([b, 1])
            }
            CtrModel::ShareBottom(m) => {
                let bottom = m.bottom.forward(flatten(m.embedding.forward(x)));
                Tensor::cat(
                    m.towers.iter().map(|t| t.forward(bottom.clone())).collect(),
                    1,
                )
            }
            CtrModel::Din(m) => {
                let (mut e, tokens) = m.embedding.forward_with_tokens(x);
                if let (Some(tokens), Some((_, mask))) = (tokens, &x.sequence) {
                    let [b, _, d] = e.dims();
                    let span = |j: usize| {
                        let start: usize = x.sequence_fields[..j].iter().map(|f| f.0).sum();
                        (start, x.sequence_fields.get(j).map_or(0, |f| f.0))
                    };
                    for ((targets, sequences), unit) in m.pairs.iter().zip(&m.attention) {
                        // Fields attended together: their embeddings side by side, and the
                        // first sequence's padding as the mask (FuxiCTR's tuple).
                        let target =
                            cat_last(targets.iter().map(|t| e.clone().narrow(1, *t, 1)).collect());
                        let seq = cat_last(
                            sequences
                                .iter()
                                .map(|j| {
                                    let (start, len) = span(*j);
                                    tokens.clone().narrow(1, start, len)
                                })
                                .collect(),
                        );
                        let (start, len) = span(sequences.first().copied().unwrap_or(0));
                        let pooled = unit.forward(target, seq, mask.clone().narrow(1, start, len));
                        // Each attended sequence takes the place of its pooled embedding.
                        for (i, j) in sequences.iter().enumerate() {
                            let at = m.first_sequence_field + j;
                            let part = if sequences.len() == 1 {
                                pooled.clone()
                            } else {
                                pooled.clone().narrow(2, i * d, d)
                            };
                            e = e.slice_assign([0..b, at..at + 1, 0..d], part);
                        }
                    }
                }
                m.dnn.forward_with(flatten(e), &m.dnn_dice)
            }
            CtrModel::Ple(m) => {
                let flat = flatten(m.embedding.forward(x));
                let mut inputs = vec![flat; m.towers.len() + 1];
                for layer in &m.layers {
                    inputs = layer.forward(&inputs);
                }
                Tensor::cat(
                    m.towers
                        .iter()
                        .zip(inputs)
                        .map(|(t, i)| t.forward(i))
                        .collect(),
                    1,
                )
            }
        }
    }

    /// Probabilities `[B, T]`.
    pub fn predict(&self, x: &Inputs) -> Tensor<2> {
        sigmoid(self.forward(x))
    }

    /// Floating-point operations of one row's forward pass in the model's matrix products (2
    /// per multiply-add), as the model is defined: every layer's weights, DIN's attention MLP
    /// at every position of its sequence (over the `4·d`-wide input; Ferry's split of that
    /// first layer does less), AutoInt's attention, the CIN's maps at every embedding position, PNN's inner
    /// products, FiBiNET's bilinear forms and FM's sums of squares. Element-wise work and
    /// embedding lookups are left out: this is the work a GEMM peak bounds. A training step
    /// costs three times as much (the forward, then the gradients of the inputs and of the
    /// weights).
    pub fn forward_flops_per_row(&self, shape: &InputShape, embedding_dim: usize) -> f64 {
        let (f, d) = (shape.num_fields() as f64, embedding_dim as f64);
        let pairs = f * (f - 1.0) / 2.0;
        match self {
            CtrModel::Lr(m) => m.first.flops(),
            CtrModel::Fm(m) => m.first.flops() + 3.0 * f * d,
            CtrModel::DeepFm(m) => m.first.flops() + 3.0 * f * d + m.dnn.flops(),
            CtrModel::Dcn(m) => {
                let mix = m.mix.as_ref().map_or(0.0, |mix| {
                    let layers: f64 = (mix.u.iter().chain(&mix.v).chain(&mix.c))
                        .map(|w| weight_flops(&w.val().dims()))
                        .sum();
                    layers + linear_flops(&mix.gating) * mix.u.len() as f64
                });
                m.cross.iter().map(linear_flops).sum::<f64>()
                    + mix
                    + m.stacked.as_ref().map_or(0.0, Mlp::flops)
                    + m.dnn.as_ref().map_or(0.0, Mlp::flops)
                    + linear_flops(&m.head)
            }
            CtrModel::Mmoe(m) => mlps_flops(m.experts.iter().chain(&m.gates).chain(&m.towers)),
            CtrModel::Dnn(m) => m.dnn.flops(),
            CtrModel::WideDeep(m) => m.first.flops() + m.dnn.flops(),
            CtrModel::Pnn(m) => 2.0 * f * f * d + m.dnn.flops(),
            CtrModel::XDeepFm(m) => {
                m.first.flops()
                    + m.cin.iter().map(linear_flops).sum::<f64>() * d
                    + linear_flops(&m.cin_head)
                    + m.dnn.as_ref().map_or(0.0, Mlp::flops)
            }
            CtrModel::AutoInt(m) => {
                let layers: f64 = m
                    .attention
                    .iter()
                    .map(|a| {
                        let width = a.query.weight.val().dims()[1] as f64;
                        let projections = [&a.query, &a.key, &a.value]
                            .into_iter()
                            .chain(&a.residual)
                            .map(linear_flops)
                            .sum::<f64>();
                        // Per field, then the scores and their weighted sum over field pairs.
                        projections * f + 2.0 * 2.0 * f * f * width
                    })
                    .sum();
                layers
                    + linear_flops(&m.head)
                    + m.dnn.as_ref().map_or(0.0, Mlp::flops)
                    + m.first.as_ref().map_or(0.0, FirstOrder::flops)
            }
            CtrModel::FiBiNet(m) => {
                let products = match m.bilinear_type {
                    BilinearType::FieldInteraction => pairs,
                    BilinearType::FieldAll | BilinearType::FieldEach => f,
                };
                m.first.flops()
                    + linear_flops(&m.squeeze)
                    + linear_flops(&m.excite)
                    + 2.0 * 2.0 * products * d * d
                    + m.dnn.flops()
            }
            CtrModel::FinalMlp(m) => {
                let [h, a, b] = m.w12.val().dims();
                m.mlp1.flops()
                    + m.mlp2.flops()
                    + linear_flops(&m.w1)
                    + linear_flops(&m.w2)
                    + 2.0 * (h * a * b) as f64
            }
            CtrModel::ShareBottom(m) => m.bottom.flops() + mlps_flops(&m.towers),
            CtrModel::Ple(m) => {
                let layers = m.layers.iter().map(|l| {
                    mlps_flops(l.specific.iter().flatten().chain(&l.shared).chain(&l.gates))
                });
                layers.sum::<f64>() + mlps_flops(&m.towers)
            }
            CtrModel::Din(m) => {
                let attention: f64 = m
                    .pairs
                    .iter()
                    .zip(&m.attention)
                    .map(|((_, sequences), unit)| {
                        let j = sequences.first().copied().unwrap_or(0);
                        let len = shape.sequences.get(j).map_or(0, |s| s.max_len) as f64;
                        let mlp = unit.layers.iter().map(linear_flops).sum::<f64>()
                            + linear_flops(&unit.output);
                        // The MLP at every position, then the weighted sum of the tokens.
                        len * (mlp + 2.0 * d * sequences.len() as f64)
                    })
                    .sum();
                attention + m.dnn.flops()
            }
        }
    }

    /// The model's Dice layers (DIN's), attention units first, then the DNN's.
    fn dice_layers(&self) -> Vec<&Dice> {
        match self {
            CtrModel::Din(m) => m
                .attention
                .iter()
                .flat_map(|unit| &unit.dice)
                .chain(&m.dnn_dice)
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Updates each Dice layer's running averages once, from the statistics of a batch's row
    /// ranges (one list per range, from [`collecting_dice_stats`]) taken together: the same
    /// update as one pass over the whole batch, up to float rounding.
    pub(crate) fn update_dice_running_stats(&self, ranges: Vec<Vec<DiceBatchStats>>) {
        let mut by_layer: BTreeMap<ParamId, Vec<DiceBatchStats>> = BTreeMap::new();
        for stats in ranges.into_iter().flatten() {
            by_layer.entry(stats.id).or_default().push(stats);
        }
        for dice in self.dice_layers() {
            if let Some(all) = by_layer
                .get(&dice.alpha.id)
                .and_then(|parts| DiceBatchStats::combined(parts))
            {
                dice.update_running(&all);
            }
        }
    }

    /// The regularization term of FuxiCTR's `BaseModel`: `embedding` on the embedding tables,
    /// `net` on every layer's `weight` and `bias` (the numeric fields' embeddings are layers
    /// there); other parameters (cross mixtures, bilinear forms) go free. `None` without terms.
    pub fn regularization(&self, embedding: &[Penalty], net: &[Penalty]) -> Option<Tensor<1>> {
        if embedding.iter().chain(net).all(|t| t.lambda == 0.0) {
            return None;
        }
        let mut v = Penalties {
            embedding,
            net,
            path: Vec::new(),
            sum: None,
        };
        self.visit(&mut v);
        v.sum
    }
}

struct Penalties<'a> {
    embedding: &'a [Penalty],
    net: &'a [Penalty],
    path: Vec<String>,
    sum: Option<Tensor<1>>,
}

impl ModuleVisitor for Penalties<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_owned());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let last = self.path.last().map(String::as_str).unwrap_or_default();
        let numeric_embedding = self.path.ends_with(&["embedding".into(), "numeric".into()]);
        let terms = if self.path.iter().any(|p| p == "table") {
            self.embedding
        } else if matches!(last, "weight" | "bias" | "gamma" | "beta") || numeric_embedding {
            self.net
        } else {
            return;
        };
        for t in terms.iter().filter(|t| t.lambda > 0.0) {
            let w = param.val();
            let norm = if t.p == 1 {
                w.abs().sum()
            } else {
                (w.clone() * w).sum()
            };
            let term = norm.mul_scalar(t.lambda / f64::from(t.p));
            self.sum = Some(match self.sum.take() {
                Some(s) => s + term,
                None => term,
            });
        }
    }
}

/// All experts at once, `[E, B, H]`: their first layers (which share the input) as one wide
/// matrix product, every later layer as one batched product over the experts. Same parameters
/// and same function as running each expert's `Mlp` in turn, in fewer and larger products,
/// which is what keeps a CPU's cores busy (and backward gets one input gradient, not E to add).
/// Tensors side by side on their last axis; one is passed through.
fn cat_last(mut parts: Vec<Tensor<3>>) -> Tensor<3> {
    if parts.len() == 1
        && let Some(one) = parts.pop()
    {
        return one;
    }
    Tensor::cat(parts, 2)
}

fn experts_forward(experts: &[Mlp], x0: Tensor<2>) -> Tensor<3> {
    let [b, _] = x0.dims();
    let ne = experts.len();
    let uniform = experts.iter().all(|m| {
        m.output.is_none()
            && m.layers.len() == experts[0].layers.len()
            && !m.layers.is_empty()
            && m.norms.is_empty()
            && m.layers.iter().all(|l| l.bias.is_some())
    });
    if !uniform {
        // Not the shape `CtrModel::structure` builds; keep the plain definition.
        return Tensor::stack::<3>(experts.iter().map(|ex| ex.forward(x0.clone())).collect(), 0);
    }
    let dropout = &experts[0].dropout;
    let layer = |i: usize| experts.iter().map(move |m| &m.layers[i]);
    let bias = |l: &Linear| l.bias.as_ref().map(|p| p.val());

    // Layer 0: x0 [B, D] · [D, E·H1] + [E·H1], then [E, B, H1].
    let w = Tensor::cat(layer(0).map(|l| l.weight.val()).collect(), 1);
    let bias0 = Tensor::cat(layer(0).filter_map(bias).collect(), 0);
    let [_, wide] = w.dims();
    let h1 = wide / ne;
    let z = x0.matmul(w) + bias0.reshape([1, wide]);
    let mut x: Tensor<3> = dropout.forward(relu(z.reshape([b, ne, h1]).swap_dims(0, 1)));

    // Later layers: [E, B, H] · [E, H, H'] + [E, 1, H'].
    for i in 1..experts[0].layers.len() {
        let w = Tensor::stack::<3>(layer(i).map(|l| l.weight.val()).collect(), 0);
        let bias = Tensor::stack::<2>(layer(i).filter_map(bias).collect(), 0);
        let [_, h] = bias.dims();
        x = dropout.forward(relu(x.matmul(w) + bias.reshape([ne, 1, h])));
    }
    x
}

/// Re-initialises every float parameter from `(seed, parameter path)` alone: embedding tables
/// N(0, 1e-4) (FuxiCTR's default), biases 0, other matrices Xavier-normal.
struct SeededInit {
    seed: u64,
    path: Vec<String>,
    /// With mixed embedding widths: each numeric field's width, in the one weight vector the
    /// numeric fields share (each field's part drawn as its own `[1, width]` weight).
    numeric_widths: Vec<usize>,
}

impl SeededInit {
    fn new(seed: u64, shape: &InputShape) -> SeededInit {
        SeededInit {
            seed,
            path: Vec::new(),
            numeric_widths: if shape.mixed_widths() {
                shape.embedding_dims[..shape.num_numeric].to_vec()
            } else {
                Vec::new()
            },
        }
    }
}

impl ModuleMapper for SeededInit {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_owned());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let path = self.path.join(".");
        let mut key = self.seed;
        for b in path.bytes() {
            key = SplitMix64::hash(key ^ b as u64);
        }
        let mut rng = SplitMix64::new(key);
        let in_table = self.path.iter().any(|p| p == "table");
        let is_bias = self
            .path
            .last()
            .is_some_and(|p| p == "bias" || p.ends_with("_bias"));
        param.map(|t| {
            let shape = t.shape();
            let dims = t.dims();
            let n: usize = dims.iter().product();
            let std = if in_table {
                1e-4
            } else if D == 2 {
                // Linear weights are [d_in, d_out]; the numeric embedding is [fields, dim]
                // with fan-in 1 per field.
                let (fan_in, fan_out) = if path.ends_with("embedding.numeric") {
                    (1, dims[1])
                } else {
                    (dims[0], dims[1])
                };
                (2.0 / (fan_in + fan_out) as f64).sqrt()
            } else if D == 3 {
                // A stack of matrices (per expert, field or pair): Xavier for each.
                (2.0 / (dims[1] + dims[2]) as f64).sqrt()
            } else {
                0.0
            };
            let numeric_widths = path
                .ends_with("embedding.numeric")
                .then_some(&self.numeric_widths)
                .filter(|w| !w.is_empty());
            let values: Vec<f32> = if let Some(widths) = numeric_widths {
                // Xavier for each field's `[1, width]`, as with one width.
                widths
                    .iter()
                    .flat_map(|w| std::iter::repeat_n((2.0 / (1 + w) as f64).sqrt(), *w))
                    .map(|std| (rng.normal() * std) as f32)
                    .collect()
            } else if self.path.last().is_some_and(|p| p == "gamma") {
                // A batch norm's scale starts at 1, its shift (`beta`) at 0.
                vec![1.0; n]
            } else if is_bias || std == 0.0 {
                vec![0.0; n]
            } else {
                (0..n).map(|_| (rng.normal() * std) as f32).collect()
            };
            let require_grad = t.is_require_grad();
            Tensor::<D>::from_data(TensorData::new(values, shape), &t.device())
                .set_require_grad(require_grad)
        })
    }
}

/// Binary cross-entropy on logits, summed over tasks and averaged over rows (the multi-task
/// loss of FuxiCTR's MMoE: BCE(click) + BCE(conversion)); stable for large |z|.
pub fn bce_with_logits(logits: Tensor<2>, labels: Tensor<2>) -> Tensor<1> {
    let [b, _] = logits.dims();
    let loss =
        logits.clone().clamp_min(0.0) - logits.clone() * labels + logits.abs().neg().exp().log1p();
    loss.sum().div_scalar(b as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::Module;
    use burn::optim::{AdamConfig, GradientsParams};

    /// A batch's Dice statistics computed in row ranges on threads of their own and then
    /// taken together update the running averages as one pass over the whole batch does.
    #[test]
    fn dice_statistics_of_row_ranges_combine_into_the_whole_batch_update() {
        let device = Device::flex().autodiff();
        let rows: Vec<f32> = (0..7 * 3)
            .map(|i| ((i * 37 % 11) as f32 - 4.0) * 0.3 + (i % 3) as f32)
            .collect();
        let x = Tensor::<2>::from_data(TensorData::new(rows.clone(), [7, 3]), &device);
        let whole = Dice::new(3, &device);
        let _ = whole.forward(x.clone());
        let split = Dice::new(3, &device);
        // Unequal ranges, as a batch of 7 rows splits in 4 and 3.
        let ranges: Vec<Vec<DiceBatchStats>> = [(0, 4), (4, 3)]
            .into_iter()
            .map(|(start, len)| {
                std::thread::scope(|s| {
                    s.spawn(|| {
                        let part = x.clone().narrow(0, start, len);
                        collecting_dice_stats(|| split.forward(part)).1
                    })
                    .join()
                    .expect("range thread")
                })
            })
            .collect();
        assert!(ranges.iter().all(|r| r.len() == 1));
        let untouched = split
            .running_mean
            .value_sync()
            .into_data()
            .try_to_vec::<f32>()
            .expect("f32");
        assert_eq!(untouched, vec![0.0; 3], "ranges leave the averages alone");
        let model = CtrModel::Din(Din {
            embedding: FeatureEmbedding::new(&shape(), 2, &device),
            attention: Vec::new(),
            dnn: Mlp::new(2, &[], Some(1), 0.0, false, &device),
            dnn_dice: vec![split],
            pairs: Vec::new(),
            first_sequence_field: 0,
        });
        // The layer's statistics, keyed by its `alpha`, find it in the model.
        model.update_dice_running_stats(ranges);
        let CtrModel::Din(m) = &model else {
            unreachable!()
        };
        for (a, b) in [
            (&whole.running_mean, &m.dnn_dice[0].running_mean),
            (&whole.running_var, &m.dnn_dice[0].running_var),
        ] {
            let a = a.value_sync().into_data().try_to_vec::<f32>().expect("f32");
            let b = b.value_sync().into_data().try_to_vec::<f32>().expect("f32");
            for (x, y) in a.iter().zip(&b) {
                assert!((x - y).abs() < 1e-6, "whole batch {a:?}, ranges {b:?}");
            }
            assert!(a.iter().any(|v| *v != 0.0 && *v != 1.0), "updated: {a:?}");
        }
    }

    /// A range whose forward pass panics (an allocation failure, which training recovers
    /// from) leaves its pool thread not collecting: a later pass updates as usual.
    #[test]
    fn a_panicking_range_stops_collecting_dice_statistics() {
        let device = Device::flex().autodiff();
        let stats = || DiceBatchStats {
            id: ParamId::new(),
            rows: 1,
            mean: Tensor::zeros([1], &device),
            var: Tensor::zeros([1], &device),
        };
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            collecting_dice_stats(|| -> () { panic!("out of memory") })
        }));
        assert!(caught.is_err());
        assert!(
            collect_dice_stats(stats()).is_some(),
            "not collecting after the panic"
        );
        let ((), kept) = collecting_dice_stats(|| assert!(collect_dice_stats(stats()).is_none()));
        assert_eq!(kept.len(), 1);
        assert!(collect_dice_stats(stats()).is_some());
    }

    fn shape() -> InputShape {
        InputShape {
            vocab_sizes: vec![5, 7, 3],
            num_numeric: 2,
            num_tasks: 2,
            sequences: vec![SequenceShape {
                vocab_size: 6,
                max_len: 3,
                pooling: Pooling::Mean,
                shares: None,
            }],
            names: ["n0", "n1", "c0", "c1", "c2", "s0"]
                .map(String::from)
                .to_vec(),
            categorical_shares: Vec::new(),
            embedding_dims: Vec::new(),
        }
    }

    fn batch(rows: usize) -> EncodedBatch {
        EncodedBatch {
            rows,
            categorical: (0..rows * 3).map(|i| (i % 2) as i32 + 1).collect(),
            numeric: (0..rows * 2).map(|i| (i % 5) as f32 / 5.0).collect(),
            labels: (0..rows * 2).map(|i| (i % 2) as f32).collect(),
            // Some padding (0) in every row, and one row all padding.
            sequence: (0..rows * 3)
                .map(|i| {
                    if i % 3 == 2 || i < 3 {
                        0
                    } else {
                        (i % 5) as i32 + 1
                    }
                })
                .collect(),
            groups: Vec::new(),
        }
    }

    fn small(kind: ModelKind) -> ModelConfig {
        let mut c = ModelConfig::new(kind, "t");
        c.embedding_dim = 4;
        c.hidden_units = vec![8, 8];
        c.expert_hidden_units = vec![8, 6];
        c.gate_hidden_units = vec![4];
        c.tower_hidden_units = vec![4];
        c.num_experts = 3;
        c.stacked_hidden_units = vec![8];
        c.low_rank = 3;
        c.cin_hidden_units = vec![4, 3];
        c.attention_dim = 6;
        c.num_heads = 2;
        c.mlp1_hidden_units = vec![8, 6];
        c.mlp2_hidden_units = vec![4];
        c.fs_hidden_units = vec![4];
        c.bottom_hidden_units = vec![8];
        c.num_layers = 2;
        c.num_specific_experts = 2;
        c.din_target_field = vec!["c1".into()];
        c.din_sequence_field = vec!["s0".into()];
        c.attention_hidden_units = vec![6, 4];
        c
    }

    /// Every model, and the variants of those with a structure to choose.
    fn variants() -> Vec<ModelConfig> {
        let mut all: Vec<ModelConfig> = ModelKind::ALL.iter().map(|k| small(*k)).collect();
        for st in [
            DcnStructure::CrossnetOnly,
            DcnStructure::Stacked,
            DcnStructure::StackedParallel,
        ] {
            let mut c = small(ModelKind::DCN);
            c.model_structure = st;
            all.push(c.clone());
            c.use_low_rank_mixture = true;
            all.push(c);
        }
        for bt in [BilinearType::FieldAll, BilinearType::FieldEach] {
            let mut c = small(ModelKind::FiBiNET);
            c.bilinear_type = bt;
            all.push(c);
        }
        let mut c = small(ModelKind::AutoInt);
        c.use_scale = true;
        c.use_wide = true;
        c.hidden_units.clear();
        c.attention_dim = 4; // the embedding's width: the plain residual
        all.push(c);
        let mut c = small(ModelKind::FinalMLP);
        c.use_fs = false;
        c.mlp1_batch_norm = true;
        all.push(c);
        for kind in [ModelKind::DeepFM, ModelKind::MMoE] {
            let mut c = small(kind);
            c.batch_norm = true;
            all.push(c);
        }
        let mut c = small(ModelKind::DIN);
        c.attention_hidden_activations = "ReLU".into();
        c.attention_output_activation = Some("sigmoid".into());
        c.din_use_softmax = true;
        all.push(c);
        let mut c = small(ModelKind::DIN);
        c.dnn_activations = "Dice".into();
        all.push(c);
        all
    }

    #[test]
    fn every_model_gives_one_logit_per_row_and_task() {
        let device = Device::flex();
        let x = Inputs::new(&batch(5), &shape(), &device).expect("inputs");
        for config in variants() {
            let kind = config.model;
            let mut s = shape();
            if !kind.is_multi_task() {
                s.num_tasks = 1;
            }
            let m = CtrModel::new(&config, &s, &device).expect("model");
            assert_eq!(m.forward(&x).dims(), [5, s.num_tasks], "{config:?}");
        }
    }

    #[test]
    fn matrix_flops_count_each_layer_once_and_din_s_attention_at_every_position() {
        let device = Device::flex();
        let mut s = shape();
        s.num_tasks = 1;
        // 6 fields × 4 = 24 inputs → 8 → 8 → 1, 2 FLOPs per multiply-add.
        let dnn = CtrModel::structure(&small(ModelKind::DNN), &s, &device).expect("model");
        assert_eq!(
            dnn.forward_flops_per_row(&s, 4),
            2.0 * (24 * 8 + 8 * 8 + 8) as f64
        );
        // DIN: the attention MLP (16 → 6 → 4 → 1) and the weighted sum (2·d) at each of the
        // sequence's positions, besides the same DNN.
        let din = |max_len: usize| {
            let mut s = s.clone();
            s.sequences[0].max_len = max_len;
            let m = CtrModel::structure(&small(ModelKind::DIN), &s, &device).expect("model");
            m.forward_flops_per_row(&s, 4)
        };
        let per_position = 2.0 * (16 * 6 + 6 * 4 + 4) as f64 + 2.0 * 4.0;
        assert_eq!(
            din(3),
            3.0 * per_position + 2.0 * (24 * 8 + 8 * 8 + 8) as f64
        );
        assert_eq!(din(6) - din(3), 3.0 * per_position);
        // Every model does some matrix work at these shapes.
        for config in variants() {
            let mut s = shape();
            if !config.model.is_multi_task() {
                s.num_tasks = 1;
            }
            let m = CtrModel::structure(&config, &s, &device).expect("model");
            assert!(m.forward_flops_per_row(&s, 4) > 0.0, "{config:?}");
        }
    }

    #[test]
    fn a_shared_sequence_looks_up_its_categorical_field_s_rows() {
        let s = InputShape {
            vocab_sizes: vec![5, 7],
            num_numeric: 0,
            num_tasks: 1,
            sequences: vec![
                SequenceShape {
                    vocab_size: 7,
                    max_len: 2,
                    pooling: Pooling::Mean,
                    shares: Some(1),
                },
                SequenceShape {
                    vocab_size: 4,
                    max_len: 1,
                    pooling: Pooling::Mean,
                    shares: None,
                },
            ],
            names: Vec::new(),
            categorical_shares: Vec::new(),
            embedding_dims: Vec::new(),
        };
        assert_eq!(
            s.table_rows(),
            5 + 7 + 4,
            "the shared vocabulary is not repeated"
        );
        let b = EncodedBatch {
            rows: 1,
            categorical: vec![1, 2],
            numeric: Vec::new(),
            labels: Vec::new(),
            sequence: vec![3, 0, 2],
            groups: Vec::new(),
        };
        let x = Inputs::new(&b, &s, &Device::flex()).expect("inputs");
        let (idx, mask) = x.sequence.expect("sequence");
        let idx = idx
            .into_data()
            .convert::<i64>()
            .try_into_vec::<i64>()
            .expect("i64");
        // Shared: field 1's rows start at 5; the other sequence's after all categorical rows.
        assert_eq!(idx, [5 + 3, 5, 12 + 2]);
        assert_eq!(
            mask.into_data().try_into_vec::<f32>().expect("f32"),
            [1.0, 0.0, 1.0]
        );
    }

    #[test]
    fn a_shared_categorical_field_looks_up_its_owner_s_rows() {
        let s = InputShape {
            vocab_sizes: vec![5, 7, 5, 3],
            num_numeric: 0,
            num_tasks: 1,
            sequences: vec![SequenceShape {
                vocab_size: 4,
                max_len: 1,
                pooling: Pooling::Mean,
                shares: None,
            }],
            names: Vec::new(),
            // Field 2 uses field 0's rows.
            categorical_shares: vec![None, None, Some(0), None],
            embedding_dims: Vec::new(),
        };
        assert_eq!(s.offsets(), [0, 5, 0, 12]);
        assert_eq!(s.table_rows(), 5 + 7 + 3 + 4);
        let b = EncodedBatch {
            rows: 1,
            categorical: vec![1, 2, 4, 2],
            numeric: Vec::new(),
            labels: Vec::new(),
            sequence: vec![3],
            groups: Vec::new(),
        };
        let x = Inputs::new(&b, &s, &Device::flex()).expect("inputs");
        let ids = |t: Tensor<2, Int>| {
            t.into_data()
                .convert::<i64>()
                .try_into_vec::<i64>()
                .expect("i64")
        };
        assert_eq!(
            ids(x.categorical.clone().expect("categorical")),
            [1, 5 + 2, 4, 12 + 2]
        );
        let (seq, _) = x.sequence.clone().expect("sequence");
        assert_eq!(
            ids(seq),
            [15 + 3],
            "an own sequence after the owned categorical rows"
        );
        // A model built on the shape has one table row per owned token.
        let mut c = ModelConfig::new(ModelKind::DeepFM, "t");
        c.embedding_dim = 2;
        let m = CtrModel::new(&c, &s, &Device::flex()).expect("model");
        assert_eq!(m.forward(&x).dims(), [1, 1]);
    }

    #[test]
    fn a_sequence_is_pooled_over_its_real_tokens_only() {
        let device = Device::flex();
        // Two rows, two fields of lengths 3 and 2: [[a, b, pad], [c, d]], [[pad, pad, pad], [e, pad]].
        let tokens = Tensor::<3>::from_data(
            TensorData::new(
                vec![
                    1.0f32, 10.0, 3.0, 30.0, 99.0, 99.0, 5.0, 50.0, 7.0, 70.0, //
                    99.0, 99.0, 99.0, 99.0, 99.0, 99.0, 2.0, 20.0, 99.0, 99.0,
                ],
                [2, 5, 2],
            ),
            &device,
        );
        let mask = Tensor::<2>::from_data(
            TensorData::new(
                vec![1.0f32, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
                [2, 5],
            ),
            &device,
        );
        let mean = pool_sequences(
            tokens.clone(),
            &mask,
            &[(3, Pooling::Mean), (2, Pooling::Sum)],
        )
        .into_data()
        .try_into_vec::<f32>()
        .expect("f32");
        // Row 1: mean(a, b) = (2, 20), sum(c, d) = (12, 120); row 2: an all-padding
        // sequence pools to zeros, sum(e) = (2, 20).
        assert_eq!(mean, [2.0, 20.0, 12.0, 120.0, 0.0, 0.0, 2.0, 20.0]);
    }

    #[test]
    fn models_that_pair_fields_refuse_a_single_field_and_bad_keys_are_named() {
        let one = InputShape {
            vocab_sizes: vec![4],
            num_numeric: 0,
            num_tasks: 1,
            sequences: Vec::new(),
            names: vec!["c0".into()],
            categorical_shares: Vec::new(),
            embedding_dims: Vec::new(),
        };
        let device = Device::flex();
        let err = CtrModel::new(&small(ModelKind::DIN), &one, &device).expect_err("no c1, s0");
        assert!(err.to_string().contains("din_target_field"), "{err}");
        for kind in [ModelKind::PNN, ModelKind::FiBiNET] {
            let err = CtrModel::new(&small(kind), &one, &device).expect_err("one field");
            assert!(err.to_string().contains("at least two"), "{err}");
        }
        let mut c = small(ModelKind::AutoInt);
        c.attention_dim = 5;
        assert!(
            c.validate()
                .expect_err("5 % 2")
                .to_string()
                .contains("attention_dim")
        );
        let mut c = small(ModelKind::DCN);
        c.model_structure = DcnStructure::Stacked;
        c.stacked_hidden_units.clear();
        assert!(
            c.validate()
                .expect_err("stacked")
                .to_string()
                .contains("stacked_hidden_units")
        );
        let mut c = small(ModelKind::FinalMLP);
        c.mlp2_hidden_units = vec![3];
        assert!(
            c.validate()
                .expect_err("3 % 2")
                .to_string()
                .contains("mlp2_hidden_units")
        );
        let c: ModelConfig =
            serde_json::from_str(r#"{"model":"DCNv2","model_id":"m","model_structure":"stacked_parallel","stacked_hidden_units":[4]}"#)
                .expect("FuxiCTR's names");
        assert_eq!(
            (c.model, c.model_structure),
            (ModelKind::DCN, DcnStructure::StackedParallel)
        );
        let c: ModelConfig =
            serde_json::from_str(r#"{"model":"xDeepFM","model_id":"m"}"#).expect("xDeepFM");
        assert_eq!(c.model, ModelKind::XDeepFM);
    }

    #[test]
    fn all_experts_at_once_equal_each_expert_in_turn() {
        let device = Device::flex();
        let m = CtrModel::new(&small(ModelKind::MMoE), &shape(), &device).expect("model");
        let CtrModel::Mmoe(m) = m else {
            panic!("an MMoE")
        };
        let x0 = Tensor::<2>::from_data(
            TensorData::new(
                (0..5 * 24).map(|i| (i % 7) as f32 / 7.0 - 0.3).collect(),
                [5, 24],
            ),
            &device,
        );
        let fused = experts_forward(&m.experts, x0.clone())
            .into_data()
            .try_into_vec::<f32>()
            .expect("f32");
        let each: Vec<f32> = m
            .experts
            .iter()
            .flat_map(|ex| {
                ex.forward(x0.clone())
                    .into_data()
                    .try_into_vec::<f32>()
                    .expect("f32")
            })
            .collect();
        assert_eq!(fused.len(), each.len());
        for (a, b) in fused.iter().zip(&each) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    #[test]
    fn regularization_is_fuxictr_s_sum_over_tables_and_layers() {
        let device = Device::flex();
        let m = CtrModel::new(&small(ModelKind::FM), &shape(), &device).expect("model");
        let CtrModel::Fm(fm) = &m else {
            panic!("an FM")
        };
        let values = |t: Tensor<2>| t.into_data().try_into_vec::<f32>().expect("f32");
        let sq = |v: Vec<f32>| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>();
        let abs = |v: Vec<f32>| v.iter().map(|x| f64::from(x.abs())).sum::<f64>();
        let tables = |f: &dyn Fn(Vec<f32>) -> f64| {
            f(values(fm.first.table.as_ref().expect("table").weight.val()))
                + f(values(
                    fm.embedding.table.as_ref().expect("table").weight.val(),
                ))
        };
        let layers = |f: &dyn Fn(Vec<f32>) -> f64| {
            f(values(
                fm.first.numeric.as_ref().expect("linear").weight.val(),
            )) + f(values(fm.first.bias.val().reshape([1, 1])))
                + f(values(
                    fm.embedding.numeric.as_ref().expect("numeric").val(),
                ))
        };
        let reg = |e: &[Penalty], n: &[Penalty]| {
            f64::from(m.regularization(e, n).expect("a term").into_scalar::<f32>())
        };
        let l2 = |lambda| Penalty { p: 2, lambda };
        let l1 = |lambda| Penalty { p: 1, lambda };
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-5 * b.abs().max(1e-6);
        // λ/2 · Σw² on the tables only, then λ · Σ|w| on the layers only.
        let want = tables(&sq);
        assert!(want > 0.0);
        assert!(
            close(reg(&[l2(2.0)], &[]), want),
            "{} vs {want}",
            reg(&[l2(2.0)], &[])
        );
        let want = layers(&abs);
        assert!(
            close(reg(&[], &[l1(1.0)]), want),
            "{} vs {want}",
            reg(&[], &[l1(1.0)])
        );
        assert!(m.regularization(&[l2(0.0)], &[]).is_none());
    }

    /// Every model (and variant) learns a separable toy set, and a save → load round trip
    /// gives the same predictions.
    #[test]
    fn fields_of_their_own_widths_flatten_as_one_width_does_when_the_widths_agree() {
        // The same values laid out both ways: [rows, d] tables and [N, d] numeric weights, or
        // one vector of single values, field after field, row after row.
        let device = Device::flex();
        let config = small(ModelKind::DNN);
        let one = CtrModel::new(&config, &shape(), &device).expect("model");
        let CtrModel::Dnn(one) = one else {
            panic!("a DNN")
        };
        let spelled = InputShape {
            embedding_dims: vec![4; 6],
            ..shape()
        };
        let mut e = FeatureEmbedding::new(&spelled, 4, &device);
        let table = one.embedding.table.as_ref().expect("table").weight.val();
        let rows = table.dims()[0];
        e.table = Some(Embedding {
            weight: Param::from_tensor(table.reshape([rows * 4, 1])),
        });
        let numeric = one.embedding.numeric.as_ref().expect("numeric").val();
        e.numeric = Some(Param::from_tensor(numeric.reshape([1, 8])));
        let b = batch(5);
        let want = one
            .embedding
            .forward_flat(&Inputs::new(&b, &shape(), &device).expect("inputs"))
            .into_data()
            .try_into_vec::<f32>()
            .expect("f32");
        let got = e
            .forward_flat(&Inputs::new(&b, &spelled, &device).expect("inputs"))
            .into_data()
            .try_into_vec::<f32>()
            .expect("f32");
        assert_eq!(got, want);
    }

    #[test]
    fn fields_of_their_own_widths_make_tables_of_those_widths() {
        let device = Device::flex();
        let mut s = shape();
        s.num_tasks = 1;
        s.embedding_dims = vec![2, 3, 4, 5, 6, 7];
        for config in [small(ModelKind::DNN), small(ModelKind::DCN)] {
            let m = CtrModel::new(&config, &s, &device).expect("model");
            let x = Inputs::new(&batch(5), &s, &device).expect("inputs");
            assert_eq!(m.forward(&x).dims(), [5, 1], "{:?}", config.model);
        }
        let CtrModel::Dnn(m) = CtrModel::new(&small(ModelKind::DNN), &s, &device).expect("DNN")
        else {
            panic!("a DNN")
        };
        // FuxiCTR's tables: 5·4 + 7·5 + 3·6 values, and the sequence's 6·7; 2 + 3 numeric.
        let table = m.embedding.table.as_ref().expect("table").weight.val();
        assert_eq!(table.dims(), [20 + 35 + 18 + 42, 1]);
        assert_eq!(
            m.embedding.numeric.as_ref().expect("w").val().dims(),
            [1, 5]
        );
        assert_eq!(
            m.dnn.layers[0].weight.val().dims()[0],
            2 + 3 + 4 + 5 + 6 + 7
        );
        // The models that stack their fields' embeddings need one width.
        let e = CtrModel::new(&small(ModelKind::DeepFM), &s, &device).expect_err("DeepFM");
        assert!(e.to_string().contains("DeepFM"), "{e}");
        // A field sharing another's embedding has its width.
        s.categorical_shares = vec![None, Some(0), None];
        let e = CtrModel::new(&small(ModelKind::DNN), &s, &device).expect_err("shared");
        assert!(
            e.to_string().contains("c1") && e.to_string().contains("c0"),
            "{e}"
        );
        s.embedding_dims = vec![2, 3, 4, 4, 6, 7];
        assert!(CtrModel::new(&small(ModelKind::DNN), &s, &device).is_ok());
        s.embedding_dims = vec![2, 3, 4];
        assert!(CtrModel::new(&small(ModelKind::DNN), &s, &device).is_err());
    }

    #[test]
    fn every_model_learns_a_separable_toy_set_and_survives_save_and_load() {
        // (DNN and DCNv2 also with a width per field.)
        // click = 1 exactly when the first field's token is 1 or 2.
        let rows = 64;
        let s = InputShape {
            vocab_sizes: vec![6, 3],
            num_numeric: 1,
            num_tasks: 1,
            sequences: vec![SequenceShape {
                vocab_size: 4,
                max_len: 2,
                pooling: Pooling::Sum,
                shares: None,
            }],
            names: ["n0", "c0", "c1", "s0"].map(String::from).to_vec(),
            categorical_shares: Vec::new(),
            embedding_dims: Vec::new(),
        };
        let b = EncodedBatch {
            rows,
            categorical: (0..rows)
                .flat_map(|r| [(r % 5) as i32 + 1, (r % 3) as i32])
                .collect(),
            numeric: (0..rows).map(|r| (r % 7) as f32 / 7.0).collect(),
            labels: (0..rows)
                .map(|r| if r % 5 < 2 { 1.0 } else { 0.0 })
                .collect(),
            sequence: (0..rows * 2).map(|i| (i % 4) as i32).collect(),
            groups: Vec::new(),
        };
        let dir = tempfile::tempdir().expect("tmp");
        // And the models that take a width per feature, with four different widths.
        let mixed = InputShape {
            embedding_dims: vec![2, 3, 5, 4],
            ..s.clone()
        };
        let mut flat_models = vec![small(ModelKind::DNN), small(ModelKind::DCN)];
        flat_models[1].use_low_rank_mixture = true;
        flat_models.push(small(ModelKind::DCN));
        let cases = (variants().into_iter().map(|c| (c, s.clone())))
            .chain(flat_models.into_iter().map(|c| (c, mixed.clone())));
        for (n, (config, s)) in cases.enumerate() {
            let device = Device::flex().autodiff();
            let mut model = CtrModel::new(&config, &s, &device).expect("model");
            let mut optim = AdamConfig::new().init();
            let x = Inputs::new(&b, &s, &device).expect("inputs");
            for _ in 0..150 {
                let loss = bce_with_logits(model.forward(&x), label_tensor(&b, 1, &device));
                let grads = GradientsParams::from_grads(loss.backward(), &model);
                model = optim.step(0.03, model, grads);
            }
            let probs = model
                .valid()
                .predict(&Inputs::new(&b, &s, &Device::flex()).expect("inputs"))
                .into_data()
                .try_into_vec::<f32>()
                .expect("f32");
            let auc = crate::metrics::auc(&b.labels, &probs).unwrap_or(0.0);
            let loss = crate::metrics::logloss(&b.labels, &probs);
            assert!(
                auc > 0.999 && loss < 0.2,
                "{config:?}: AUC {auc}, logloss {loss}"
            );

            let path = dir.path().join(format!("m{n}.bpk"));
            model.valid().into_record().save(&path).expect("save");
            let fresh = CtrModel::structure(&config, &s, &Device::flex()).expect("model");
            let loaded = fresh
                .try_load_record(burn::store::ModuleRecord::load(&path).expect("load"))
                .unwrap_or_else(|e| panic!("{:?}: {e}", config.model));
            let again = loaded
                .predict(&Inputs::new(&b, &s, &Device::flex()).expect("inputs"))
                .into_data()
                .try_into_vec::<f32>()
                .expect("f32");
            assert_eq!(
                again, probs,
                "{:?}: save → load gives the same predictions",
                config.model
            );
        }
    }
}
