//! Feature processing in FuxiCTR's manner: categorical vocabularies fitted on the training split
//! (tokens ordered by count, then token; index 0 `__PAD__`, `__OOV__` last, a minimum count),
//! numeric fields with nulls filled by 0 and MinMax-scaled with the training min/max. Fitting and
//! encoding work batch by batch, so memory follows the vocabularies, not the row count.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float32Array, Int32Array, Int64Array};
use arrow::datatypes::{DataType, Field, Float64Type, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};

use crate::error::{CtrError, Result};

pub const PAD_TOKEN: &str = "__PAD__";
pub const OOV_TOKEN: &str = "__OOV__";
pub const PROCESSOR_FILE: &str = "feature_processor.json";
pub const FEATURE_MAP_FILE: &str = "feature_map.json";
pub const VOCAB_FILE: &str = "feature_vocab.json";
/// The encoded parts' column of group keys (gAUC).
pub const GROUP_COLUMN: &str = "__group";

/// Which input columns play which part (FuxiCTR's `feature_cols` / `label_col`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureSpec {
    /// Carried through to inference output, not used as features.
    #[serde(default)]
    pub id_columns: Vec<String>,
    pub numeric: Vec<String>,
    pub categorical: Vec<String>,
    pub labels: Vec<String>,
    /// Tokens seen fewer times than this in the training split map to `__OOV__`.
    #[serde(default = "default_min_count")]
    pub min_categr_count: u64,
    /// A categorical or sequence field's own `min_categr_count`, by name, where it differs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub min_categr_counts: BTreeMap<String, u64>,
    /// How a numeric field is scaled, by name; MinMax for a field not named.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub normalizer: BTreeMap<String, Normalizer>,
    /// What stands for a missing numeric value, by name; 0 for a field not named.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fill_na: BTreeMap<String, f64>,
    /// Categorical fields that use another categorical field's vocabulary and embedding rows
    /// (FuxiCTR's `share_embedding`), by name: the tokens they add go after that field's own.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub share_embedding: BTreeMap<String, String>,
    /// Sequence fields: text columns of tokens split by `splitter` (FuxiCTR's `sequence`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sequence: Vec<SequenceSpec>,
    /// An id column (`id_columns`) whose values group rows for gAUC (FuxiCTR's `group_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    /// Categorical fields put in buckets instead of a vocabulary (FuxiCTR's
    /// `category_processor`), by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub bucketize: BTreeMap<String, Bucketize>,
    /// A feature's own `embedding_dim` as its FuxiCTR configuration gives it (the model's, or
    /// null: the only ones followed), by name; `feature_map.json` records it as FuxiCTR does.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub embedding_dims: BTreeMap<String, Option<usize>>,
    /// A categorical or sequence field's missing-value token (FuxiCTR's `fill_na`), by name,
    /// where it is not the empty token: a missing value becomes it, and it never enters the
    /// vocabulary (a categorical value equal to it encodes as `__OOV__`, a sequence token as
    /// padding), as FuxiCTR's tokenizer treats its `na_value`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub na_token: BTreeMap<String, String>,
    /// Categorical fields whose values are integers even where the input says text (FuxiCTR's
    /// `dtype: int` over CSV): their vocabulary is in ascending order of value, as FuxiCTR
    /// orders integer keys. A Parquet column of an integer type is such a field by its type.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub integer_keys: BTreeSet<String>,
}

/// How a categorical field without a vocabulary finds its embedding row (FuxiCTR's
/// `category_processor` with `num_buckets`): rows `0..num_buckets`, none reserved for padding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Bucketize {
    /// A number's bucket among the training split's quantiles: scikit-learn's
    /// `QuantileTransformer(n_quantiles=num_buckets + 1)` quantiles, inner ones as the
    /// boundaries, and the count of boundaries at or below the value (NumPy's `digitize`).
    QuantileBucket { num_buckets: usize },
    /// A token's 64-bit FNV-1a hash (of its UTF-8 text; the empty token when missing) modulo
    /// `num_buckets`.
    HashBucket { num_buckets: usize },
}

/// The most buckets a field may have (embedding rows).
pub const MAX_BUCKETS: usize = 1 << 26;

/// Values a quantile field keeps to fit its boundaries: exact up to this many training rows,
/// a seeded uniform sample of this many beyond.
pub const QUANTILE_SAMPLE: usize = 1 << 20;

impl Bucketize {
    pub fn num_buckets(self) -> usize {
        match self {
            Bucketize::QuantileBucket { num_buckets } | Bucketize::HashBucket { num_buckets } => {
                num_buckets
            }
        }
    }

    /// FuxiCTR's name for it, as `feature_map.json` records it.
    pub fn processor(self) -> &'static str {
        match self {
            Bucketize::QuantileBucket { .. } => "quantile_bucket",
            Bucketize::HashBucket { .. } => "hash_bucket",
        }
    }
}

/// One sequence field (FuxiCTR's `type: sequence`): its tokens get a vocabulary of their own,
/// index 0 pads, and each row's sequence is padded or truncated to `max_len` on the `padding`
/// side. Models see its embeddings pooled over the real tokens.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SequenceSpec {
    pub name: String,
    #[serde(default = "default_splitter")]
    pub splitter: String,
    /// 0: the longest sequence of the training split (fixed when the processor is fitted).
    #[serde(default)]
    pub max_len: usize,
    #[serde(default)]
    pub padding: Padding,
    #[serde(default)]
    pub pooling: Pooling,
    /// A categorical field whose vocabulary and embeddings this sequence shares (FuxiCTR's
    /// `share_embedding`): the tokens it adds go after that field's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share_embedding: Option<String>,
}

fn default_splitter() -> String {
    "^".into()
}

/// Which side of a sequence is padded, and truncated (FuxiCTR pads and truncates alike).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Padding {
    /// Tokens first, padding after; a long sequence keeps its first `max_len` tokens.
    #[default]
    Post,
    /// Padding first; a long sequence keeps its last `max_len` tokens.
    Pre,
}

/// How a sequence's token embeddings become the field's one embedding (FuxiCTR's
/// `feature_encoder`: `MaskedAveragePooling`, the default, or `MaskedSumPooling`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    #[default]
    Mean,
    Sum,
}

impl Pooling {
    /// FuxiCTR's name for it, as `feature_map.json` records it.
    pub fn encoder(self) -> &'static str {
        match self {
            Pooling::Mean => "layers.MaskedAveragePooling()",
            Pooling::Sum => "layers.MaskedSumPooling()",
        }
    }
}

/// FuxiCTR's numeric `normalizer`, fitted on the training split (after `fill_na`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Normalizer {
    /// The value as it is (FuxiCTR without a `normalizer`).
    None,
    /// scikit-learn's `MinMaxScaler`.
    #[default]
    MinMaxScaler,
    /// scikit-learn's `StandardScaler`: mean 0, population standard deviation 1.
    StandardScaler,
}

fn default_min_count() -> u64 {
    1
}

impl FeatureSpec {
    /// The columns of the sample campaign tables (`I1..I13`, `C1..C26`, ids `sample_id`,
    /// `user_id`) with the given labels.
    pub fn campaign(labels: &[&str]) -> FeatureSpec {
        FeatureSpec {
            id_columns: vec!["sample_id".into(), "user_id".into()],
            numeric: (1..=13).map(|i| format!("I{i}")).collect(),
            categorical: (1..=26).map(|i| format!("C{i}")).collect(),
            labels: labels.iter().map(|s| (*s).to_owned()).collect(),
            min_categr_count: 1,
            min_categr_counts: Default::default(),
            share_embedding: Default::default(),
            normalizer: BTreeMap::new(),
            fill_na: BTreeMap::new(),
            sequence: Vec::new(),
            group_id: None,
            bucketize: BTreeMap::new(),
            embedding_dims: BTreeMap::new(),
            na_token: BTreeMap::new(),
            integer_keys: BTreeSet::new(),
        }
    }

    /// The campaign columns with the `click_history` sequence (earlier clicked ads), sharing
    /// the ad field `C10`'s vocabulary and embedding: what DIN attends over.
    pub fn campaign_with_history(labels: &[&str]) -> FeatureSpec {
        let mut spec = FeatureSpec::campaign(labels);
        spec.sequence.push(SequenceSpec {
            name: "click_history".into(),
            splitter: "^".into(),
            max_len: 0,
            padding: Padding::Post,
            pooling: Pooling::Mean,
            share_embedding: Some("C10".into()),
        });
        spec
    }

    fn normalizer_of(&self, field: &str) -> Normalizer {
        self.normalizer.get(field).copied().unwrap_or_default()
    }

    fn min_count_of(&self, field: &str) -> u64 {
        self.min_categr_counts
            .get(field)
            .copied()
            .unwrap_or(self.min_categr_count)
            .max(1)
    }

    fn fill_of(&self, field: &str) -> f64 {
        self.fill_na.get(field).copied().unwrap_or(0.0)
    }

    /// A categorical or sequence field's missing-value token: the empty one by default.
    fn na_of(&self, field: &str) -> &str {
        self.na_token.get(field).map_or("", String::as_str)
    }

    pub fn validate(&self) -> Result<()> {
        if self.numeric.is_empty() && self.categorical.is_empty() && self.sequence.is_empty() {
            return Err(CtrError::Config(
                "the feature spec names no feature columns".into(),
            ));
        }
        if self.labels.is_empty() {
            return Err(CtrError::Config(
                "the feature spec names no label column".into(),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for name in self
            .id_columns
            .iter()
            .chain(&self.numeric)
            .chain(&self.categorical)
            .chain(self.sequence.iter().map(|q| &q.name))
            .chain(&self.labels)
        {
            if !seen.insert(name) {
                return Err(CtrError::Config(format!(
                    "column {name} appears twice in the feature spec"
                )));
            }
        }
        for name in self.normalizer.keys() {
            if !self.numeric.contains(name) {
                return Err(CtrError::Config(format!(
                    "normalizer: {name} is not a numeric feature"
                )));
            }
        }
        let quantile = |name: &String| {
            matches!(
                self.bucketize.get(name),
                Some(Bucketize::QuantileBucket { .. })
            )
        };
        for name in self.fill_na.keys() {
            if !self.numeric.contains(name) && !quantile(name) {
                return Err(CtrError::Config(format!(
                    "fill_na: {name} is not a numeric feature or a quantile-bucketed one"
                )));
            }
        }
        if let Some(name) = self.na_token.keys().find(|n| {
            let quantile = matches!(
                self.bucketize.get(*n),
                Some(Bucketize::QuantileBucket { .. })
            );
            quantile
                || (!self.categorical.contains(n) && !self.sequence.iter().any(|q| &q.name == *n))
        }) {
            return Err(CtrError::Config(format!(
                "fill_na: {name} is not a categorical or sequence feature of tokens"
            )));
        }
        if let Some(name) = (self.integer_keys.iter())
            .find(|n| !self.categorical.contains(n) || self.bucketize.contains_key(*n))
        {
            return Err(CtrError::Config(format!(
                "dtype int: {name} is not a categorical feature of tokens"
            )));
        }
        if let Some(name) = self.embedding_dims.keys().find(|n| {
            !self.numeric.contains(n)
                && !self.categorical.contains(n)
                && !self.sequence.iter().any(|q| &q.name == *n)
        }) {
            return Err(CtrError::Config(format!(
                "embedding_dim: {name} is not a feature"
            )));
        }
        for (name, b) in &self.bucketize {
            let n = b.num_buckets();
            if !self.categorical.contains(name) {
                return Err(CtrError::Config(format!(
                    "{}: {name} is not a categorical feature",
                    b.processor()
                )));
            }
            if n == 0 || n > MAX_BUCKETS {
                return Err(CtrError::Config(format!(
                    "{}: {name}: num_buckets must be between 1 and {MAX_BUCKETS}, not {n}",
                    b.processor()
                )));
            }
            let shared = self.share_embedding.contains_key(name)
                || self.share_embedding.values().any(|o| o == name)
                || (self.sequence.iter()).any(|q| q.share_embedding.as_ref() == Some(name));
            if shared || self.min_categr_counts.contains_key(name) {
                return Err(CtrError::Config(format!(
                    "{}: {name} has buckets, not a vocabulary: it cannot share embeddings or have a min_categr_count",
                    b.processor()
                )));
            }
        }
        for (name, owner) in &self.share_embedding {
            let categorical = |n: &String| self.categorical.contains(n);
            if !categorical(name) || !categorical(owner) || name == owner {
                return Err(CtrError::Config(format!(
                    "share_embedding of {name}: {owner} must be another categorical feature"
                )));
            }
            if self.share_embedding.contains_key(owner) {
                return Err(CtrError::Config(format!(
                    "share_embedding of {name}: {owner} shares another field's embedding itself; \
                     name that field"
                )));
            }
        }
        for (name, count) in &self.min_categr_counts {
            let tokens =
                self.categorical.contains(name) || self.sequence.iter().any(|q| &q.name == name);
            if !tokens || *count == 0 {
                return Err(CtrError::Config(format!(
                    "min_categr_count of {name}: must be a count >= 1 of a categorical or sequence feature"
                )));
            }
        }
        if let Some(q) = self.sequence.iter().find(|q| {
            q.share_embedding
                .as_ref()
                .is_some_and(|c| !self.categorical.contains(c))
        }) {
            return Err(CtrError::Config(format!(
                "sequence {}: share_embedding must name a categorical feature",
                q.name
            )));
        }
        if let Some(g) = self
            .group_id
            .as_ref()
            .filter(|g| !self.id_columns.contains(g))
        {
            return Err(CtrError::Config(format!(
                "group_id: {g} is not a meta (id) column"
            )));
        }
        if let Some(q) = self.sequence.iter().find(|q| q.splitter.is_empty()) {
            return Err(CtrError::Config(format!(
                "sequence {}: splitter must not be empty",
                q.name
            )));
        }
        if let Some((name, v)) = self.fill_na.iter().find(|(_, v)| !v.is_finite()) {
            return Err(CtrError::Config(format!(
                "fill_na: {name}: {v} is not a finite number"
            )));
        }
        Ok(())
    }

    pub fn num_fields(&self) -> usize {
        self.numeric.len() + self.categorical.len() + self.sequence.len()
    }

    fn categorical_index(&self, name: &str) -> Option<usize> {
        self.categorical.iter().position(|n| n == name)
    }

    /// The categorical field (its index) whose embedding categorical field `i` shares, if any.
    pub fn categorical_owner(&self, i: usize) -> Option<usize> {
        self.categorical_index(self.share_embedding.get(self.categorical.get(i)?)?)
    }

    /// The categorical field (its index) whose embedding sequence `q` shares, if any.
    pub fn shared_field(&self, q: &SequenceSpec) -> Option<usize> {
        self.categorical_index(q.share_embedding.as_ref()?)
    }

    /// Token positions per row over all sequence fields (their `max_len`s once fitted).
    pub fn sequence_width(&self) -> usize {
        self.sequence.iter().map(|q| q.max_len).sum()
    }
}

/// One categorical field's fitted vocabulary: `tokens[i]` has index `i + 1`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Vocabulary {
    pub tokens: Vec<String>,
    #[serde(skip)]
    index: HashMap<String, i32>,
}

impl Vocabulary {
    fn from_tokens(tokens: Vec<String>) -> Vocabulary {
        let mut v = Vocabulary {
            tokens,
            index: HashMap::new(),
        };
        v.rebuild_index();
        v
    }

    fn rebuild_index(&mut self) {
        self.index = self
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as i32 + 1))
            .collect();
    }

    pub fn oov_index(&self) -> i32 {
        self.tokens.len() as i32 + 1
    }

    /// `__PAD__` + tokens + `__OOV__`.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len() + 2
    }

    pub fn lookup(&self, token: Option<&str>) -> i32 {
        token
            .and_then(|t| self.index.get(t).copied())
            .unwrap_or_else(|| self.oov_index())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct NumericStats {
    pub min: f64,
    pub max: f64,
    #[serde(default)]
    pub mean: f64,
    /// Population standard deviation (scikit-learn's).
    #[serde(default)]
    pub std: f64,
    #[serde(default)]
    pub normalizer: Normalizer,
}

impl NumericStats {
    pub fn scale(&self, x: f64) -> f32 {
        match self.normalizer {
            Normalizer::None => x as f32,
            Normalizer::MinMaxScaler => {
                let range = self.max - self.min;
                // A constant column scales like scikit-learn's: shifted, not divided.
                if range > 0.0 {
                    ((x - self.min) / range) as f32
                } else {
                    (x - self.min) as f32
                }
            }
            // scikit-learn divides by 1 where the deviation is 0.
            Normalizer::StandardScaler if self.std > 0.0 => ((x - self.mean) / self.std) as f32,
            Normalizer::StandardScaler => (x - self.mean) as f32,
        }
    }
}

/// Running min, max, mean and variance (Welford's).
#[derive(Clone, Copy, Debug)]
struct Moments {
    min: f64,
    max: f64,
    n: u64,
    mean: f64,
    m2: f64,
}

impl Moments {
    fn new(x: f64) -> Moments {
        Moments {
            min: x,
            max: x,
            n: 0,
            mean: 0.0,
            m2: 0.0,
        }
    }

    fn push(&mut self, x: f64) {
        self.min = self.min.min(x);
        self.max = self.max.max(x);
        self.n += 1;
        let d = x - self.mean;
        self.mean += d / self.n as f64;
        self.m2 += d * (x - self.mean);
    }
}

/// Rows encoded for a model: row-major matrices.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EncodedBatch {
    pub rows: usize,
    /// `rows × num categorical`, vocabulary indices.
    pub categorical: Vec<i32>,
    /// `rows × num numeric`, scaled values.
    pub numeric: Vec<f32>,
    /// `rows × num labels` (empty for inference input).
    pub labels: Vec<f32>,
    /// `rows × Σ max_len`: each sequence field's token indices (0 pads), fields in order.
    pub sequence: Vec<i32>,
    /// One group key per row (a hash of the `group_id` column's value) when the spec names
    /// one; empty otherwise.
    pub groups: Vec<i64>,
}

impl EncodedBatch {
    /// Rows `[start, end)` as a new batch.
    pub fn slice(&self, start: usize, end: usize, spec: &FeatureSpec) -> EncodedBatch {
        let (c, n, l) = (
            spec.categorical.len(),
            spec.numeric.len(),
            self.label_width(),
        );
        let w = spec.sequence_width();
        EncodedBatch {
            rows: end - start,
            categorical: self.categorical[start * c..end * c].to_vec(),
            numeric: self.numeric[start * n..end * n].to_vec(),
            labels: if l == 0 {
                Vec::new()
            } else {
                self.labels[start * l..end * l].to_vec()
            },
            sequence: self.sequence[start * w..end * w].to_vec(),
            groups: if self.groups.is_empty() {
                Vec::new()
            } else {
                self.groups[start..end].to_vec()
            },
        }
    }

    /// Appends `other`'s rows (encoded with the same spec).
    pub fn append(&mut self, other: EncodedBatch) {
        self.rows += other.rows;
        self.categorical.extend(other.categorical);
        self.numeric.extend(other.numeric);
        self.labels.extend(other.labels);
        self.sequence.extend(other.sequence);
        self.groups.extend(other.groups);
    }

    pub fn label_width(&self) -> usize {
        self.labels.len().checked_div(self.rows).unwrap_or(0)
    }

    /// `parts` consecutive row ranges of equal size (the last may be shorter, empty ones are
    /// left out): how a batch is shared between threads or devices.
    pub fn split_rows(&self, parts: usize, spec: &FeatureSpec) -> Vec<EncodedBatch> {
        let parts = parts.max(1);
        let per = self.rows.div_ceil(parts);
        (0..parts)
            .map(|i| (i * per..((i + 1) * per).min(self.rows)).collect::<Vec<usize>>())
            .filter(|rows| !rows.is_empty())
            .map(|rows| self.permute(&rows, spec))
            .collect()
    }

    /// Reorders rows by `order` (a permutation of `0..rows`).
    pub fn permute(&self, order: &[usize], spec: &FeatureSpec) -> EncodedBatch {
        let (c, n, l) = (
            spec.categorical.len(),
            spec.numeric.len(),
            self.label_width(),
        );
        let w = spec.sequence_width();
        let mut out = EncodedBatch {
            rows: order.len(),
            categorical: Vec::with_capacity(order.len() * c),
            numeric: Vec::with_capacity(order.len() * n),
            labels: Vec::with_capacity(order.len() * l),
            sequence: Vec::with_capacity(order.len() * w),
            groups: Vec::with_capacity(if self.groups.is_empty() {
                0
            } else {
                order.len()
            }),
        };
        for &r in order {
            out.categorical
                .extend_from_slice(&self.categorical[r * c..(r + 1) * c]);
            out.numeric
                .extend_from_slice(&self.numeric[r * n..(r + 1) * n]);
            out.labels
                .extend_from_slice(&self.labels[r * l..(r + 1) * l]);
            out.sequence
                .extend_from_slice(&self.sequence[r * w..(r + 1) * w]);
            if let Some(g) = self.groups.get(r) {
                out.groups.push(*g);
            }
        }
        out
    }

    /// The Arrow form written to the encoded `train/` and `valid/` parts.
    pub fn to_record_batch(&self, spec: &FeatureSpec) -> Result<RecordBatch> {
        let schema = encoded_schema(spec, self.label_width() > 0);
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
        let (c, n, l) = (
            spec.categorical.len(),
            spec.numeric.len(),
            self.label_width(),
        );
        for j in 0..n {
            columns.push(Arc::new(Float32Array::from_iter_values(
                (0..self.rows).map(|r| self.numeric[r * n + j]),
            )));
        }
        for j in 0..c {
            columns.push(Arc::new(Int32Array::from_iter_values(
                (0..self.rows).map(|r| self.categorical[r * c + j]),
            )));
        }
        let w = spec.sequence_width();
        for j in 0..w {
            columns.push(Arc::new(Int32Array::from_iter_values(
                (0..self.rows).map(|r| self.sequence[r * w + j]),
            )));
        }
        for j in 0..l {
            columns.push(Arc::new(Float32Array::from_iter_values(
                (0..self.rows).map(|r| self.labels[r * l + j]),
            )));
        }
        if spec.group_id.is_some() && l > 0 {
            if self.groups.len() != self.rows {
                return Err(CtrError::Data(format!(
                    "{} rows but {} group keys",
                    self.rows,
                    self.groups.len()
                )));
            }
            columns.push(Arc::new(Int64Array::from(self.groups.clone())));
        }
        Ok(RecordBatch::try_new(schema, columns)?)
    }

    /// Reads back what [`EncodedBatch::to_record_batch`] wrote.
    pub fn from_record_batch(batch: &RecordBatch, spec: &FeatureSpec) -> Result<EncodedBatch> {
        let rows = batch.num_rows();
        let (c, n) = (spec.categorical.len(), spec.numeric.len());
        let with_labels = spec
            .labels
            .iter()
            .all(|l| batch.column_by_name(l).is_some());
        let l = if with_labels { spec.labels.len() } else { 0 };
        let w = spec.sequence_width();
        let mut out = EncodedBatch {
            rows,
            categorical: vec![0; rows * c],
            numeric: vec![0.0; rows * n],
            labels: vec![0.0; rows * l],
            sequence: vec![0; rows * w],
            groups: Vec::new(),
        };
        let f32_column = |name: &str| -> Result<&Float32Array> {
            batch
                .column_by_name(name)
                .and_then(|a| a.as_any().downcast_ref::<Float32Array>())
                .ok_or_else(|| CtrError::Data(format!("encoded data lacks Float32 column {name}")))
        };
        for (j, name) in spec.numeric.iter().enumerate() {
            for (r, v) in f32_column(name)?.values().iter().enumerate() {
                out.numeric[r * n + j] = *v;
            }
        }
        let i32_column = |name: &str| -> Result<&Int32Array> {
            batch
                .column_by_name(name)
                .and_then(|a| a.as_any().downcast_ref::<Int32Array>())
                .ok_or_else(|| CtrError::Data(format!("encoded data lacks Int32 column {name}")))
        };
        for (j, name) in spec.categorical.iter().enumerate() {
            for (r, v) in i32_column(name)?.values().iter().enumerate() {
                out.categorical[r * c + j] = *v;
            }
        }
        for (j, name) in sequence_columns(spec).iter().enumerate() {
            for (r, v) in i32_column(name)?.values().iter().enumerate() {
                out.sequence[r * w + j] = *v;
            }
        }
        for (j, name) in spec.labels.iter().enumerate().take(l) {
            for (r, v) in f32_column(name)?.values().iter().enumerate() {
                out.labels[r * l + j] = *v;
            }
        }
        if spec.group_id.is_some() && with_labels {
            let groups = batch
                .column_by_name(GROUP_COLUMN)
                .and_then(|a| a.as_any().downcast_ref::<Int64Array>())
                .ok_or_else(|| {
                    CtrError::Data(format!("encoded data lacks Int64 column {GROUP_COLUMN}"))
                })?;
            out.groups = groups.values().to_vec();
        }
        Ok(out)
    }
}

pub fn encoded_schema(spec: &FeatureSpec, with_labels: bool) -> SchemaRef {
    let mut fields: Vec<Field> = Vec::new();
    fields.extend(
        spec.numeric
            .iter()
            .map(|n| Field::new(n, DataType::Float32, false)),
    );
    fields.extend(
        spec.categorical
            .iter()
            .map(|n| Field::new(n, DataType::Int32, false)),
    );
    fields.extend(
        sequence_columns(spec)
            .iter()
            .map(|n| Field::new(n, DataType::Int32, false)),
    );
    if with_labels {
        fields.extend(
            spec.labels
                .iter()
                .map(|n| Field::new(n, DataType::Float32, false)),
        );
    }
    if with_labels && spec.group_id.is_some() {
        fields.push(Field::new(GROUP_COLUMN, DataType::Int64, false));
    }
    Arc::new(Schema::new(fields))
}

/// 64-bit FNV-1a of a text's UTF-8 bytes.
fn fnv1a(value: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in value.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A group's value as a key: only equality matters.
fn group_key(value: &str) -> i64 {
    fnv1a(value) as i64
}

/// The encoded parts' columns of the sequence fields: one per position, `NAME__0`, `NAME__1`…
fn sequence_columns(spec: &FeatureSpec) -> Vec<String> {
    spec.sequence
        .iter()
        .flat_map(|q| (0..q.max_len).map(move |i| format!("{}__{i}", q.name)))
        .collect()
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef> {
    batch
        .column_by_name(name)
        .ok_or_else(|| CtrError::Data(format!("input has no column {name}")))
}

/// A column as `f64` values with nulls and NaNs filled by `fill` (FuxiCTR's `fill_na`, 0 by
/// default for numerics).
fn numeric_values(batch: &RecordBatch, name: &str, fill: f64) -> Result<Vec<f64>> {
    let col = column(batch, name)?;
    if !col.data_type().is_numeric() {
        return Err(CtrError::Data(format!(
            "numeric column {name} has type {}",
            col.data_type()
        )));
    }
    let cast = arrow::compute::cast(col, &DataType::Float64)?;
    let values = cast.as_primitive::<Float64Type>();
    Ok((0..values.len())
        .map(|i| {
            if values.is_null(i) || values.value(i).is_nan() {
                fill
            } else {
                values.value(i)
            }
        })
        .collect())
}

/// A categorical column as strings (numbers are tokens too); nulls stay `None`.
fn categorical_values(batch: &RecordBatch, name: &str) -> Result<ArrayRef> {
    let col = column(batch, name)?;
    match col.data_type() {
        DataType::Utf8 => Ok(col.clone()),
        t if t.is_numeric() || matches!(t, DataType::LargeUtf8 | DataType::Utf8View) => {
            Ok(arrow::compute::cast(col, &DataType::Utf8)?)
        }
        t => Err(CtrError::Data(format!(
            "categorical column {name} has type {t}"
        ))),
    }
}

/// The label columns as 0/1 floats; anything else is a data error naming the column.
pub(crate) fn label_values(batch: &RecordBatch, name: &str) -> Result<Vec<f32>> {
    // A NaN label stays NaN, and is refused below like any value other than 0 and 1.
    let values = numeric_values(batch, name, f64::NAN)?;
    let col = column(batch, name)?;
    if col.null_count() > 0 {
        return Err(CtrError::Data(format!(
            "label column {name} has null values"
        )));
    }
    values
        .into_iter()
        .map(|v| {
            if v == 0.0 || v == 1.0 {
                Ok(v as f32)
            } else {
                Err(CtrError::Data(format!(
                    "label column {name} has value {v} (labels must be 0 or 1)"
                )))
            }
        })
        .collect()
}

/// Accumulates token counts and numeric ranges over the training split.
pub struct FeatureFitter {
    spec: FeatureSpec,
    counts: Vec<HashMap<String, u64>>,
    /// Per categorical field: the values a quantile-bucketed one has seen (a sample beyond
    /// `QUANTILE_SAMPLE`), and how many.
    quantile_values: Vec<(Vec<f64>, u64)>,
    sampler: crate::rng::SplitMix64,
    ranges: Vec<Option<Moments>>,
    /// Per sequence field: token counts and the longest sequence seen.
    sequence_counts: Vec<HashMap<String, u64>>,
    longest: Vec<usize>,
    rows: u64,
    /// Per categorical field: its values are integers (by the spec, or by the input's type).
    integer: Vec<bool>,
}

impl FeatureFitter {
    pub fn new(spec: FeatureSpec) -> Result<FeatureFitter> {
        spec.validate()?;
        Ok(FeatureFitter {
            counts: vec![HashMap::new(); spec.categorical.len()],
            quantile_values: vec![(Vec::new(), 0); spec.categorical.len()],
            sampler: crate::rng::SplitMix64::new(0x5eed_b0c7),
            ranges: vec![None; spec.numeric.len()],
            sequence_counts: vec![HashMap::new(); spec.sequence.len()],
            longest: vec![0; spec.sequence.len()],
            integer: (spec.categorical.iter())
                .map(|n| spec.integer_keys.contains(n))
                .collect(),
            spec,
            rows: 0,
        })
    }

    /// Counts the rows of `batch` for which `keep(row)` holds.
    pub fn observe(&mut self, batch: &RecordBatch, keep: &[bool]) -> Result<()> {
        for (j, name) in self.spec.numeric.iter().enumerate() {
            for (x, _) in numeric_values(batch, name, self.spec.fill_of(name))?
                .into_iter()
                .zip(keep)
                .filter(|(_, k)| **k)
            {
                self.ranges[j].get_or_insert(Moments::new(x)).push(x);
            }
        }
        for (j, name) in self.spec.categorical.iter().enumerate() {
            match self.spec.bucketize.get(name) {
                Some(Bucketize::HashBucket { .. }) => continue,
                Some(Bucketize::QuantileBucket { .. }) => {
                    let (kept, seen) = &mut self.quantile_values[j];
                    for (x, _) in numeric_values(batch, name, self.spec.fill_of(name))?
                        .into_iter()
                        .zip(keep)
                        .filter(|(_, k)| **k)
                    {
                        *seen += 1;
                        // Algorithm R: every value seen so far is kept with equal chance.
                        if kept.len() < QUANTILE_SAMPLE {
                            kept.push(x);
                        } else {
                            let at = self.sampler.below(*seen as usize);
                            if let Some(slot) = kept.get_mut(at) {
                                *slot = x;
                            }
                        }
                    }
                    continue;
                }
                None => {}
            }
            if column(batch, name)?.data_type().is_integer() {
                self.integer[j] = true;
            }
            let col = categorical_values(batch, name)?;
            let strings = col.as_string::<i32>();
            let counts = &mut self.counts[j];
            // A missing value is the missing-value token, which no vocabulary holds.
            let na = self.spec.na_of(name);
            for (i, k) in keep.iter().enumerate() {
                if *k && !strings.is_null(i) && strings.value(i) != na {
                    let token = strings.value(i);
                    match counts.get_mut(token) {
                        Some(c) => *c += 1,
                        None => {
                            counts.insert(token.to_owned(), 1);
                        }
                    }
                }
            }
        }
        for (j, q) in self.spec.sequence.iter().enumerate() {
            let col = categorical_values(batch, &q.name)?;
            let strings = col.as_string::<i32>();
            let counts = &mut self.sequence_counts[j];
            let na = self.spec.na_of(&q.name);
            for (i, k) in keep.iter().enumerate() {
                if !*k {
                    continue;
                }
                // A missing sequence is the missing-value text: one padding token.
                let text = if strings.is_null(i) {
                    na
                } else {
                    strings.value(i)
                };
                let mut len = 0;
                for token in text.split(q.splitter.as_str()) {
                    len += 1;
                    if token == na {
                        continue;
                    }
                    match counts.get_mut(token) {
                        Some(c) => *c += 1,
                        None => {
                            counts.insert(token.to_owned(), 1);
                        }
                    }
                }
                self.longest[j] = self.longest[j].max(len);
            }
        }
        self.rows += keep.iter().filter(|k| **k).count() as u64;
        Ok(())
    }

    pub fn finish(self, dataset_id: &str) -> Result<FeatureProcessor> {
        if self.rows == 0 {
            return Err(CtrError::Data("the training split has no rows".into()));
        }
        let spec = &self.spec;
        // FuxiCTR's `build_vocab`: by count (then token), those seen often enough; integer keys
        // then in ascending order of value.
        let fit = |counts: HashMap<String, u64>, name: &String, integer: bool| {
            let min_count = spec.min_count_of(name);
            let mut tokens: Vec<(String, u64)> = counts
                .into_iter()
                .filter(|(_, c)| *c >= min_count)
                .collect();
            tokens.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            let mut tokens: Vec<String> = tokens.into_iter().map(|(t, _)| t).collect();
            if integer {
                tokens.sort_by_cached_key(|t| t.trim().parse::<i128>().map_err(|_| t.clone()));
            }
            Vocabulary::from_tokens(tokens)
        };
        let mut vocabularies: Vec<Vocabulary> = (self.counts.into_iter())
            .zip(&spec.categorical)
            .zip(&self.integer)
            .map(|((counts, name), integer)| fit(counts, name, *integer))
            .collect();
        let mut sequence_vocabularies: Vec<Vocabulary> = (self.sequence_counts.into_iter())
            .zip(spec.sequence.iter().map(|q| &q.name))
            .map(|(counts, name)| fit(counts, name, false))
            .collect();
        // Shared embeddings, as FuxiCTR's `merge_vocab`: a sharing field's new tokens follow the
        // owner's, `__OOV__` moves to the end, and both use the merged vocabulary (categorical
        // fields merge first, then sequences, each in the spec's order).
        let merge = |owner: &mut Vocabulary, own: &Vocabulary| {
            let mut tokens = owner.tokens.clone();
            tokens.extend(
                own.tokens
                    .iter()
                    .filter(|t| !owner.index.contains_key(t.as_str()))
                    .cloned(),
            );
            *owner = Vocabulary::from_tokens(tokens);
        };
        let categorical_shares: Vec<(usize, usize)> = (0..spec.categorical.len())
            .filter_map(|i| Some((i, spec.categorical_owner(i)?)))
            .collect();
        for &(i, o) in &categorical_shares {
            let own = vocabularies[i].clone();
            merge(&mut vocabularies[o], &own);
        }
        let shares: Vec<(usize, usize)> = (spec.sequence.iter().enumerate())
            .filter_map(|(j, q)| Some((j, spec.shared_field(q)?)))
            .collect();
        for &(j, i) in &shares {
            merge(&mut vocabularies[i], &sequence_vocabularies[j]);
        }
        for &(i, o) in &categorical_shares {
            vocabularies[i] = vocabularies[o].clone();
        }
        for &(j, i) in &shares {
            sequence_vocabularies[j] = vocabularies[i].clone();
        }
        let mut spec = self.spec;
        // From here on the spec says each sequence's length.
        for (q, longest) in spec.sequence.iter_mut().zip(self.longest) {
            if q.max_len == 0 {
                q.max_len = longest.max(1);
            }
        }
        let boundaries: BTreeMap<String, Vec<f64>> = (spec.categorical.iter())
            .zip(self.quantile_values)
            .filter_map(|(name, (values, _))| match spec.bucketize.get(name) {
                Some(Bucketize::QuantileBucket { num_buckets }) => {
                    Some((name.clone(), quantile_boundaries(values, *num_buckets)))
                }
                _ => None,
            })
            .collect();
        let numeric = self
            .ranges
            .into_iter()
            .zip(&spec.numeric)
            .map(|(r, name)| {
                let m = r.unwrap_or(Moments::new(0.0));
                NumericStats {
                    min: m.min,
                    max: m.max,
                    mean: m.mean,
                    std: if m.n > 0 {
                        (m.m2 / m.n as f64).sqrt()
                    } else {
                        0.0
                    },
                    normalizer: spec.normalizer_of(name),
                }
            })
            .collect();
        Ok(FeatureProcessor {
            dataset_id: dataset_id.to_owned(),
            spec,
            vocabularies,
            numeric,
            sequence_vocabularies,
            boundaries,
        })
    }
}

/// The inner boundaries of `num_buckets` quantile buckets of `values`, as scikit-learn's
/// `QuantileTransformer(n_quantiles=num_buckets + 1).quantiles_[1:-1]` (NumPy's linear
/// percentiles at evenly spaced references, fewer when there are fewer values, made
/// non-decreasing).
fn quantile_boundaries(mut values: Vec<f64>, num_buckets: usize) -> Vec<f64> {
    values.sort_unstable_by(f64::total_cmp);
    let n = values.len();
    let quantiles = (num_buckets + 1).min(n);
    if quantiles < 3 {
        return Vec::new();
    }
    let mut out = Vec::with_capacity(quantiles - 2);
    for k in 1..quantiles - 1 {
        // NumPy's "linear" method: the rank (n - 1)·q between its two neighbours.
        let rank = (n - 1) as f64 * (k as f64 / (quantiles - 1) as f64);
        let lo = rank.floor() as usize;
        let hi = (lo + 1).min(n - 1);
        let x = values[lo] + (rank - lo as f64) * (values[hi] - values[lo]);
        let last = out.last().copied().unwrap_or(f64::NEG_INFINITY);
        out.push(x.max(last));
    }
    out
}

/// FuxiCTR's `feature_map.json`, its keys in FuxiCTR's order (a struct keeps its fields'
/// order where a JSON map would sort them).
#[derive(Serialize)]
struct FeatureMap<'a> {
    dataset_id: &'a str,
    num_fields: usize,
    total_features: usize,
    input_length: usize,
    labels: &'a [String],
    features: Vec<BTreeMap<&'a str, FeatureEntry>>,
}

#[derive(Serialize)]
struct FeatureEntry {
    source: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    feature_encoder: Option<&'static str>,
    /// Given: the feature's own `embedding_dim` (a number or null).
    #[serde(skip_serializing_if = "Option::is_none")]
    embedding_dim: Option<Option<usize>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    share_embedding: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    category_processor: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    padding_idx: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_len: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    vocab_size: Option<usize>,
}

/// The fitted encoders, saved beside the dataset and reused for validation and inference.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FeatureProcessor {
    pub dataset_id: String,
    pub spec: FeatureSpec,
    pub vocabularies: Vec<Vocabulary>,
    pub numeric: Vec<NumericStats>,
    /// One per sequence field.
    #[serde(default)]
    pub sequence_vocabularies: Vec<Vocabulary>,
    /// The inner boundaries of each quantile-bucketed field, ascending.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub boundaries: BTreeMap<String, Vec<f64>>,
}

impl FeatureProcessor {
    /// Vocabulary sizes per categorical field (padding and OOV included).
    pub fn vocab_sizes(&self) -> Vec<usize> {
        (self.spec.categorical.iter())
            .zip(&self.vocabularies)
            .map(|(name, v)| match self.spec.bucketize.get(name) {
                Some(b) => b.num_buckets(),
                None => v.vocab_size(),
            })
            .collect()
    }

    /// Encodes one batch of raw rows; `with_labels` also reads (and checks) the label columns.
    pub fn encode(&self, batch: &RecordBatch, with_labels: bool) -> Result<EncodedBatch> {
        let rows = batch.num_rows();
        let (c, n) = (self.spec.categorical.len(), self.spec.numeric.len());
        let w = self.spec.sequence_width();
        let mut out = EncodedBatch {
            rows,
            categorical: vec![0; rows * c],
            numeric: vec![0.0; rows * n],
            labels: Vec::new(),
            sequence: vec![0; rows * w],
            groups: Vec::new(),
        };
        let mut start = 0;
        for (q, vocab) in self.spec.sequence.iter().zip(&self.sequence_vocabularies) {
            let col = categorical_values(batch, &q.name)?;
            let strings = col.as_string::<i32>();
            let mut ids = Vec::with_capacity(q.max_len);
            let na = self.spec.na_of(&q.name);
            for r in 0..rows {
                let text = if strings.is_null(r) {
                    na
                } else {
                    strings.value(r)
                };
                ids.clear();
                ids.extend(
                    text.split(q.splitter.as_str())
                        .map(|t| if t == na { 0 } else { vocab.lookup(Some(t)) }),
                );
                // Keras' pad_sequences, as FuxiCTR calls it: pad and truncate on one side.
                let kept = match q.padding {
                    Padding::Post => &ids[..ids.len().min(q.max_len)],
                    Padding::Pre => &ids[ids.len().saturating_sub(q.max_len)..],
                };
                let row = &mut out.sequence[r * w + start..r * w + start + q.max_len];
                let at = match q.padding {
                    Padding::Post => 0,
                    Padding::Pre => q.max_len - kept.len(),
                };
                row[at..at + kept.len()].copy_from_slice(kept);
            }
            start += q.max_len;
        }
        for (j, name) in self.spec.numeric.iter().enumerate() {
            let stats = self.numeric[j];
            for (r, x) in numeric_values(batch, name, self.spec.fill_of(name))?
                .into_iter()
                .enumerate()
            {
                out.numeric[r * n + j] = stats.scale(x);
            }
        }
        for (j, name) in self.spec.categorical.iter().enumerate() {
            match self.spec.bucketize.get(name) {
                Some(Bucketize::QuantileBucket { .. }) => {
                    let bounds = self.boundaries.get(name).map_or(&[][..], Vec::as_slice);
                    for (r, x) in numeric_values(batch, name, self.spec.fill_of(name))?
                        .into_iter()
                        .enumerate()
                    {
                        // At most `num_buckets - 1` boundaries: a row of the table.
                        out.categorical[r * c + j] = bounds.partition_point(|b| *b <= x) as i32;
                    }
                    continue;
                }
                Some(Bucketize::HashBucket { num_buckets }) => {
                    let col = categorical_values(batch, name)?;
                    let strings = col.as_string::<i32>();
                    let na = self.spec.na_of(name);
                    for r in 0..rows {
                        let token = if strings.is_null(r) {
                            na
                        } else {
                            strings.value(r)
                        };
                        out.categorical[r * c + j] = (fnv1a(token) % *num_buckets as u64) as i32;
                    }
                    continue;
                }
                None => {}
            }
            let col = categorical_values(batch, name)?;
            let strings = col.as_string::<i32>();
            let vocab = &self.vocabularies[j];
            // FuxiCTR fills a missing value with the missing-value token, then looks it up
            // (only a vocabulary merged from another field can hold it).
            let na = self.spec.na_of(name);
            for r in 0..rows {
                let token = if strings.is_null(r) {
                    na
                } else {
                    strings.value(r)
                };
                out.categorical[r * c + j] = vocab.lookup(Some(token));
            }
        }
        if with_labels && let Some(g) = &self.spec.group_id {
            // Only equality matters for gAUC: a stable hash of the value stands for it.
            let col = categorical_values(batch, g)?;
            let strings = col.as_string::<i32>();
            out.groups = (0..rows)
                .map(|r| {
                    if strings.is_null(r) {
                        i64::MIN
                    } else {
                        group_key(strings.value(r))
                    }
                })
                .collect();
        }
        if with_labels {
            let l = self.spec.labels.len();
            out.labels = vec![0.0; rows * l];
            for (j, name) in self.spec.labels.iter().enumerate() {
                for (r, y) in label_values(batch, name)?.into_iter().enumerate() {
                    out.labels[r * l + j] = y;
                }
            }
        }
        Ok(out)
    }

    /// Writes `feature_processor.json`, and FuxiCTR's `feature_map.json` and
    /// `feature_vocab.json`, each to a temporary name first.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(CtrError::io(dir))?;
        let processor = serde_json::to_vec(self)
            .map_err(|e| CtrError::Data(format!("cannot serialise the feature processor: {e}")))?;
        write_atomic(&dir.join(PROCESSOR_FILE), &processor)?;
        write_atomic(
            &dir.join(FEATURE_MAP_FILE),
            self.feature_map_json().as_bytes(),
        )?;
        write_atomic(&dir.join(VOCAB_FILE), self.vocab_json().as_bytes())?;
        Ok(())
    }

    pub fn load(dir: &Path) -> Result<FeatureProcessor> {
        let path = dir.join(PROCESSOR_FILE);
        let bytes = std::fs::read(&path).map_err(CtrError::io(&path))?;
        let mut p: FeatureProcessor =
            serde_json::from_slice(&bytes).map_err(|e| CtrError::Corrupt {
                path: path.clone(),
                message: format!("not a feature processor: {e}"),
            })?;
        if p.vocabularies.len() != p.spec.categorical.len()
            || p.numeric.len() != p.spec.numeric.len()
            || p.sequence_vocabularies.len() != p.spec.sequence.len()
            || p.spec.sequence.iter().any(|q| q.max_len == 0)
            || (p.spec.bucketize.iter()).any(|(name, b)| {
                matches!(b, Bucketize::QuantileBucket { num_buckets }
                    if p.boundaries.get(name).is_none_or(|v| v.len() >= *num_buckets))
            })
        {
            return Err(CtrError::Corrupt {
                path,
                message: "encoders do not match the feature spec".into(),
            });
        }
        for v in p
            .vocabularies
            .iter_mut()
            .chain(&mut p.sequence_vocabularies)
        {
            v.rebuild_index();
        }
        Ok(p)
    }

    /// FuxiCTR's `feature_map.json`: numeric fields first, then categorical, 4-space indent.
    pub fn feature_map_json(&self) -> String {
        let entry =
            |kind, pooling: Option<Pooling>, max_len, vocab_size: Option<usize>| FeatureEntry {
                source: "",
                kind,
                feature_encoder: pooling.map(Pooling::encoder),
                embedding_dim: None,
                share_embedding: None,
                category_processor: None,
                padding_idx: vocab_size.map(|_| 0),
                max_len,
                vocab_size,
            };
        let mut features: Vec<BTreeMap<&str, FeatureEntry>> = Vec::new();
        let own_dim = |name: &String| self.spec.embedding_dims.get(name).copied();
        for name in &self.spec.numeric {
            let mut e = entry("numeric", None, None, None);
            e.embedding_dim = own_dim(name);
            features.push(BTreeMap::from([(name.as_str(), e)]));
        }
        for (name, vocab) in self.spec.categorical.iter().zip(&self.vocabularies) {
            let mut e = entry("categorical", None, None, Some(vocab.vocab_size()));
            e.embedding_dim = own_dim(name);
            e.share_embedding = self.spec.share_embedding.get(name).cloned();
            if let Some(b) = self.spec.bucketize.get(name) {
                // FuxiCTR's bucket branch sets these two only.
                e.category_processor = Some(b.processor());
                e.padding_idx = None;
                e.vocab_size = Some(b.num_buckets());
            }
            features.push(BTreeMap::from([(name.as_str(), e)]));
        }
        for (q, vocab) in self.spec.sequence.iter().zip(&self.sequence_vocabularies) {
            let mut e = entry(
                "sequence",
                Some(q.pooling),
                Some(q.max_len),
                Some(vocab.vocab_size()),
            );
            e.embedding_dim = own_dim(&q.name);
            e.share_embedding = q.share_embedding.clone();
            features.push(BTreeMap::from([(q.name.as_str(), e)]));
        }
        let map = FeatureMap {
            dataset_id: &self.dataset_id,
            num_fields: self.spec.num_fields(),
            // A shared vocabulary counts once, under the field that owns it.
            total_features: self.spec.numeric.len()
                + (self.spec.categorical.iter())
                    .zip(self.vocab_sizes())
                    .filter(|(name, _)| !self.spec.share_embedding.contains_key(*name))
                    .map(|(_, size)| size)
                    .sum::<usize>()
                + self
                    .spec
                    .sequence
                    .iter()
                    .zip(&self.sequence_vocabularies)
                    .filter(|(q, _)| q.share_embedding.is_none())
                    .map(|(_, v)| v.vocab_size())
                    .sum::<usize>(),
            input_length: self.spec.numeric.len()
                + self.spec.categorical.len()
                + self.spec.sequence_width(),
            labels: &self.spec.labels,
            features,
        };
        pretty4(&map)
    }

    /// FuxiCTR's `feature_vocab.json`: every categorical and sequence field's tokens by
    /// index, written as its `json.dumps(vocab, indent=4)` writes them.
    pub fn vocab_json(&self) -> String {
        let fields: Vec<(&str, Ordered<'_, i64>)> = (self.spec.categorical.iter())
            .zip(&self.vocabularies)
            // A bucketed field has no tokens.
            .filter(|(name, _)| !self.spec.bucketize.contains_key(*name))
            .chain((self.spec.sequence.iter().map(|q| &q.name)).zip(&self.sequence_vocabularies))
            .map(|(name, vocab)| {
                let tokens = std::iter::once((PAD_TOKEN, 0i64))
                    .chain(
                        (vocab.tokens.iter())
                            .zip(1i64..)
                            .map(|(t, i)| (t.as_str(), i)),
                    )
                    .chain(std::iter::once((OOV_TOKEN, i64::from(vocab.oov_index()))))
                    .collect();
                (name.as_str(), Ordered(tokens))
            })
            .collect();
        pretty4(&Ordered(fields))
    }
}

/// A JSON object whose keys keep their order.
struct Ordered<'a, V>(Vec<(&'a str, V)>);

impl<V: Serialize> Serialize for Ordered<'_, V> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

fn pretty4<T: Serialize>(value: &T) -> String {
    let mut buf = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, formatter);
    // Serialising a Value into memory cannot fail.
    let _ = value.serialize(&mut ser);
    ascii_only(String::from_utf8_lossy(&buf).into_owned())
}

/// Python's `ensure_ascii` (FuxiCTR's `json.dump` default): every character outside ASCII as
/// `\uXXXX`, beyond the basic plane as a surrogate pair. Outside strings JSON is ASCII, so
/// only strings change.
fn ascii_only(json: String) -> String {
    if json.is_ascii() {
        return json;
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        }
    }
    out
}

/// Writes `path` durably via a temporary sibling and a rename (`ferry_fs::write_atomic`), so
/// a crash never leaves half a file.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    ferry_fs::write_atomic(path, bytes).map_err(CtrError::io(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, Int32Array as I32, StringArray};

    fn spec() -> FeatureSpec {
        FeatureSpec {
            id_columns: vec![],
            numeric: vec!["I1".into()],
            categorical: vec!["C1".into()],
            labels: vec!["click".into()],
            min_categr_count: 2,
            min_categr_counts: Default::default(),
            share_embedding: Default::default(),
            normalizer: BTreeMap::new(),
            fill_na: BTreeMap::new(),
            sequence: Vec::new(),
            group_id: None,
            bucketize: BTreeMap::new(),
            embedding_dims: BTreeMap::new(),
            na_token: BTreeMap::new(),
            integer_keys: BTreeSet::new(),
        }
    }

    fn batch(i1: Vec<Option<f64>>, c1: Vec<Option<&str>>, click: Vec<i32>) -> RecordBatch {
        RecordBatch::try_from_iter(vec![
            ("I1", Arc::new(Float64Array::from(i1)) as ArrayRef),
            ("C1", Arc::new(StringArray::from(c1)) as ArrayRef),
            ("click", Arc::new(I32::from(click)) as ArrayRef),
        ])
        .expect("batch")
    }

    #[test]
    fn a_batch_splits_into_consecutive_row_ranges_in_order() {
        let b = EncodedBatch {
            rows: 5,
            categorical: vec![10, 11, 12, 13, 14],
            numeric: vec![0.0, 0.1, 0.2, 0.3, 0.4],
            labels: vec![1.0, 0.0, 1.0, 0.0, 1.0],
            sequence: Vec::new(),
            groups: Vec::new(),
        };
        let halves = b.split_rows(2, &spec());
        assert_eq!(halves.iter().map(|h| h.rows).collect::<Vec<_>>(), [3, 2]);
        assert_eq!(halves[1].categorical, [13, 14]);
        assert_eq!(halves[1].labels, [0.0, 1.0]);
        // More ranges than rows: one row each, none empty.
        assert_eq!(b.split_rows(8, &spec()).len(), 5);
    }

    #[test]
    fn feature_vocab_json_is_written_as_fuxictr_s_json_dumps_writes_it() {
        let b = batch(
            vec![Some(1.0); 3],
            vec![Some("é"), Some("😀"), Some("é")],
            vec![1, 0, 0],
        );
        let mut s = spec();
        s.min_categr_count = 1;
        let mut fitter = FeatureFitter::new(s).expect("spec");
        fitter.observe(&b, &[true; 3]).expect("observe");
        let p = fitter.finish("toy").expect("fit");
        // Python: json.dumps({"C1": {"__PAD__": 0, "é": 1, "😀": 2, "__OOV__": 3}}, indent=4)
        assert_eq!(
            p.vocab_json(),
            "{\n    \"C1\": {\n        \"__PAD__\": 0,\n        \"\\u00e9\": 1,\n        \"\\ud83d\\ude00\": 2,\n        \"__OOV__\": 3\n    }\n}"
        );
    }

    #[test]
    fn a_field_s_own_min_categr_count_overrides_the_dataset_s() {
        let b = batch(
            vec![Some(1.0); 5],
            vec![Some("b"), Some("a"), Some("b"), Some("a"), Some("rare")],
            vec![1, 0, 0, 1, 0],
        );
        let fit = |spec: FeatureSpec| {
            let mut fitter = FeatureFitter::new(spec).expect("spec");
            fitter.observe(&b, &[true; 5]).expect("observe");
            fitter.finish("toy").expect("fit").vocabularies[0]
                .tokens
                .clone()
        };
        let mut s = spec();
        s.min_categr_counts.insert("C1".into(), 1);
        assert_eq!(fit(s.clone()), ["a", "b", "rare"]);
        s.min_categr_counts.insert("C1".into(), 3);
        assert_eq!(fit(s.clone()), Vec::<String>::new());
        // Only token fields have one, and a count is at least 1.
        for (name, count) in [("I1", 2), ("C1", 0), ("nowhere", 2)] {
            let mut s = spec();
            s.min_categr_counts.insert(name.into(), count);
            assert!(s.validate().is_err(), "{name} {count}");
        }
    }

    #[test]
    fn vocabulary_follows_fuxictr_ordering_and_special_indices() {
        let b = batch(
            vec![Some(2.0), None, Some(6.0), Some(4.0), Some(3.0)],
            vec![Some("b"), Some("a"), Some("b"), Some("a"), Some("rare")],
            vec![1, 0, 0, 1, 0],
        );
        let mut fitter = FeatureFitter::new(spec()).expect("spec");
        fitter.observe(&b, &[true; 5]).expect("observe");
        let p = fitter.finish("toy").expect("fit");
        // "a" and "b" both twice: ties ordered by token; "rare" is under min count 2.
        assert_eq!(p.vocabularies[0].tokens, vec!["a", "b"]);
        assert_eq!(p.vocab_sizes(), vec![4]);
        assert_eq!((p.numeric[0].min, p.numeric[0].max), (0.0, 6.0));
        assert_eq!(p.numeric[0].normalizer, Normalizer::MinMaxScaler);

        let e = p
            .encode(
                &batch(
                    vec![Some(3.0), None],
                    vec![Some("b"), Some("never-seen")],
                    vec![0, 1],
                ),
                true,
            )
            .expect("encode");
        assert_eq!(e.categorical, vec![2, 3]); // "b" → 2; unseen → OOV = 3
        assert_eq!(e.numeric, vec![0.5, 0.0]); // (3-0)/6; null → 0 → 0
        assert_eq!(e.labels, vec![0.0, 1.0]);
        let null_token = p
            .encode(&batch(vec![Some(1.0)], vec![None], vec![0]), false)
            .expect("encode");
        assert_eq!(null_token.categorical, vec![3], "missing → OOV");
    }

    #[test]
    fn sequences_are_tokenised_padded_and_written_as_fuxictr_writes_them() {
        let mut s = spec();
        s.min_categr_count = 1;
        s.sequence = vec![
            SequenceSpec {
                name: "hist".into(),
                splitter: "^".into(),
                max_len: 0,
                padding: Padding::Post,
                pooling: Pooling::Mean,
                share_embedding: None,
            },
            SequenceSpec {
                name: "tags".into(),
                splitter: "|".into(),
                max_len: 2,
                padding: Padding::Pre,
                pooling: Pooling::Sum,
                share_embedding: None,
            },
        ];
        let rows = |hist: Vec<Option<&str>>, tags: Vec<Option<&str>>| {
            let n = hist.len();
            RecordBatch::try_from_iter(vec![
                ("I1", Arc::new(Float64Array::from(vec![1.0; n])) as ArrayRef),
                ("C1", Arc::new(StringArray::from(vec!["x"; n])) as ArrayRef),
                ("hist", Arc::new(StringArray::from(hist)) as ArrayRef),
                ("tags", Arc::new(StringArray::from(tags)) as ArrayRef),
                ("click", Arc::new(I32::from(vec![0; n])) as ArrayRef),
            ])
            .expect("batch")
        };
        let train = rows(
            vec![Some("a^b^a"), Some("b"), None, Some("a^^c")],
            vec![Some("t1|t2|t3"), Some("t2"), Some(""), None],
        );
        let mut fitter = FeatureFitter::new(s).expect("spec");
        fitter.observe(&train, &[true; 4]).expect("observe");
        let p = fitter.finish("toy").expect("fit");
        // Counts: a 3, b 2, c 1; the longest history has 3 pieces (the empty one pads).
        assert_eq!(p.sequence_vocabularies[0].tokens, ["a", "b", "c"]);
        assert_eq!(p.spec.sequence[0].max_len, 3);
        assert_eq!(p.spec.sequence[1].max_len, 2, "as configured");
        assert_eq!(p.spec.sequence_width(), 5);

        let e = p
            .encode(
                &rows(
                    vec![Some("b^a^c^a"), Some("zzz"), Some("a^^c")],
                    vec![Some("t1|t2|t3"), Some("t3"), None],
                ),
                false,
            )
            .expect("encode");
        // hist (post: keep the first 3, pad after): b a c | OOV (4) 0 0 | a 0 c.
        // tags (pre: keep the last 2, pad before): t2 t3 | 0 t3 | 0 0.
        let (t2, t3) = (
            p.sequence_vocabularies[1].lookup(Some("t2")),
            p.sequence_vocabularies[1].lookup(Some("t3")),
        );
        assert_eq!(e.sequence, [2, 1, 3, t2, t3, 4, 0, 0, 0, t3, 1, 0, 3, 0, 0]);
        // The encoded parts keep them, one column per position.
        let rb = e.to_record_batch(&p.spec).expect("arrow");
        assert!(rb.column_by_name("tags__1").is_some());
        assert_eq!(
            EncodedBatch::from_record_batch(&rb, &p.spec).expect("back"),
            e
        );
        assert_eq!(e.slice(1, 2, &p.spec).sequence, [4, 0, 0, 0, t3]);

        // FuxiCTR's feature map: the sequence's keys in its order, its positions in
        // input_length, its vocabulary in total_features.
        let map = p.feature_map_json();
        assert!(
            map.contains(
                "\"hist\": {\n                \"source\": \"\",\n                \"type\": \"sequence\",\n                \"feature_encoder\": \"layers.MaskedAveragePooling()\",\n                \"padding_idx\": 0,\n                \"max_len\": 3,\n                \"vocab_size\": 5\n"
            ),
            "{map}"
        );
        assert!(
            map.contains("\"C1\": {\n                \"source\": \"\",\n                \"type\": \"categorical\",\n                \"padding_idx\": 0,\n"),
            "{map}"
        );
        let v: serde_json::Value = serde_json::from_str(&map).expect("json");
        assert_eq!(v["num_fields"], 4);
        assert_eq!(v["input_length"], 1 + 1 + 5);
        assert_eq!(v["total_features"], 1 + 3 + 5 + 5);
        let vocab: serde_json::Value = serde_json::from_str(&p.vocab_json()).expect("json");
        assert_eq!(vocab["hist"]["a"], 1);
        assert_eq!(vocab["tags"]["__OOV__"], 4);
        // The processor keeps all of it.
        let dir = tempfile::tempdir().expect("tmp");
        p.save(dir.path()).expect("save");
        let back = FeatureProcessor::load(dir.path()).expect("load");
        assert_eq!(back.spec.sequence[0].max_len, 3);
        assert_eq!(back.sequence_vocabularies[0].lookup(Some("c")), 3);
    }

    #[test]
    fn a_categorical_field_sharing_another_merges_into_its_vocabulary() {
        let mut s = spec();
        s.min_categr_count = 1;
        s.categorical.push("C2".into());
        s.share_embedding.insert("C2".into(), "C1".into());
        let rows = |c1: Vec<&str>, c2: Vec<&str>| {
            let n = c1.len();
            RecordBatch::try_from_iter(vec![
                ("I1", Arc::new(Float64Array::from(vec![1.0; n])) as ArrayRef),
                ("C1", Arc::new(StringArray::from(c1)) as ArrayRef),
                ("C2", Arc::new(StringArray::from(c2)) as ArrayRef),
                ("click", Arc::new(I32::from(vec![0; n])) as ArrayRef),
            ])
            .expect("batch")
        };
        let mut fitter = FeatureFitter::new(s.clone()).expect("spec");
        fitter
            .observe(&rows(vec!["x", "x", "y"], vec!["z", "x", "z"]), &[true; 3])
            .expect("observe");
        let p = fitter.finish("toy").expect("fit");
        // C1's tokens (x 2, y 1), then C2's new one (z); both fields use the merged vocabulary.
        assert_eq!(p.vocabularies[0].tokens, ["x", "y", "z"]);
        assert_eq!(p.vocabularies[1].tokens, p.vocabularies[0].tokens);
        let e = p
            .encode(&rows(vec!["z", "q"], vec!["y", "x"]), false)
            .expect("encode");
        assert_eq!(e.categorical, [3, 2, 4, 1], "row by row: C1, C2");
        let v: serde_json::Value = serde_json::from_str(&p.feature_map_json()).expect("json");
        assert_eq!(v["features"][2]["C2"]["share_embedding"], "C1");
        assert_eq!(v["features"][2]["C2"]["vocab_size"], 5);
        assert!(v["features"][1]["C1"].get("share_embedding").is_none());
        assert_eq!(
            v["total_features"],
            1 + 5,
            "a shared vocabulary counts once"
        );
        for (name, owner) in [("C2", "C2"), ("C2", "I1"), ("C2", "nowhere"), ("I1", "C1")] {
            let mut bad = s.clone();
            bad.share_embedding = BTreeMap::from([(name.to_owned(), owner.to_owned())]);
            assert!(bad.validate().is_err(), "{name} → {owner}");
        }
        let mut chain = s.clone();
        chain.categorical.push("C3".into());
        chain.share_embedding.insert("C3".into(), "C2".into());
        assert!(chain.validate().is_err(), "C3 → C2 → C1 names C1");
    }

    #[test]
    fn a_sequence_sharing_a_categorical_field_merges_into_its_vocabulary() {
        let mut s = spec();
        s.min_categr_count = 1;
        s.sequence = vec![SequenceSpec {
            name: "hist".into(),
            splitter: "^".into(),
            max_len: 2,
            padding: Padding::Post,
            pooling: Pooling::Mean,
            share_embedding: Some("C1".into()),
        }];
        let rows = |c1: Vec<&str>, hist: Vec<&str>| {
            let n = c1.len();
            RecordBatch::try_from_iter(vec![
                ("I1", Arc::new(Float64Array::from(vec![1.0; n])) as ArrayRef),
                ("C1", Arc::new(StringArray::from(c1)) as ArrayRef),
                ("hist", Arc::new(StringArray::from(hist)) as ArrayRef),
                ("click", Arc::new(I32::from(vec![0; n])) as ArrayRef),
            ])
            .expect("batch")
        };
        let mut fitter = FeatureFitter::new(s.clone()).expect("spec");
        fitter
            .observe(
                &rows(vec!["x", "x", "y"], vec!["z^x", "z", "w^z"]),
                &[true; 3],
            )
            .expect("observe");
        let p = fitter.finish("toy").expect("fit");
        // C1's tokens first (x 2, y 1), then the history's new ones (z 3, w 1); OOV last.
        assert_eq!(p.vocabularies[0].tokens, ["x", "y", "z", "w"]);
        assert_eq!(p.sequence_vocabularies[0].tokens, p.vocabularies[0].tokens);
        let e = p
            .encode(&rows(vec!["z", "q"], vec!["x^w", "y^q"]), false)
            .expect("encode");
        assert_eq!(
            e.categorical,
            [3, 5],
            "z is known to C1 through the history; q is OOV"
        );
        assert_eq!(e.sequence, [1, 4, 2, 5]);
        let v: serde_json::Value = serde_json::from_str(&p.feature_map_json()).expect("json");
        assert_eq!(v["features"][1]["C1"]["vocab_size"], 6);
        assert_eq!(v["features"][2]["hist"]["share_embedding"], "C1");
        assert_eq!(v["features"][2]["hist"]["vocab_size"], 6);
        assert_eq!(
            v["total_features"],
            1 + 6,
            "a shared vocabulary counts once"
        );
        s.sequence[0].share_embedding = Some("I1".into());
        assert!(
            FeatureFitter::new(s).is_err(),
            "only a categorical field can be shared"
        );
    }

    #[test]
    fn numeric_fields_scale_as_scikit_learn_after_fill_na() {
        let fit = |normalizer: Normalizer, fill: f64| {
            let mut s = spec();
            s.normalizer.insert("I1".into(), normalizer);
            s.fill_na.insert("I1".into(), fill);
            let mut fitter = FeatureFitter::new(s).expect("spec");
            // 2, 4, 6 and a missing value (null or NaN), filled before fitting.
            let b = batch(
                vec![Some(2.0), None, Some(4.0), Some(f64::NAN), Some(6.0)],
                vec![Some("a"); 5],
                vec![0; 5],
            );
            fitter.observe(&b, &[true; 5]).expect("observe");
            let p = fitter.finish("toy").expect("fit");
            let e = p
                .encode(
                    &batch(vec![Some(4.0), None], vec![Some("a"); 2], vec![0, 0]),
                    false,
                )
                .expect("encode");
            (p.numeric[0], e.numeric)
        };
        // As it is: 4, and the fill value.
        assert_eq!(fit(Normalizer::None, 7.0).1, [4.0, 7.0]);
        // Filled with 4: 2, 4, 4, 4, 6 → mean 4, population std √1.6.
        let (stats, values) = fit(Normalizer::StandardScaler, 4.0);
        assert!((stats.mean - 4.0).abs() < 1e-12);
        assert!((stats.std - 1.6f64.sqrt()).abs() < 1e-12);
        assert_eq!(values, [0.0, 0.0]);
        // Filled with 0: 2, 0, 4, 0, 6 → MinMax over [0, 6].
        assert_eq!(fit(Normalizer::MinMaxScaler, 0.0).1, [4.0 / 6.0, 0.0]);
        // A fill for a field that is not numeric is a configuration error.
        let mut s = spec();
        s.fill_na.insert("C1".into(), 1.0);
        assert!(FeatureFitter::new(s).is_err());
    }

    #[test]
    fn processor_round_trips_through_its_files() {
        let dir = tempfile::tempdir().expect("tmp");
        let b = batch(
            vec![Some(1.0), Some(5.0), Some(9.0)],
            vec![Some("x"), Some("y"), Some("x")],
            vec![0, 1, 1],
        );
        let mut s = spec();
        s.min_categr_count = 1;
        let mut fitter = FeatureFitter::new(s).expect("spec");
        fitter.observe(&b, &[true; 3]).expect("observe");
        let p = fitter.finish("toy").expect("fit");
        p.save(dir.path()).expect("save");
        let back = FeatureProcessor::load(dir.path()).expect("load");
        assert_eq!(
            back.encode(&b, true).expect("encode"),
            p.encode(&b, true).expect("encode")
        );
        let map: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(FEATURE_MAP_FILE)).expect("map"))
                .expect("json");
        assert_eq!(map["num_fields"], 2);
        assert_eq!(map["total_features"], 1 + 4);
        assert_eq!(map["features"][1]["C1"]["vocab_size"], 4);
        let vocab: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(VOCAB_FILE)).expect("vocab"))
                .expect("json");
        assert_eq!(vocab["C1"]["x"], 1);
        assert_eq!(vocab["C1"]["__OOV__"], 3);
        // Encoded batches survive their Arrow form.
        let e = p.encode(&b, true).expect("encode");
        let rb = e.to_record_batch(&p.spec).expect("arrow");
        assert_eq!(
            EncodedBatch::from_record_batch(&rb, &p.spec).expect("back"),
            e
        );
    }

    /// A spec whose only field is `Q`, a number put in quantile buckets, or `H`, a token
    /// hashed into buckets.
    fn bucket_spec(field: &str, b: Bucketize) -> FeatureSpec {
        let mut s = spec();
        s.numeric.clear();
        s.categorical = vec![field.into()];
        s.bucketize.insert(field.into(), b);
        s
    }

    fn q_batch(q: Vec<Option<f64>>) -> RecordBatch {
        let clicks = vec![0; q.len()];
        RecordBatch::try_from_iter(vec![
            ("Q", Arc::new(Float64Array::from(q)) as ArrayRef),
            ("click", Arc::new(I32::from(clicks)) as ArrayRef),
        ])
        .expect("batch")
    }

    #[test]
    fn quantile_buckets_follow_scikit_learn_s_quantiles_and_numpy_s_digitize() {
        // Expected from scikit-learn 1.x and NumPy with these values:
        //   QuantileTransformer(n_quantiles=5).fit(x).quantiles_[1:-1] == [2.0, 4.5, 7.25]
        //   np.digitize([0, 2, 2.5, 3, 4, 10, 11], that) == [0, 1, 1, 1, 1, 3, 3]
        let values = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 2.0, 2.0];
        let mut s = bucket_spec("Q", Bucketize::QuantileBucket { num_buckets: 4 });
        s.fill_na.insert("Q".into(), 4.0);
        let mut fitter = FeatureFitter::new(s).expect("spec");
        // A missing value is fitted as its fill_na; the row left out is not fitted at all.
        let mut fit_on: Vec<Option<f64>> = values.iter().map(|v| Some(*v)).collect();
        fit_on.push(Some(1000.0));
        let mut keep = vec![true; values.len()];
        keep.push(false);
        fitter.observe(&q_batch(fit_on), &keep).expect("observe");
        let p = fitter.finish("q").expect("fit");
        assert_eq!(p.boundaries["Q"], [2.0, 4.5, 7.25]);
        assert_eq!(p.vocab_sizes(), [4]);
        let e = p
            .encode(
                &q_batch(vec![
                    Some(0.0),
                    Some(2.0),
                    Some(2.5),
                    Some(3.0),
                    Some(4.0),
                    Some(10.0),
                    Some(11.0),
                    None,
                    Some(f64::NAN),
                ]),
                false,
            )
            .expect("encode");
        assert_eq!(e.categorical, [0, 1, 1, 1, 1, 3, 3, 1, 1]);
        // Fewer distinct quantiles than buckets: ties stay ties, as scikit-learn's
        // `QuantileTransformer(n_quantiles=4)` on [5, 5, 5, 5, 1] gives [1, 5, 5, 5].
        assert_eq!(
            quantile_boundaries(vec![5.0, 5.0, 5.0, 5.0, 1.0], 3),
            [5.0, 5.0]
        );
        // Fewer values than quantiles: as many quantiles as values.
        assert_eq!(quantile_boundaries(vec![3.0, 1.0, 2.0], 10), [2.0]);
        assert!(quantile_boundaries(Vec::new(), 10).is_empty());
    }

    #[test]
    fn hashed_buckets_are_fnv_1a_of_the_token_modulo_their_count() {
        // The published 64-bit FNV-1a test vectors.
        assert_eq!(fnv1a(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a("foobar"), 0x8594_4171_f739_67e8);
        let s = bucket_spec("C1", Bucketize::HashBucket { num_buckets: 7 });
        let b = batch(
            vec![None, None, None],
            vec![Some("a"), None, Some("foobar")],
            vec![0, 1, 0],
        );
        let mut fitter = FeatureFitter::new(s).expect("spec");
        fitter.observe(&b, &[true; 3]).expect("observe");
        let p = fitter.finish("h").expect("fit");
        let e = p.encode(&b, true).expect("encode");
        let want: Vec<i32> = [fnv1a("a"), fnv1a(""), fnv1a("foobar")]
            .iter()
            .map(|h| (h % 7) as i32)
            .collect();
        assert_eq!(e.categorical, want);
        assert_eq!(p.vocab_sizes(), [7]);
    }

    #[test]
    fn bucketed_fields_are_written_and_read_back_as_fuxictr_records_them() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = spec();
        s.min_categr_count = 1;
        s.categorical.push("Q".into());
        s.bucketize
            .insert("Q".into(), Bucketize::QuantileBucket { num_buckets: 3 });
        let b = RecordBatch::try_from_iter(vec![
            (
                "I1",
                Arc::new(Float64Array::from(vec![1.0, 2.0, 3.0])) as ArrayRef,
            ),
            (
                "C1",
                Arc::new(StringArray::from(vec!["x", "y", "x"])) as ArrayRef,
            ),
            (
                "Q",
                Arc::new(Float64Array::from(vec![10.0, 20.0, 30.0])) as ArrayRef,
            ),
            ("click", Arc::new(I32::from(vec![0, 1, 1])) as ArrayRef),
        ])
        .expect("batch");
        let mut fitter = FeatureFitter::new(s).expect("spec");
        fitter.observe(&b, &[true; 3]).expect("observe");
        let p = fitter.finish("toy").expect("fit");
        // Three values: three quantiles (10, 20, 30), one inner boundary.
        assert_eq!(p.boundaries["Q"], [20.0]);
        assert_eq!(
            p.encode(&b, true).expect("encode").categorical,
            [1, 0, 2, 1, 1, 1]
        );
        p.save(dir.path()).expect("save");
        let back = FeatureProcessor::load(dir.path()).expect("load");
        assert_eq!(
            back.encode(&b, true).expect("encode"),
            p.encode(&b, true).expect("encode")
        );
        // FuxiCTR's bucket branch: the processor and the count of buckets, no padding.
        let map = std::fs::read_to_string(dir.path().join(FEATURE_MAP_FILE)).expect("map");
        assert!(
            map.contains("\"Q\": {\n                \"source\": \"\",\n                \"type\": \"categorical\",\n                \"category_processor\": \"quantile_bucket\",\n                \"vocab_size\": 3\n            }"),
            "{map}"
        );
        let json: serde_json::Value = serde_json::from_str(&map).expect("json");
        assert_eq!(json["total_features"], 1 + 4 + 3);
        let vocab: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(VOCAB_FILE)).expect("vocab"))
                .expect("json");
        assert!(
            vocab.get("Q").is_none(),
            "a bucketed field has no tokens: {vocab}"
        );
        assert_eq!(vocab["C1"]["x"], 1);
        // A saved processor whose boundaries were lost is refused, not encoded with none.
        let path = dir.path().join(PROCESSOR_FILE);
        let mut saved: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
        saved.as_object_mut().expect("object").remove("boundaries");
        std::fs::write(&path, saved.to_string()).expect("write");
        assert!(FeatureProcessor::load(dir.path()).is_err());
    }

    #[test]
    fn bucketed_fields_are_checked_before_anything_is_fitted() {
        let quantile = Bucketize::QuantileBucket { num_buckets: 4 };
        let mut s = bucket_spec("Q", quantile);
        s.bucketize.insert("nope".into(), quantile);
        assert!(s.validate().is_err_and(|e| e.to_string().contains("nope")));
        for n in [0, MAX_BUCKETS + 1] {
            let s = bucket_spec("Q", Bucketize::HashBucket { num_buckets: n });
            assert!(
                s.validate()
                    .is_err_and(|e| e.to_string().contains("num_buckets"))
            );
        }
        let mut s = bucket_spec("Q", quantile);
        s.categorical.push("R".into());
        s.share_embedding.insert("R".into(), "Q".into());
        assert!(
            s.validate()
                .is_err_and(|e| e.to_string().contains("cannot share"))
        );
        let mut s = bucket_spec("H", Bucketize::HashBucket { num_buckets: 4 });
        s.fill_na.insert("H".into(), 1.0);
        assert!(
            s.validate()
                .is_err_and(|e| e.to_string().contains("fill_na"))
        );
    }

    #[test]
    fn the_missing_value_token_never_enters_a_vocabulary() {
        // FuxiCTR's tokenizer: a missing value becomes `fill_na` (the empty token by
        // default), which no vocabulary holds; looked up, it is `__OOV__`.
        let mut s = spec();
        s.min_categr_count = 1;
        let b = batch(
            vec![None; 5],
            vec![Some("a"), None, Some(""), Some("UNK"), Some("a")],
            vec![0, 1, 0, 1, 0],
        );
        let fit = |s: FeatureSpec| {
            let mut fitter = FeatureFitter::new(s).expect("spec");
            fitter.observe(&b, &[true; 5]).expect("observe");
            fitter.finish("na").expect("fit")
        };
        let p = fit(s.clone());
        assert_eq!(p.vocabularies[0].tokens, ["a", "UNK"]);
        assert_eq!(
            p.encode(&b, true).expect("encode").categorical,
            [1, 3, 3, 2, 1]
        );
        s.na_token.insert("C1".into(), "UNK".into());
        let p = fit(s.clone());
        // The empty token is an ordinary one now.
        assert_eq!(p.vocabularies[0].tokens, ["a", ""]);
        assert_eq!(
            p.encode(&b, true).expect("encode").categorical,
            [1, 3, 2, 3, 1]
        );
        // Only tokenised fields have one.
        s.na_token.insert("I1".into(), "x".into());
        assert!(s.validate().is_err_and(|e| e.to_string().contains("I1")));
    }

    #[test]
    fn integer_keys_are_ordered_by_value_as_fuxictr_orders_them() {
        let mut s = spec();
        s.min_categr_count = 1;
        let b = batch(
            vec![None; 5],
            vec![Some("10"), Some("9"), Some("9"), Some("100"), Some("9")],
            vec![0, 1, 0, 1, 0],
        );
        let fit = |s: FeatureSpec| {
            let mut fitter = FeatureFitter::new(s).expect("spec");
            fitter.observe(&b, &[true; 5]).expect("observe");
            fitter.finish("int").expect("fit").vocabularies[0]
                .tokens
                .clone()
        };
        // As text: by count, then token.
        assert_eq!(fit(s.clone()), ["9", "10", "100"].map(String::from));
        s.integer_keys.insert("C1".into());
        assert_eq!(fit(s.clone()), ["9", "10", "100"].map(String::from));
        let b = batch(
            vec![None; 4],
            vec![Some("100"), Some("100"), Some("9"), Some("10")],
            vec![0, 1, 0, 1],
        );
        let mut fitter = FeatureFitter::new(s).expect("spec");
        fitter.observe(&b, &[true; 4]).expect("observe");
        let p = fitter.finish("int").expect("fit");
        assert_eq!(p.vocabularies[0].tokens, ["9", "10", "100"]);
    }

    #[test]
    fn a_sequence_s_missing_value_token_is_padding() {
        let mut s = spec();
        s.min_categr_count = 1;
        s.numeric.clear();
        s.categorical.clear();
        s.sequence.push(SequenceSpec {
            name: "S".into(),
            splitter: "^".into(),
            max_len: 3,
            padding: Padding::Post,
            pooling: Pooling::Mean,
            share_embedding: None,
        });
        s.na_token.insert("S".into(), "-".into());
        let b = RecordBatch::try_from_iter(vec![
            (
                "S",
                Arc::new(StringArray::from(vec![Some("a^-^b"), None, Some("a^^b")])) as ArrayRef,
            ),
            ("click", Arc::new(I32::from(vec![0, 1, 0])) as ArrayRef),
        ])
        .expect("batch");
        let mut fitter = FeatureFitter::new(s).expect("spec");
        fitter.observe(&b, &[true; 3]).expect("observe");
        let p = fitter.finish("na").expect("fit");
        assert_eq!(p.sequence_vocabularies[0].tokens, ["a", "b", ""]);
        assert_eq!(
            p.encode(&b, true).expect("encode").sequence,
            [1, 0, 2, 0, 0, 0, 1, 3, 2]
        );
    }

    #[test]
    fn bad_labels_and_missing_columns_are_named() {
        let mut fitter = FeatureFitter::new(spec()).expect("spec");
        let b = batch(vec![Some(1.0)], vec![Some("x")], vec![0]);
        fitter.observe(&b, &[true]).expect("observe");
        let p = fitter.finish("toy").expect("fit");
        let err = p
            .encode(&batch(vec![Some(1.0)], vec![Some("x")], vec![2]), true)
            .expect_err("label 2");
        assert!(
            err.to_string().contains("label column click has value 2"),
            "{err}"
        );
        let no_c1 = RecordBatch::try_from_iter(vec![(
            "I1",
            Arc::new(Float64Array::from(vec![1.0])) as ArrayRef,
        )])
        .expect("batch");
        let err = p.encode(&no_c1, false).expect_err("missing");
        assert!(err.to_string().contains("no column C1"), "{err}");
    }
}
