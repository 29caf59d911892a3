//! The models, in FuxiCTR's shapes, on one code path for every burn backend: the `Device` a
//! model is created on picks the backend at runtime.
//!
//! Every model embeds the fields the same way (FuxiCTR's `FeatureEmbedding`): one table for all
//! categorical fields (each field's indices offset into it) and, per numeric field, a
//! `Linear(1, dim, bias=False)` — so DeepFM's and MMoE's DNN inputs are `num_fields × dim` wide.

use burn::module::{Module, ModuleMapper, Param};
use burn::nn::{
    Dropout, DropoutConfig, Embedding, EmbeddingConfig, Initializer, Linear, LinearConfig,
};
use burn::tensor::activation::{relu, sigmoid, softmax};
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::error::{CtrError, Result};
use crate::features::EncodedBatch;
use crate::rng::SplitMix64;

/// FuxiCTR's model names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ModelKind {
    LR,
    FM,
    DeepFM,
    /// DCN v2 (cross network with full matrices, in parallel with a DNN).
    DCN,
    /// Multi-gate mixture of experts, one tower per label.
    MMoE,
}

impl ModelKind {
    pub fn parse(name: &str) -> Option<ModelKind> {
        match name.to_ascii_lowercase().as_str() {
            "lr" => Some(ModelKind::LR),
            "fm" => Some(ModelKind::FM),
            "deepfm" => Some(ModelKind::DeepFM),
            "dcn" | "dcnv2" => Some(ModelKind::DCN),
            "mmoe" => Some(ModelKind::MMoE),
            _ => None,
        }
    }

    pub fn is_multi_task(self) -> bool {
        self == ModelKind::MMoE
    }
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
        }
    }

    /// Checks the values a user can get wrong, naming the key.
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, why: &str| Err(CtrError::Config(format!("{key}: {why}")));
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
        if !(0.0..1.0).contains(&self.dropout) {
            return bad("dropout", "must be in [0, 1)");
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
        ] {
            if units.contains(&0) {
                return bad(key, "layer sizes must be at least 1");
            }
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
}

impl InputShape {
    pub fn num_fields(&self) -> usize {
        self.vocab_sizes.len() + self.num_numeric
    }

    /// Where each categorical field starts in the shared embedding table.
    pub fn offsets(&self) -> Vec<i64> {
        let mut acc = 0i64;
        self.vocab_sizes
            .iter()
            .map(|v| {
                let o = acc;
                acc += *v as i64;
                o
            })
            .collect()
    }
}

/// One batch on a device: `[B, C]` global embedding indices, `[B, N]` numerics.
pub struct Inputs {
    pub categorical: Option<Tensor<2, Int>>,
    pub numeric: Option<Tensor<2>>,
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
        let mut idx = Vec::with_capacity(batch.categorical.len());
        for (i, v) in batch.categorical.iter().enumerate() {
            let field = i % c;
            if *v < 0 || *v as usize >= shape.vocab_sizes[field] {
                return Err(CtrError::Data(format!(
                    "categorical field {field} has index {v} outside its vocabulary of {}; \
                     was the data encoded with this model's feature processor?",
                    shape.vocab_sizes[field]
                )));
            }
            idx.push(offsets[field] + *v as i64);
        }
        let categorical = (c > 0)
            .then(|| Tensor::<2, Int>::from_data(TensorData::new(idx, [batch.rows, c]), device));
        let numeric = (shape.num_numeric > 0).then(|| {
            Tensor::<2>::from_data(
                TensorData::new(batch.numeric.clone(), [batch.rows, shape.num_numeric]),
                device,
            )
        });
        Ok(Inputs {
            categorical,
            numeric,
            rows: batch.rows,
        })
    }
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
}

impl FeatureEmbedding {
    fn new(shape: &InputShape, dim: usize, device: &Device) -> FeatureEmbedding {
        let total: usize = shape.vocab_sizes.iter().sum();
        FeatureEmbedding {
            table: (total > 0).then(|| {
                EmbeddingConfig::new(total, dim)
                    .with_initializer(PLACEHOLDER)
                    .init(device)
            }),
            numeric: (shape.num_numeric > 0)
                .then(|| PLACEHOLDER.init([shape.num_numeric, dim], device)),
        }
    }

    fn forward(&self, x: &Inputs) -> Tensor<3> {
        let mut parts = Vec::with_capacity(2);
        if let (Some(w), Some(num)) = (&self.numeric, &x.numeric) {
            let [n, d] = w.val().dims();
            // x[B, N, 1] * w[1, N, d]
            parts.push(num.clone().reshape([x.rows, n, 1]) * w.val().reshape([1, n, d]));
        }
        if let (Some(table), Some(cat)) = (&self.table, &x.categorical) {
            parts.push(table.forward(cat.clone()));
        }
        Tensor::cat(parts, 1)
    }
}

/// A stack of `Linear → ReLU → Dropout`, optionally followed by a plain output layer.
#[derive(Module, Debug)]
pub struct Mlp {
    layers: Vec<Linear>,
    dropout: Dropout,
    output: Option<Linear>,
}

impl Mlp {
    fn new(
        d_in: usize,
        hidden: &[usize],
        output: Option<usize>,
        dropout: f64,
        device: &Device,
    ) -> Mlp {
        let mut layers = Vec::with_capacity(hidden.len());
        let mut d = d_in;
        for &h in hidden {
            layers.push(linear(d, h, true, device));
            d = h;
        }
        Mlp {
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

    fn forward(&self, mut x: Tensor<2>) -> Tensor<2> {
        for l in &self.layers {
            x = self.dropout.forward(relu(l.forward(x)));
        }
        match &self.output {
            Some(o) => o.forward(x),
            None => x,
        }
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
    fn new(shape: &InputShape, device: &Device) -> FirstOrder {
        let total: usize = shape.vocab_sizes.iter().sum();
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
    cross: Vec<Linear>,
    dnn: Mlp,
    head: Linear,
}

#[derive(Module, Debug)]
pub struct Mmoe {
    embedding: FeatureEmbedding,
    experts: Vec<Mlp>,
    gates: Vec<Mlp>,
    towers: Vec<Mlp>,
}

#[derive(Module, Debug)]
pub enum CtrModel {
    Lr(Lr),
    Fm(Fm),
    DeepFm(DeepFm),
    Dcn(Dcn),
    Mmoe(Mmoe),
}

impl CtrModel {
    /// A freshly initialised model (seeded by `config.seed`).
    pub fn new(config: &ModelConfig, shape: &InputShape, device: &Device) -> Result<CtrModel> {
        Ok(Self::structure(config, shape, device)?.map(&mut SeededInit::new(config.seed)))
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
        let dim = config.embedding_dim;
        let flat = shape.num_fields() * dim;
        let emb = || FeatureEmbedding::new(shape, dim, device);
        let mlp = |d_in: usize, hidden: &[usize], out: Option<usize>| {
            Mlp::new(d_in, hidden, out, config.dropout, device)
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
                let dnn = mlp(flat, &config.hidden_units, None);
                let head_in = flat + dnn.out_dim(flat);
                CtrModel::Dcn(Dcn {
                    embedding: emb(),
                    cross: (0..config.num_cross_layers)
                        .map(|_| linear(flat, flat, true, device))
                        .collect(),
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
                let e = m.embedding.forward(x);
                let [b, f, d] = e.dims();
                let x0 = e.reshape([b, f * d]);
                let mut xl = x0.clone();
                for layer in &m.cross {
                    xl = x0.clone() * layer.forward(xl.clone()) + xl;
                }
                let deep = m.dnn.forward(x0);
                m.head.forward(Tensor::cat(vec![xl, deep], 1))
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
        }
    }

    /// Probabilities `[B, T]`.
    pub fn predict(&self, x: &Inputs) -> Tensor<2> {
        sigmoid(self.forward(x))
    }
}

/// All experts at once, `[E, B, H]`: their first layers (which share the input) as one wide
/// matrix product, every later layer as one batched product over the experts. Same parameters
/// and same function as running each expert's `Mlp` in turn, in fewer and larger products,
/// which is what keeps a CPU's cores busy (and backward gets one input gradient, not E to add).
fn experts_forward(experts: &[Mlp], x0: Tensor<2>) -> Tensor<3> {
    let [b, _] = x0.dims();
    let ne = experts.len();
    let uniform = experts.iter().all(|m| {
        m.output.is_none()
            && m.layers.len() == experts[0].layers.len()
            && !m.layers.is_empty()
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
}

impl SeededInit {
    fn new(seed: u64) -> SeededInit {
        SeededInit {
            seed,
            path: Vec::new(),
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
        let is_bias = self.path.last().is_some_and(|p| p == "bias");
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
            } else {
                0.0
            };
            let values: Vec<f32> = if is_bias || std == 0.0 {
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

    fn shape() -> InputShape {
        InputShape {
            vocab_sizes: vec![5, 7, 3],
            num_numeric: 2,
            num_tasks: 2,
        }
    }

    fn batch(rows: usize) -> EncodedBatch {
        EncodedBatch {
            rows,
            categorical: (0..rows * 3).map(|i| (i % 2) as i32 + 1).collect(),
            numeric: (0..rows * 2).map(|i| (i % 5) as f32 / 5.0).collect(),
            labels: (0..rows * 2).map(|i| (i % 2) as f32).collect(),
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
        c
    }

    #[test]
    fn every_model_gives_one_logit_per_row_and_task() {
        let device = Device::flex();
        let x = Inputs::new(&batch(5), &shape(), &device).expect("inputs");
        for kind in [
            ModelKind::LR,
            ModelKind::FM,
            ModelKind::DeepFM,
            ModelKind::DCN,
            ModelKind::MMoE,
        ] {
            let mut s = shape();
            if !kind.is_multi_task() {
                s.num_tasks = 1;
            }
            let m = CtrModel::new(&small(kind), &s, &device).expect("model");
            assert_eq!(m.forward(&x).dims(), [5, s.num_tasks], "{kind:?}");
        }
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
                (0..5 * 20).map(|i| (i % 7) as f32 / 7.0 - 0.3).collect(),
                [5, 20],
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
    fn a_tiny_model_learns_a_separable_toy_set_and_survives_save_and_load() {
        // click = 1 exactly when the first field's token is 1 or 2.
        let rows = 64;
        let s = InputShape {
            vocab_sizes: vec![6],
            num_numeric: 1,
            num_tasks: 1,
        };
        let b = EncodedBatch {
            rows,
            categorical: (0..rows).map(|r| (r % 5) as i32 + 1).collect(),
            numeric: (0..rows).map(|r| (r % 7) as f32 / 7.0).collect(),
            labels: (0..rows)
                .map(|r| if r % 5 < 2 { 1.0 } else { 0.0 })
                .collect(),
        };
        let device = Device::flex().autodiff();
        let mut model = CtrModel::new(&small(ModelKind::FM), &s, &device).expect("model");
        let mut optim = AdamConfig::new().init();
        let x = Inputs::new(&b, &s, &device).expect("inputs");
        for _ in 0..200 {
            let loss = bce_with_logits(model.forward(&x), label_tensor(&b, 1, &device));
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(0.05, model, grads);
        }
        let probs = model
            .valid()
            .predict(&Inputs::new(&b, &s, &Device::flex()).expect("inputs"))
            .into_data()
            .try_into_vec::<f32>()
            .expect("f32");
        assert_eq!(crate::metrics::auc(&b.labels, &probs), Some(1.0));
        assert!(crate::metrics::logloss(&b.labels, &probs) < 0.1);

        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("m.bpk");
        model.valid().into_record().save(&path).expect("save");
        let fresh = CtrModel::new(&small(ModelKind::FM), &s, &Device::flex()).expect("model");
        let loaded = fresh
            .try_load_record(burn::store::ModuleRecord::load(&path).expect("load"))
            .expect("matches");
        let again = loaded
            .predict(&Inputs::new(&b, &s, &Device::flex()).expect("inputs"))
            .into_data()
            .try_into_vec::<f32>()
            .expect("f32");
        assert_eq!(again, probs, "save → load gives the same predictions");
    }
}
