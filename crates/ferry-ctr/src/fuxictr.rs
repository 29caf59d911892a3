//! FuxiCTR's own configuration files, read with FuxiCTR's rules, so that a FuxiCTR team brings
//! its `dataset_config.yaml` and `model_config.yaml` as they are:
//!
//! - the model settings of an experiment id are its `Base` section with the experiment's own
//!   keys laid over it (a shallow merge, as FuxiCTR's `load_model_config`), from
//!   `CONFIG_DIR/model_config.yaml` or, without one, every `CONFIG_DIR/model_config/*.yaml`;
//! - the experiment's `dataset_id` names the dataset section, from `dataset_config.yaml` or
//!   `dataset_config/*.yaml` the same way;
//! - relative data paths are resolved against the working directory FuxiCTR would run in
//!   (`work_dir`), as FuxiCTR's scripts open them;
//! - every key is one of three kinds: used (mapped to Ferry's [`FeatureSpec`] and
//!   [`ModelConfig`]), harmless here (FuxiCTR's run-time knobs, or keys FuxiCTR itself would
//!   pass over: ignored with a warning), or used by FuxiCTR in a way Ferry cannot follow yet
//!   (refused, naming the key, before anything is read or trained).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value as Json};
use serde_yaml::Value;

use crate::error::{CtrError, Result};
use crate::features::{Bucketize, FeatureSpec, Normalizer, Padding, Pooling, SequenceSpec};
use crate::model::{ModelConfig, ModelKind, Penalty};

/// One experiment of a FuxiCTR configuration, in Ferry's terms.
#[derive(Debug, Clone, PartialEq)]
pub struct Experiment {
    /// The experiment id (FuxiCTR's `model_id`).
    pub expid: String,
    pub dataset_id: String,
    pub data: DataFiles,
    pub features: FeatureSpec,
    pub model: ModelConfig,
    /// Keys passed over, one line each, to show the user.
    pub warnings: Vec<String>,
}

/// Where the dataset's splits are, in which format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataFiles {
    pub format: DataFormat,
    pub train: PathBuf,
    pub valid: Option<PathBuf>,
    pub test: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataFormat {
    Parquet,
    Csv,
}

/// Where an experiment's data comes from.
#[derive(Debug, Clone, Copy)]
pub enum DataFrom<'a> {
    /// The dataset's `train_data`, `valid_data` and `test_data`, relative paths resolved
    /// against `work_dir` as FuxiCTR's scripts open them.
    Config { work_dir: &'a Path },
    /// A folder of Parquet parts given beside the configuration (the CTR pipeline's export):
    /// the dataset's own data keys are passed over with a warning, and may be absent.
    Folder(&'a Path),
}

/// Reads experiment `expid` from the FuxiCTR configuration in `config_dir`.
pub fn load(config_dir: &Path, expid: &str, work_dir: &Path) -> Result<Experiment> {
    load_with(config_dir, expid, DataFrom::Config { work_dir })
}

/// Reads experiment `expid` from the FuxiCTR configuration in `config_dir`, its data from
/// `data`.
pub fn load_with(config_dir: &Path, expid: &str, data_from: DataFrom<'_>) -> Result<Experiment> {
    let mut warnings = Vec::new();
    let mut model = section(config_dir, "model_config", expid, true, &mut warnings)?;
    let dataset_id = match model.remove("dataset_id") {
        Some(Value::String(s)) if s.is_empty() || s.contains(['/', '\\']) || s.starts_with('.') => {
            return Err(bad(
                expid,
                "dataset_id",
                &Value::String(s),
                "must be a plain name",
            ));
        }
        Some(Value::String(s)) => s,
        Some(other) => return Err(bad(expid, "dataset_id", &other, "must be a name")),
        None => {
            return Err(CtrError::Config(format!(
                "experiment {expid} in {} names no dataset_id",
                config_dir.display()
            )));
        }
    };
    let dataset = section(
        config_dir,
        "dataset_config",
        &dataset_id,
        false,
        &mut warnings,
    )?;
    let data = match data_from {
        DataFrom::Config { work_dir } => data_files(&dataset_id, &dataset, work_dir)?,
        DataFrom::Folder(folder) => {
            for key in ["train_data", "valid_data", "test_data"] {
                if dataset.get(key).is_some_and(|v| !v.is_null()) {
                    warnings.push(format!(
                        "{dataset_id}: {key} is not read; the data is {}",
                        folder.display()
                    ));
                }
            }
            DataFiles {
                format: DataFormat::Parquet,
                train: folder.to_owned(),
                valid: None,
                test: None,
            }
        }
    };
    let embedding_dim = model
        .get("embedding_dim")
        .and_then(Value::as_u64)
        // FuxiCTR's default.
        .unwrap_or(10);
    // FuxiCTR's `group_id` is a model key naming a meta feature; Ferry keeps it with the
    // features, whose encoded test rows carry the groups for gAUC.
    let group_id = match model.remove("group_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(g)) => Some(g),
        Some(other) => return Err(bad(expid, "group_id", &other, "must name a meta feature")),
    };
    let csv = data.format == DataFormat::Csv;
    // FuxiCTR's DNN and DCNv2 flatten their fields' embeddings into one vector, so each
    // feature may have its own width; its other models stack them, one width for all.
    let model_name = model
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let dims = FeatureDims {
        model: embedding_dim,
        per_feature: ModelKind::parse(model_name)
            .is_some_and(|k| matches!(k, ModelKind::DNN | ModelKind::DCN)),
        model_name: model_name.to_owned(),
    };
    let (mut features, unpooled) = feature_spec(&dataset_id, &dataset, dims, csv, &mut warnings)?;
    if group_id.is_some() {
        features.group_id = group_id;
        features.validate()?;
    }
    let model = model_config(expid, model, &mut warnings)?;
    // A sequence left unpooled is one DIN attends over; any other model needs it pooled.
    let attended = |name: &String| {
        model.model == ModelKind::DIN
            && model
                .din_sequence_field
                .iter()
                .any(|f| f.names().contains(name))
    };
    if let Some(name) = unpooled.iter().find(|n| !attended(n)) {
        return Err(unsupported(
            &format!("{dataset_id}: feature {name}"),
            "feature_encoder",
            &Value::Null,
            "an unpooled sequence is followed as the sequence DIN attends over (din_sequence_field); other models pool it by layers.MaskedAveragePooling() or layers.MaskedSumPooling()",
        ));
    }
    Ok(Experiment {
        expid: expid.to_owned(),
        dataset_id,
        data,
        features,
        model,
        warnings,
    })
}

type Section = BTreeMap<String, Value>;

/// The section `id` of `CONFIG_DIR/{stem}.yaml` (or of `CONFIG_DIR/{stem}/*.yaml`, in name
/// order); for model configs, laid over the `Base` section.
fn section(
    config_dir: &Path,
    stem: &str,
    id: &str,
    with_base: bool,
    warnings: &mut Vec<String>,
) -> Result<Section> {
    let single = config_dir.join(format!("{stem}.yaml"));
    let names = if single.is_file() {
        vec![format!("{stem}.yaml")]
    } else {
        let dir = config_dir.join(stem);
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .map_err(|_| {
                CtrError::Config(format!(
                    "{} has neither {stem}.yaml nor a {stem}/ folder",
                    config_dir.display()
                ))
            })?
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(|n| format!("{stem}/{n}")))
            .filter(|n| n.ends_with(".yaml"))
            .collect();
        files.sort();
        files
    };
    // Read only where they resolve inside the configuration folder (symlinks included).
    let files = names
        .iter()
        .map(|n| {
            ferry_fs::confine::join(config_dir, n).map_err(|e| CtrError::Config(e.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    let (mut base, mut own) = (None, None);
    for file in &files {
        let text = std::fs::read_to_string(file).map_err(|e| CtrError::Io {
            path: file.clone(),
            source: e,
        })?;
        // PyYAML's `!!python/tuple` (DIN's fields attended together) as a local tag, which the
        // YAML reader hands on (it drops the `tag:yaml.org,2002:` ones).
        let text = text.replace("!!python/tuple", "!python/tuple");
        let Lenient { value, repeated } = serde_yaml::from_str(&text)
            .map_err(|e| CtrError::Config(format!("{}: {e}", file.display())))?;
        let doc = as_section(file, stem, value)?;
        for (key, value) in doc {
            let slot = if with_base && key == "Base" {
                &mut base
            } else if key == id {
                &mut own
            } else {
                continue;
            };
            // As FuxiCTR: a later file's section replaces an earlier one's.
            *slot = Some(as_section(file, &key, value)?);
            warnings.extend(
                repeated
                    .iter()
                    .filter(|(owner, _)| owner.as_deref() == Some(key.as_str()))
                    .map(|(_, k)| {
                        format!(
                            "{}: {key}: {k} is given more than once; the last one counts, as in FuxiCTR",
                            file.display()
                        )
                    }),
            );
        }
        if own.is_some() && (!with_base || base.is_some()) {
            break;
        }
    }
    let Some(own) = own else {
        return Err(CtrError::Config(format!(
            "{id} is not in {} ({stem})",
            config_dir.display()
        )));
    };
    let mut merged = base.unwrap_or_default();
    merged.extend(own);
    Ok(merged)
}

/// A YAML document read as PyYAML (FuxiCTR's reader) reads it: a key given twice in one
/// mapping keeps its last value (FuxiCTR's own DIN demo sets `feature_specs` twice). Keys given
/// more than once are listed, with the top-level key they sit under.
struct Lenient {
    value: Value,
    repeated: Vec<(Option<String>, String)>,
}

impl<'de> serde::Deserialize<'de> for Lenient {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_any(LenientVisitor { depth: 0 })
    }
}

struct LenientVisitor {
    depth: usize,
}

/// One nesting level deeper, for the values of a mapping or a sequence.
struct Nested(usize);

impl<'de> serde::de::DeserializeSeed<'de> for Nested {
    type Value = Lenient;
    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        d: D,
    ) -> std::result::Result<Lenient, D::Error> {
        d.deserialize_any(LenientVisitor { depth: self.0 })
    }
}

impl<'de> serde::de::Visitor<'de> for LenientVisitor {
    type Value = Lenient;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("YAML")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Lenient, A::Error> {
        let mut out = serde_yaml::Mapping::new();
        let mut repeated = Vec::new();
        while let Some(key) = map.next_key_seed(Nested(self.depth + 1))? {
            let inner = map.next_value_seed(Nested(self.depth + 1))?;
            let top = key.value.as_str().map(str::to_owned);
            for (owner, k) in inner.repeated {
                // Under the top-level key (a dataset or an experiment) it belongs to.
                let owner = if self.depth == 0 { top.clone() } else { owner };
                repeated.push((owner, k));
            }
            if out.insert(key.value.clone(), inner.value).is_some() {
                let name = top.unwrap_or_else(|| show(&key.value));
                repeated.push((None, name));
            }
        }
        Ok(Lenient {
            value: Value::Mapping(out),
            repeated,
        })
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<Lenient, A::Error> {
        let mut out = Vec::new();
        let mut repeated = Vec::new();
        while let Some(item) = seq.next_element_seed(Nested(self.depth + 1))? {
            out.push(item.value);
            repeated.extend(item.repeated);
        }
        Ok(Lenient {
            value: Value::Sequence(out),
            repeated,
        })
    }

    fn visit_bool<E>(self, v: bool) -> std::result::Result<Lenient, E> {
        Ok(plain(Value::Bool(v)))
    }

    fn visit_i64<E>(self, v: i64) -> std::result::Result<Lenient, E> {
        Ok(plain(Value::Number(v.into())))
    }

    fn visit_u64<E>(self, v: u64) -> std::result::Result<Lenient, E> {
        Ok(plain(Value::Number(v.into())))
    }

    fn visit_f64<E>(self, v: f64) -> std::result::Result<Lenient, E> {
        Ok(plain(Value::Number(v.into())))
    }

    fn visit_str<E>(self, v: &str) -> std::result::Result<Lenient, E> {
        Ok(plain(Value::String(v.to_owned())))
    }

    fn visit_unit<E>(self) -> std::result::Result<Lenient, E> {
        Ok(plain(Value::Null))
    }

    fn visit_none<E>(self) -> std::result::Result<Lenient, E> {
        Ok(plain(Value::Null))
    }

    fn visit_some<D: serde::Deserializer<'de>>(
        self,
        d: D,
    ) -> std::result::Result<Lenient, D::Error> {
        d.deserialize_any(self)
    }

    /// A tagged node (`!python/tuple [a, b]`): kept with its tag.
    fn visit_enum<A: serde::de::EnumAccess<'de>>(
        self,
        data: A,
    ) -> std::result::Result<Lenient, A::Error> {
        use serde::de::VariantAccess;
        let (tag, variant) = data.variant::<String>()?;
        let inner = variant.newtype_variant_seed(Nested(self.depth))?;
        Ok(Lenient {
            value: Value::Tagged(Box::new(serde_yaml::value::TaggedValue {
                tag: serde_yaml::value::Tag::new(tag),
                value: inner.value,
            })),
            repeated: inner.repeated,
        })
    }
}

fn plain(value: Value) -> Lenient {
    Lenient {
        value,
        repeated: Vec::new(),
    }
}

fn as_section(file: &Path, key: &str, value: Value) -> Result<Section> {
    match value {
        Value::Mapping(m) => m
            .into_iter()
            .map(|(k, v)| match k {
                Value::String(k) => Ok((k, v)),
                other => Err(CtrError::Config(format!(
                    "{}: {key}: key {other:?} is not a name",
                    file.display()
                ))),
            })
            .collect(),
        Value::Null => Ok(Section::new()),
        _ => Err(CtrError::Config(format!(
            "{}: {key} is not a mapping of settings",
            file.display()
        ))),
    }
}

fn bad(owner: &str, key: &str, value: &Value, why: &str) -> CtrError {
    CtrError::Config(format!("{owner}: {key}: {} {why}", show(value)))
}

fn unsupported(owner: &str, key: &str, value: &Value, what_ferry_does: &str) -> CtrError {
    CtrError::Config(format!(
        "{owner}: {key}: {} is not supported by Ferry yet ({what_ferry_does})",
        show(value)
    ))
}

fn show(v: &Value) -> String {
    serde_yaml::to_string(v)
        .map(|s| s.trim().replace('\n', " "))
        .unwrap_or_else(|_| format!("{v:?}"))
}

/// `null`, `false`, `0`, `""` or an empty list: a setting left off.
fn is_off(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Sequence(s) => s.is_empty(),
        _ => false,
    }
}

/// A string, or a list of strings, that must all be `want` (case-insensitive).
fn all_are(v: &Value, want: &str) -> bool {
    match v {
        Value::String(s) => s.eq_ignore_ascii_case(want),
        Value::Sequence(items) => items.iter().all(|i| all_are(i, want)),
        _ => false,
    }
}

fn data_files(dataset_id: &str, d: &Section, work_dir: &Path) -> Result<DataFiles> {
    let format = match d.get("data_format") {
        None => DataFormat::Csv,
        Some(Value::String(s)) if s.eq_ignore_ascii_case("parquet") => DataFormat::Parquet,
        Some(Value::String(s)) if s.eq_ignore_ascii_case("csv") => DataFormat::Csv,
        Some(other) => {
            return Err(unsupported(
                dataset_id,
                "data_format",
                other,
                "it reads parquet and csv",
            ));
        }
    };
    let path = |key: &str| -> Result<Option<PathBuf>> {
        match d.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(work_dir.join(s))),
            Some(other) => Err(bad(dataset_id, key, other, "must be a path")),
        }
    };
    let Some(train) = path("train_data")? else {
        return Err(CtrError::Config(format!(
            "{dataset_id}: train_data is missing"
        )));
    };
    Ok(DataFiles {
        format,
        train,
        valid: path("valid_data")?,
        test: path("test_data")?,
    })
}

/// Dataset keys FuxiCTR uses that need nothing from Ferry, or that it reads elsewhere.
const DATASET_PASSED: &[&str] = &["data_root", "rebuild_dataset", "data_block_size"];
const DATASET_USED: &[&str] = &[
    "data_format",
    "train_data",
    "valid_data",
    "test_data",
    "min_categr_count",
    "num_buckets",
    "feature_cols",
    "label_col",
];

/// The dataset's features, and the sequences whose `feature_encoder` is off (`null`).
fn feature_spec(
    dataset_id: &str,
    d: &Section,
    dims: FeatureDims,
    csv: bool,
    warnings: &mut Vec<String>,
) -> Result<(FeatureSpec, Vec<String>)> {
    for key in d.keys() {
        if DATASET_PASSED.contains(&key.as_str()) {
            continue;
        }
        if !DATASET_USED.contains(&key.as_str()) {
            warnings.push(format!(
                "{dataset_id}: {key} is not a dataset setting Ferry knows; ignored"
            ));
        }
    }
    let min_count = match d.get("min_categr_count") {
        None => 1,
        Some(v) => v
            .as_u64()
            .filter(|n| *n >= 1)
            .ok_or_else(|| bad(dataset_id, "min_categr_count", v, "must be a count >= 1"))?,
    };
    // FuxiCTR's `fit(..., num_buckets=10)`, from the dataset's keys.
    let num_buckets = match d.get("num_buckets") {
        None => 10,
        Some(v) => bucket_count(dataset_id, v)?,
    };
    let Some(cols) = d.get("feature_cols") else {
        return Err(unsupported(
            dataset_id,
            "feature_cols",
            &Value::Null,
            "a dataset FuxiCTR built beforehand, known only by its feature_map.json, cannot be read; name its feature_cols",
        ));
    };
    let Value::Sequence(cols) = cols else {
        return Err(bad(dataset_id, "feature_cols", cols, "must be a list"));
    };
    let mut spec = FeatureSpec {
        id_columns: Vec::new(),
        numeric: Vec::new(),
        categorical: Vec::new(),
        labels: Vec::new(),
        min_categr_count: min_count,
        min_categr_counts: Default::default(),
        share_embedding: Default::default(),
        normalizer: Default::default(),
        fill_na: Default::default(),
        sequence: Vec::new(),
        group_id: None,
        bucketize: Default::default(),
        embedding_dims: Default::default(),
        na_token: Default::default(),
        integer_keys: Default::default(),
    };
    let mut unpooled = Vec::new();
    for col in cols {
        let Value::Mapping(m) = col else {
            return Err(bad(
                dataset_id,
                "feature_cols",
                col,
                "entries must be mappings",
            ));
        };
        let col: Section = as_section(
            Path::new(dataset_id),
            "feature_cols",
            Value::Mapping(m.clone()),
        )?;
        let names = names(dataset_id, "feature_cols", col.get("name"))?;
        let owner = format!("{dataset_id}: feature {}", names.join(", "));
        if col.get("active").is_some_and(is_off) {
            continue;
        }
        let kind = match col.get("type") {
            Some(Value::String(t)) => t.to_ascii_lowercase(),
            other => {
                return Err(bad(
                    &owner,
                    "type",
                    other.unwrap_or(&Value::Null),
                    "must be numeric, categorical, sequence or meta",
                ));
            }
        };
        check_feature_keys(&owner, &kind, &col, &dims, csv)?;
        let bucketize = match (kind.as_str(), col.get("category_processor")) {
            ("categorical", Some(Value::String(p))) => {
                let num_buckets = match col.get("num_buckets") {
                    None => num_buckets,
                    Some(v) => bucket_count(&owner, v)?,
                };
                Some(if p == "quantile_bucket" {
                    Bucketize::QuantileBucket { num_buckets }
                } else {
                    Bucketize::HashBucket { num_buckets }
                })
            }
            _ => None,
        };
        // A tokenised field's missing-value token (a quantile-bucketed one's fill_na is a number).
        if let (Some(Value::String(na)), "categorical" | "sequence") =
            (col.get("fill_na"), kind.as_str())
            && !na.is_empty()
        {
            for name in &names {
                spec.na_token.insert(name.clone(), na.clone());
            }
        }
        // FuxiCTR reads a CSV column as its dtype says (a Parquet column as its own type, which
        // the fitting sees): integer keys order their vocabulary by value.
        if csv
            && kind == "categorical"
            && bucketize.is_none()
            && col.get("dtype").and_then(Value::as_str) == Some("int")
        {
            spec.integer_keys.extend(names.iter().cloned());
        }
        if let Some(v) = col.get("embedding_dim") {
            // Checked above: null, the model's, or (DNN, DCNv2) a width of its own.
            let own = v.as_u64().and_then(|d| usize::try_from(d).ok());
            for name in &names {
                spec.embedding_dims.insert(name.clone(), own);
            }
        }
        if let Some(b) = bucketize {
            // FuxiCTR's bucket branch reads neither; Ferry says so rather than drop them.
            for key in ["min_categr_count", "share_embedding"] {
                if let Some(v) = col.get(key) {
                    return Err(unsupported(
                        &owner,
                        key,
                        v,
                        "a bucketed field has buckets, not a vocabulary",
                    ));
                }
            }
            let fill = col.get("fill_na").and_then(Value::as_f64);
            for name in &names {
                spec.bucketize.insert(name.clone(), b);
                if let (Some(f), Bucketize::QuantileBucket { .. }) = (fill, b) {
                    spec.fill_na.insert(name.clone(), f);
                }
            }
        }
        // A field's own min_categr_count (FuxiCTR reads it per feature, the dataset's by default).
        if let Some(own) = col.get("min_categr_count").and_then(Value::as_u64)
            && own != min_count
            && matches!(kind.as_str(), "categorical" | "sequence")
        {
            for name in &names {
                spec.min_categr_counts.insert(name.clone(), own);
            }
        }
        if let (Some(Value::String(shared)), "categorical") =
            (col.get("share_embedding"), kind.as_str())
        {
            for name in &names {
                spec.share_embedding.insert(name.clone(), shared.clone());
            }
        }
        let target = match kind.as_str() {
            "numeric" => &mut spec.numeric,
            "categorical" => &mut spec.categorical,
            "meta" => &mut spec.id_columns,
            "sequence" => {
                let (q, pooled) = sequence_spec(&owner, &col)?;
                if !pooled {
                    unpooled.extend(names.iter().cloned());
                }
                spec.sequence.extend(
                    names
                        .into_iter()
                        .map(|name| SequenceSpec { name, ..q.clone() }),
                );
                continue;
            }
            other => {
                return Err(unsupported(
                    &owner,
                    "type",
                    &Value::String(other.to_owned()),
                    "numeric, categorical, sequence and meta features only",
                ));
            }
        };
        if kind == "numeric" {
            let norm = normalizer(&owner, col.get("normalizer").unwrap_or(&Value::Null))?;
            let fill = col.get("fill_na").and_then(Value::as_f64);
            for name in &names {
                spec.normalizer.insert(name.clone(), norm);
                if let Some(f) = fill {
                    spec.fill_na.insert(name.clone(), f);
                }
            }
        }
        target.extend(names);
    }
    spec.labels = match d.get("label_col") {
        Some(Value::Sequence(labels)) => labels
            .iter()
            .map(|l| label_name(dataset_id, l))
            .collect::<Result<_>>()?,
        Some(l) => vec![label_name(dataset_id, l)?],
        None => {
            return Err(CtrError::Config(format!(
                "{dataset_id}: label_col is missing"
            )));
        }
    };
    spec.validate()?;
    Ok((spec, unpooled))
}

fn names(owner: &str, key: &str, v: Option<&Value>) -> Result<Vec<String>> {
    match v {
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Sequence(items)) if !items.is_empty() => items
            .iter()
            .map(|i| match i {
                Value::String(s) => Ok(s.clone()),
                other => Err(bad(owner, key, other, "names must be strings")),
            })
            .collect(),
        other => Err(bad(
            owner,
            key,
            other.unwrap_or(&Value::Null),
            "needs a name or a list of names",
        )),
    }
}

fn label_name(dataset_id: &str, l: &Value) -> Result<String> {
    let Value::Mapping(m) = l else {
        return Err(bad(
            dataset_id,
            "label_col",
            l,
            "must be {name: ..., dtype: ...}",
        ));
    };
    let mut found = names(dataset_id, "label_col", m.get("name"))?;
    match (found.len(), found.pop()) {
        (1, Some(name)) => Ok(name),
        _ => Err(bad(
            dataset_id,
            "label_col",
            l,
            "names one column per label",
        )),
    }
}

/// A feature's keys: what Ferry does the same way passes, the rest is refused by name.
fn check_feature_keys(
    owner: &str,
    kind: &str,
    col: &Section,
    dims: &FeatureDims,
    csv: bool,
) -> Result<()> {
    for (key, v) in col {
        match key.as_str() {
            // FuxiCTR would parse the field as a number and make a token of the number.
            "dtype"
                if csv
                    && kind == "categorical"
                    && !matches!(v.as_str(), Some("str" | "int"))
                    && col.get("category_processor").and_then(Value::as_str)
                        != Some("quantile_bucket") =>
            {
                return Err(unsupported(
                    owner,
                    key,
                    v,
                    "categorical CSV columns are read as text (`dtype: str`) or integers (`dtype: int`)",
                ));
            }
            "name" | "active" | "type" | "dtype" | "source" => {}
            "splitter" | "max_len" | "padding" | "feature_encoder" | "share_embedding"
                if kind == "sequence" => {}
            "category_processor" if kind == "categorical" => {
                if !matches!(v.as_str(), Some("quantile_bucket" | "hash_bucket")) {
                    return Err(unsupported(
                        owner,
                        key,
                        v,
                        "quantile_bucket and hash_bucket are followed",
                    ));
                }
            }
            "num_buckets" if kind == "categorical" => {
                bucket_count(owner, v)?;
            }
            "share_embedding" if kind == "categorical" => {
                if v.as_str().is_none_or(str::is_empty) {
                    return Err(bad(owner, key, v, "must name a categorical feature"));
                }
            }
            "min_categr_count" => {
                if v.as_u64().is_none_or(|n| n == 0) {
                    return Err(bad(owner, key, v, "must be a count >= 1"));
                }
            }
            "embedding_dim" if !v.is_null() && v.as_u64().is_none_or(|d| d == 0 || d > 1 << 16) => {
                return Err(bad(owner, key, v, "must be a width from 1 to 65536"));
            }
            "embedding_dim"
                if !v.is_null() && v.as_u64() != Some(dims.model) && !dims.per_feature =>
            {
                return Err(unsupported(
                    owner,
                    key,
                    v,
                    &format!(
                        "FuxiCTR's {} stacks its fields' embeddings, one width for all (the model's embedding_dim, {}); DNN and DCNv2 take a width per feature",
                        dims.model_name, dims.model
                    ),
                ));
            }
            "embedding_dim" => {}
            "normalizer" if kind == "numeric" => {
                normalizer(owner, v)?;
            }
            "fill_na" if kind == "numeric" => {
                if !v.as_f64().is_some_and(f64::is_finite) {
                    return Err(bad(owner, key, v, "must be a number"));
                }
            }
            "fill_na"
                if col.get("category_processor").and_then(Value::as_str)
                    == Some("quantile_bucket") =>
            {
                if !v.as_f64().is_some_and(f64::is_finite) {
                    return Err(bad(owner, key, v, "must be a number"));
                }
            }
            "fill_na" if kind == "categorical" || kind == "sequence" => {
                if v.as_str().is_none() {
                    return Err(bad(
                        owner,
                        key,
                        v,
                        "must be a text: the token a missing value becomes",
                    ));
                }
            }
            "remap" if !is_off(v) => {}
            _ if is_off(v) => {}
            _ => {
                return Err(unsupported(
                    owner,
                    key,
                    v,
                    "see 'Bring a FuxiCTR configuration' in docs/operations.md",
                ));
            }
        }
    }
    Ok(())
}

/// The embedding widths a dataset's features may have: the model's, or (when the model
/// flattens its fields' embeddings) one of their own.
struct FeatureDims {
    model: u64,
    per_feature: bool,
    model_name: String,
}

/// A `num_buckets`: 1 to `MAX_BUCKETS`.
fn bucket_count(owner: &str, v: &Value) -> Result<usize> {
    v.as_u64()
        .and_then(|n| usize::try_from(n).ok())
        .filter(|n| (1..=crate::features::MAX_BUCKETS).contains(n))
        .ok_or_else(|| {
            bad(
                owner,
                "num_buckets",
                v,
                &format!(
                    "must be a count of buckets from 1 to {}",
                    crate::features::MAX_BUCKETS
                ),
            )
        })
}

/// A sequence feature's `splitter` (`^` by default), `max_len` (0: the longest in the training
/// split), `padding` (`post` by default, as FuxiCTR's `fit_sequence_col`) and
/// `feature_encoder` (masked average pooling by default, or masked sum pooling; `false` beside
/// the spec when it is off, which only DIN's attended sequences may be).
fn sequence_spec(owner: &str, col: &Section) -> Result<(SequenceSpec, bool)> {
    let splitter = match col.get("splitter") {
        None | Some(Value::Null) => "^".to_owned(),
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(v) => return Err(bad(owner, "splitter", v, "must be a non-empty text")),
    };
    let max_len = match col.get("max_len") {
        None | Some(Value::Null) => 0,
        Some(v) => v
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| bad(owner, "max_len", v, "must be a length (0: the longest)"))?,
    };
    let padding = match col.get("padding").and_then(Value::as_str) {
        None | Some("post") => Padding::Post,
        Some("pre") => Padding::Pre,
        Some(_) => {
            let v = col.get("padding").unwrap_or(&Value::Null);
            return Err(bad(owner, "padding", v, "must be pre or post"));
        }
    };
    let (pooling, pooled) = match col.get("feature_encoder") {
        None => (Pooling::Mean, true),
        // DIN's attention takes the pooling's place.
        Some(Value::Null) => (Pooling::Mean, false),
        Some(Value::String(e)) if e == "layers.MaskedAveragePooling()" => (Pooling::Mean, true),
        Some(Value::String(e)) if e == "layers.MaskedSumPooling()" => (Pooling::Sum, true),
        Some(v) => {
            return Err(unsupported(
                owner,
                "feature_encoder",
                v,
                "a sequence is pooled by layers.MaskedAveragePooling() or layers.MaskedSumPooling(), or left unpooled (null) for DIN's attention",
            ));
        }
    };
    let share_embedding = match col.get("share_embedding") {
        None | Some(Value::Null) => None,
        Some(Value::String(c)) => Some(c.clone()),
        Some(v) => return Err(bad(owner, "share_embedding", v, "must name a feature")),
    };
    Ok((
        SequenceSpec {
            name: String::new(),
            splitter,
            max_len,
            padding,
            pooling,
            share_embedding,
        },
        pooled,
    ))
}

/// A numeric feature's `normalizer`: none (the value as it is), MinMaxScaler or StandardScaler.
fn normalizer(owner: &str, v: &Value) -> Result<Normalizer> {
    match v {
        Value::Null => Ok(Normalizer::None),
        Value::String(n) if n == "MinMaxScaler" => Ok(Normalizer::MinMaxScaler),
        Value::String(n) if n == "StandardScaler" => Ok(Normalizer::StandardScaler),
        other => Err(unsupported(
            owner,
            "normalizer",
            other,
            "MinMaxScaler, StandardScaler, or none (the value as it is)",
        )),
    }
}

/// FuxiCTR's regularizer forms: a float (L2), `l1(x)`, `l2(x)` or `l1_l2(x, y)`.
fn penalties(owner: &str, key: &str, v: &Value) -> Result<Vec<Penalty>> {
    let term = |p: u8, x: &str| -> Result<Penalty> {
        match x.trim().parse::<f64>() {
            Ok(lambda) if lambda >= 0.0 && lambda.is_finite() => Ok(Penalty { p, lambda }),
            _ => Err(bad(owner, key, v, "needs a weight of 0 or more")),
        }
    };
    let terms = match v {
        Value::Null => Vec::new(),
        Value::Number(n) => {
            let x = n
                .as_f64()
                .ok_or_else(|| bad(owner, key, v, "must be a number"))?;
            vec![term(2, &x.to_string())?]
        }
        Value::String(s) => {
            let inner = |prefix: &str| s.strip_prefix(prefix).and_then(|r| r.strip_suffix(')'));
            if let Some(x) = inner("l1(") {
                vec![term(1, x)?]
            } else if let Some(x) = inner("l2(") {
                vec![term(2, x)?]
            } else if let Some((a, b)) = inner("l1_l2(").and_then(|r| r.split_once(',')) {
                vec![term(1, a)?, term(2, b)?]
            } else {
                return Err(bad(
                    owner,
                    key,
                    v,
                    "must be a number, l1(x), l2(x) or l1_l2(x, y)",
                ));
            }
        }
        other => {
            return Err(bad(
                owner,
                key,
                other,
                "must be a number, l1(x), l2(x) or l1_l2(x, y)",
            ));
        }
    };
    Ok(terms.into_iter().filter(|t| t.lambda > 0.0).collect())
}

/// FuxiCTR's keys → Ferry's, for those every model uses as they are.
const MODEL_USED: &[(&str, &str)] = &[
    ("embedding_dim", "embedding_dim"),
    ("net_dropout", "dropout"),
    ("batch_size", "batch_size"),
    ("epochs", "epochs"),
    ("learning_rate", "learning_rate"),
    ("optimizer", "optimizer"),
    ("seed", "seed"),
    ("early_stop_patience", "early_stop_patience"),
    ("batch_norm", "batch_norm"),
];

/// Per model: FuxiCTR's keys → Ferry's, with FuxiCTR's defaults where Ferry's differ.
fn model_keys(kind: ModelKind) -> &'static [(&'static str, &'static str, &'static str)] {
    const MLP: &str = "[64, 64, 64]";
    match kind {
        ModelKind::DeepFM | ModelKind::DNN | ModelKind::WideDeep | ModelKind::PNN => {
            &[("hidden_units", "hidden_units", MLP)]
        }
        ModelKind::DCN => &[
            ("parallel_dnn_hidden_units", "hidden_units", "[]"),
            ("stacked_dnn_hidden_units", "stacked_hidden_units", "[]"),
            ("num_cross_layers", "num_cross_layers", "3"),
            ("model_structure", "model_structure", "\"parallel\""),
            ("use_low_rank_mixture", "use_low_rank_mixture", "false"),
            ("low_rank", "low_rank", "32"),
            ("num_experts", "num_experts", "4"),
        ],
        ModelKind::XDeepFM => &[
            ("dnn_hidden_units", "hidden_units", MLP),
            ("cin_hidden_units", "cin_hidden_units", "[16, 16, 16]"),
        ],
        ModelKind::AutoInt => &[
            ("dnn_hidden_units", "hidden_units", MLP),
            ("attention_layers", "attention_layers", "2"),
            ("num_heads", "num_heads", "1"),
            ("attention_dim", "attention_dim", "8"),
            ("use_residual", "use_residual", "true"),
            ("use_scale", "use_scale", "false"),
            ("use_wide", "use_wide", "false"),
        ],
        ModelKind::FiBiNET => &[
            ("hidden_units", "hidden_units", "[]"),
            ("reduction_ratio", "reduction_ratio", "3"),
            ("bilinear_type", "bilinear_type", "\"field_interaction\""),
        ],
        ModelKind::FinalMLP => &[
            ("mlp1_hidden_units", "mlp1_hidden_units", MLP),
            ("mlp2_hidden_units", "mlp2_hidden_units", MLP),
            ("mlp1_dropout", "mlp1_dropout", "0"),
            ("mlp2_dropout", "mlp2_dropout", "0"),
            ("use_fs", "use_fs", "true"),
            ("fs_hidden_units", "fs_hidden_units", "[64]"),
            ("num_heads", "num_heads", "1"),
            ("mlp1_batch_norm", "mlp1_batch_norm", "false"),
            ("mlp2_batch_norm", "mlp2_batch_norm", "false"),
        ],
        ModelKind::MMoE => &[
            ("num_experts", "num_experts", "4"),
            (
                "expert_hidden_units",
                "expert_hidden_units",
                "[512, 256, 128]",
            ),
            ("gate_hidden_units", "gate_hidden_units", "[128, 64]"),
            ("tower_hidden_units", "tower_hidden_units", "[128, 64]"),
        ],
        ModelKind::ShareBottom => &[
            ("bottom_hidden_units", "bottom_hidden_units", MLP),
            ("tower_hidden_units", "tower_hidden_units", "[64]"),
        ],
        ModelKind::PLE => &[
            ("num_layers", "num_layers", "1"),
            ("num_shared_experts", "num_shared_experts", "1"),
            ("num_specific_experts", "num_specific_experts", "1"),
            (
                "expert_hidden_units",
                "expert_hidden_units",
                "[512, 256, 128]",
            ),
            ("gate_hidden_units", "gate_hidden_units", "[128, 64]"),
            ("tower_hidden_units", "tower_hidden_units", "[128, 64]"),
        ],
        ModelKind::DIN => &[
            ("dnn_hidden_units", "hidden_units", "[512, 128, 64]"),
            ("attention_hidden_units", "attention_hidden_units", "[64]"),
            (
                "attention_hidden_activations",
                "attention_hidden_activations",
                "\"Dice\"",
            ),
            (
                "attention_output_activation",
                "attention_output_activation",
                "null",
            ),
            ("attention_dropout", "attention_dropout", "0"),
            ("din_use_softmax", "din_use_softmax", "false"),
        ],
        ModelKind::LR | ModelKind::FM => &[],
    }
}

/// Keys whose value is one of a few names, with those names (FuxiCTR's spelling).
const MODEL_CHOICES: &[(&str, &[&str])] = &[
    (
        "model_structure",
        &["crossnet_only", "stacked", "parallel", "stacked_parallel"],
    ),
    (
        "bilinear_type",
        &["field_all", "field_each", "field_interaction"],
    ),
];

/// FuxiCTR's defaults (its `BaseModel` and models) for keys every model uses.
const MODEL_DEFAULTS: &[(&str, &str)] = &[("embedding_dim", "10"), ("early_stop_patience", "2")];

/// FuxiCTR's run-time knobs with nothing to do in Ferry (it keeps its own model directory,
/// workers, logging and checkpoints).
const MODEL_PASSED: &[&str] = &[
    "model_root",
    "num_workers",
    "verbose",
    "pickle_feature_encoder",
    "save_best_only",
    "debug_mode",
    "gpu",
    "metrics",
    "model_id",
    "feature_config",
    "num_tasks",
];

fn model_config(expid: &str, mut m: Section, warnings: &mut Vec<String>) -> Result<ModelConfig> {
    let kind = match m.remove("model") {
        // FuxiCTR's DCN is the first cross network (a vector per layer); Ferry's is DCNv2.
        Some(Value::String(name)) if name.eq_ignore_ascii_case("dcn") => {
            return Err(unsupported(
                expid,
                "model",
                &Value::String(name),
                "its DCN is FuxiCTR's DCNv2 with parallel structure: say `model: DCNv2`",
            ));
        }
        Some(Value::String(name)) => ModelKind::parse(&name).ok_or_else(|| {
            unsupported(
                expid,
                "model",
                &Value::String(name.clone()),
                "LR, FM, DNN, WideDeep, DeepFM, PNN, DCNv2, xDeepFM, AutoInt, FiBiNET, FinalMLP, DIN, MMoE, ShareBottom and PLE",
            )
        })?,
        other => {
            return Err(bad(
                expid,
                "model",
                other.as_ref().unwrap_or(&Value::Null),
                "must name a model",
            ));
        }
    };
    let own = model_keys(kind);
    let mut out = Map::new();
    out.insert(
        "model".into(),
        serde_json::to_value(kind).map_err(json_err)?,
    );
    out.insert("model_id".into(), Json::String(expid.to_owned()));
    let defaults = MODEL_DEFAULTS
        .iter()
        .copied()
        .chain(own.iter().map(|&(_, ours, default)| (ours, default)));
    for (ours, default) in defaults {
        let value = serde_json::from_str(default).map_err(json_err)?;
        out.insert(ours.to_owned(), value);
    }
    for (key, v) in &m {
        let used = MODEL_USED
            .iter()
            .copied()
            .chain(own.iter().map(|&(theirs, ours, _)| (theirs, ours)))
            .find(|(theirs, _)| theirs == key);
        if let Some((_, ours)) = used {
            if let Some((_, names)) = MODEL_CHOICES.iter().find(|(k, _)| k == key)
                && !v.as_str().is_some_and(|n| names.contains(&n))
            {
                return Err(bad(
                    expid,
                    key,
                    v,
                    &format!("must be one of {}", names.join(", ")),
                ));
            }
            if !v.is_null() {
                out.insert(ours.to_owned(), serde_json::to_value(v).map_err(json_err)?);
            }
            continue;
        }
        if MODEL_PASSED.contains(&key.as_str()) {
            continue;
        }
        if key == "monitor" {
            out.insert(key.clone(), monitor(expid, v)?);
            continue;
        }
        // DIN's DNN: ReLU or Dice, one name or one per layer (FuxiCTR's `MLP_Block`).
        if kind == ModelKind::DIN && key == "dnn_activations" {
            let activation = if all_are(v, "relu") {
                "ReLU"
            } else if all_are(v, "dice") {
                "Dice"
            } else {
                return Err(unsupported(
                    expid,
                    key,
                    v,
                    "DIN's DNN takes ReLU or Dice, the same on every layer",
                ));
            };
            out.insert(key.clone(), Json::from(activation));
            continue;
        }
        if kind == ModelKind::DIN && (key == "din_target_field" || key == "din_sequence_field") {
            out.insert(key.clone(), Json::from(din_fields(expid, key, v)?));
            continue;
        }
        if key == "monitor_mode" {
            let mode = match v.as_str().map(str::to_ascii_lowercase).as_deref() {
                Some("max") => "max",
                Some("min") => "min",
                _ => return Err(bad(expid, key, v, "must be max or min")),
            };
            out.insert(key.clone(), Json::String(mode.into()));
            continue;
        }
        if key == "embedding_regularizer" || key == "net_regularizer" {
            let terms = penalties(expid, key, v)?;
            out.insert(key.clone(), serde_json::to_value(terms).map_err(json_err)?);
            continue;
        }
        // Settings Ferry follows only in the way it trains.
        let same = match key.as_str() {
            "loss" => all_are(v, "binary_crossentropy"),
            "task" => all_are(v, "binary_classification"),
            "hidden_activations"
            | "dnn_activations"
            | "mlp1_hidden_activations"
            | "mlp2_hidden_activations"
            | "excitation_activation" => all_are(v, "relu"),
            "product_type" if kind == ModelKind::PNN => all_are(v, "inner"),
            "shuffle" => v.as_bool() == Some(true),
            // DIN's attention replaces its sequences' pooling: FuxiCTR's configs say so by
            // turning their encoder off.
            "feature_specs" if kind == ModelKind::DIN => unpooled_only(v),
            "regularizer" | "eval_steps" | "use_features" | "feature_specs" | "layer_norm"
            | "fs1_context" | "fs2_context" => is_off(v),
            _ => {
                warnings.push(format!(
                    "{expid}: {key} is not a setting of {kind:?} that Ferry knows; ignored, as FuxiCTR's {kind:?} would ignore it"
                ));
                true
            }
        };
        if !same {
            return Err(unsupported(
                expid,
                key,
                v,
                "Ferry trains with binary cross-entropy, ReLU and shuffled batches, and validates once per epoch",
            ));
        }
    }
    let config: ModelConfig = serde_json::from_value(Json::Object(out))
        .map_err(|e| CtrError::Config(format!("{expid}: {e}")))?;
    config.validate()?;
    // FuxiCTR would leave any other sequence it names unpooled, as DIN's attention output
    // takes only the attended ones' place.
    if kind == ModelKind::DIN
        && let Some(v) = m.get("feature_specs")
    {
        for name in unpooled_names(v) {
            if !config
                .din_sequence_field
                .iter()
                .any(|f| f.names().contains(&name))
            {
                return Err(unsupported(
                    expid,
                    "feature_specs",
                    v,
                    &format!(
                        "{name} is not a din_sequence_field: only a sequence DIN attends over may go unpooled"
                    ),
                ));
            }
        }
    }
    Ok(config)
}

/// The names `feature_specs` turns the encoder off for.
fn unpooled_names(v: &Value) -> Vec<String> {
    let Value::Sequence(items) = v else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|i| i.as_mapping()?.get("name")?.as_str().map(str::to_owned))
        .collect()
}

/// DIN's `din_target_field` / `din_sequence_field`: a field name, a tuple of fields attended
/// together (`!!python/tuple [item_id, cate_id]`, as FuxiCTR's YAML loader reads tuples), or a
/// list of either, one per attention unit. Written for Ferry as a name or a list of names each.
fn din_fields(owner: &str, key: &str, v: &Value) -> Result<Vec<Json>> {
    let name = |x: &Value| x.as_str().map(|n| Json::String(n.to_owned()));
    let tuple = |x: &Value| match x {
        Value::Tagged(t) if t.tag == "python/tuple" => match &t.value {
            Value::Sequence(items) if !items.is_empty() => items
                .iter()
                .map(name)
                .collect::<Option<Vec<_>>>()
                .map(Json::Array),
            _ => None,
        },
        _ => None,
    };
    let entry = |x: &Value| name(x).or_else(|| tuple(x));
    let fields = match v {
        Value::Sequence(items) => items.iter().map(entry).collect::<Option<Vec<_>>>(),
        x => entry(x).map(|f| vec![f]),
    };
    fields.ok_or_else(|| {
        unsupported(
            owner,
            key,
            v,
            "a field name, a tuple of them attended together (!!python/tuple [a, b]), or a list of either; FuxiCTR reads a plain nested list as a list, not a tuple",
        )
    })
}

/// `feature_specs` that only turn sequence encoders off: `[{name: X, feature_encoder: null}]`.
fn unpooled_only(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Sequence(items) => items.iter().all(|i| {
            i.as_mapping().is_some_and(|m| {
                m.iter().all(|(k, x)| match k.as_str() {
                    Some("name") => x.as_str().is_some(),
                    Some("feature_encoder") => x.is_null(),
                    _ => false,
                })
            })
        }),
        _ => false,
    }
}

/// FuxiCTR's `monitor`: a metric's name (`AUC`) or weights of metrics (`{AUC: 1, logloss: -1}`).
fn monitor(owner: &str, v: &Value) -> Result<Json> {
    let mut weights = Map::new();
    match v {
        Value::String(name) => {
            weights.insert(name.clone(), Json::from(1.0));
        }
        Value::Mapping(m) => {
            for (k, w) in m {
                match (k.as_str(), w.as_f64()) {
                    (Some(name), Some(w)) => {
                        weights.insert(name.to_owned(), Json::from(w));
                    }
                    _ => return Err(bad(owner, "monitor", v, "must map metric names to weights")),
                }
            }
        }
        _ => {
            return Err(bad(
                owner,
                "monitor",
                v,
                "must name a metric or map metric names to weights",
            ));
        }
    }
    Ok(Json::Object(weights))
}

fn json_err(e: serde_json::Error) -> CtrError {
    CtrError::Config(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DinField;

    /// A configuration folder holding these `dataset_config.yaml` and `model_config.yaml`.
    fn config_dir(datasets: &str, models: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().expect("tmp");
        std::fs::write(d.path().join("dataset_config.yaml"), datasets).expect("write");
        std::fs::write(d.path().join("model_config.yaml"), models).expect("write");
        d
    }

    /// FuxiCTR's own demo configurations, vendored (see `tests/fixtures/fuxictr/NOTICE.md`).
    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/fuxictr")
            .join(name)
    }

    /// A copy of a fixture with some lines replaced (to vary one key at a time).
    fn varied(name: &str, file: &str, from: &str, to: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tmp");
        for f in ["dataset_config.yaml", "model_config.yaml"] {
            let text = std::fs::read_to_string(fixture(name).join(f)).expect("read");
            let text = if f == file {
                assert!(text.contains(from), "{from} in {f}");
                text.replace(from, to)
            } else {
                text
            };
            std::fs::write(dir.path().join(f), text).expect("write");
        }
        dir
    }

    fn err(config_dir: &Path, expid: &str) -> String {
        load(config_dir, expid, Path::new("/work"))
            .expect_err("refused")
            .to_string()
    }

    /// The CTR bench's configuration (`cargo xtask bench ctr --baseline fuxictr`), which FuxiCTR
    /// runs with its own `load_config` on the other side.
    fn bench_config() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../xtask/fuxictr/config")
    }

    #[test]
    fn the_ctr_bench_s_experiments_read_with_nothing_refused_or_passed_over() {
        // Every experiment of the file (what `cargo xtask bench ctr` offers), Base aside.
        let text = std::fs::read_to_string(bench_config().join("model_config.yaml")).expect("read");
        let file: serde_yaml::Mapping = serde_yaml::from_str(&text).expect("yaml");
        let experiments: Vec<&str> = (file.keys())
            .filter_map(Value::as_str)
            .filter(|k| *k != "Base")
            .collect();
        for named in ["DeepFM_bench", "DCNv2_bench", "DIN_bench", "MMoE_bench"] {
            assert!(experiments.contains(&named), "{named}");
        }
        for expid in experiments {
            let e = load(&bench_config(), expid, Path::new("/bench"))
                .unwrap_or_else(|e| panic!("{expid}: {e}"));
            assert_eq!(e.warnings, Vec::<String>::new(), "{expid}");
            assert!(e.data.train.ends_with("synth/train.parquet"), "{expid}");
            assert_eq!(e.model.embedding_dim, 16, "{expid}");
            assert_eq!(e.model.batch_size, 4096, "{expid}");
            let labels = if e.model.model.is_multi_task() { 2 } else { 1 };
            assert_eq!(e.features.labels.len(), labels, "{expid}");
        }
        // DIN's sequence is left unpooled (`feature_encoder: null`): its attention pools it.
        let din = load(&bench_config(), "DIN_bench", Path::new("/bench")).expect("DIN");
        let seq = &din.features.sequence[0];
        assert_eq!(
            (
                seq.name.as_str(),
                seq.max_len,
                seq.share_embedding.as_deref()
            ),
            ("click_history", 20, Some("C14"))
        );
        assert_eq!(
            din.model.din_sequence_field,
            [DinField::from("click_history")]
        );
    }

    #[test]
    fn a_feature_s_own_min_categr_count_and_shared_embedding_are_kept_by_name() {
        let d = config_dir(
            "d:\n  data_format: csv\n  train_data: t.csv\n  min_categr_count: 2\n  feature_cols:\n    - {name: [C1, C2], active: True, dtype: str, type: categorical, min_categr_count: 5}\n    - {name: C3, active: True, dtype: str, type: categorical, min_categr_count: 2, share_embedding: C1}\n    - {name: s, active: True, dtype: str, type: sequence, min_categr_count: 1}\n  label_col: {name: clk, dtype: float}\n",
            "x:\n  model: DNN\n  dataset_id: d\n",
        );
        let e = load(d.path(), "x", Path::new("/work")).expect("load");
        assert_eq!(
            e.features.share_embedding,
            BTreeMap::from([("C3".into(), "C1".into())])
        );
        assert_eq!(e.features.min_categr_count, 2);
        assert_eq!(
            e.features.min_categr_counts,
            BTreeMap::from([("C1".into(), 5), ("C2".into(), 5), ("s".into(), 1)])
        );
    }

    #[test]
    fn category_processors_put_fields_in_buckets_with_the_dataset_s_count_by_default() {
        let d = config_dir(
            "d:\n  data_format: csv\n  train_data: t.csv\n  num_buckets: 6\n  feature_cols:\n    - {name: [I1, I2], active: True, dtype: float, type: categorical, category_processor: quantile_bucket, fill_na: -1}\n    - {name: I3, active: True, dtype: float, type: categorical, category_processor: quantile_bucket, num_buckets: 20}\n    - {name: C1, active: True, dtype: str, type: categorical, category_processor: hash_bucket, num_buckets: 1000}\n    - {name: C2, active: True, dtype: str, type: categorical}\n  label_col: {name: clk, dtype: float}\n",
            "x:\n  model: DNN\n  dataset_id: d\n",
        );
        let e = load(d.path(), "x", Path::new("/work")).expect("load");
        assert!(e.warnings.is_empty(), "{:?}", e.warnings);
        assert_eq!(
            e.features.bucketize,
            BTreeMap::from([
                ("I1".into(), Bucketize::QuantileBucket { num_buckets: 6 }),
                ("I2".into(), Bucketize::QuantileBucket { num_buckets: 6 }),
                ("I3".into(), Bucketize::QuantileBucket { num_buckets: 20 }),
                ("C1".into(), Bucketize::HashBucket { num_buckets: 1000 }),
            ])
        );
        assert_eq!(e.features.categorical, ["I1", "I2", "I3", "C1", "C2"]);
        assert_eq!(
            e.features.fill_na,
            BTreeMap::from([("I1".into(), -1.0), ("I2".into(), -1.0)])
        );
        // What a bucketed field cannot have is named.
        for (col, named) in [
            ("category_processor: numeric_bucket", "category_processor"),
            (
                "category_processor: quantile_bucket, num_buckets: 0",
                "num_buckets",
            ),
            (
                "category_processor: quantile_bucket, min_categr_count: 2",
                "min_categr_count",
            ),
            (
                "category_processor: quantile_bucket, share_embedding: C2",
                "share_embedding",
            ),
            ("category_processor: quantile_bucket, fill_na: x", "fill_na"),
        ] {
            std::fs::write(
                d.path().join("dataset_config.yaml"),
                format!("d:\n  data_format: csv\n  train_data: t.csv\n  feature_cols:\n    - {{name: I1, active: True, dtype: float, type: categorical, {col}}}\n    - {{name: C2, active: True, dtype: str, type: categorical}}\n  label_col: {{name: clk, dtype: float}}\n"),
            )
            .expect("write");
            let said = err(d.path(), "x");
            assert!(said.contains(named), "{col}: {said}");
        }
    }

    #[test]
    fn a_tokenised_field_s_fill_na_is_its_missing_value_token() {
        let d = config_dir(
            "d:\n  data_format: csv\n  train_data: t.csv\n  feature_cols:\n    - {name: [C1, C2], active: True, dtype: str, type: categorical, fill_na: UNK}\n    - {name: C3, active: True, dtype: str, type: categorical, fill_na: ''}\n    - {name: s, active: True, dtype: str, type: sequence, fill_na: '-'}\n  label_col: {name: clk, dtype: float}\n",
            "x:\n  model: DNN\n  dataset_id: d\n",
        );
        let e = load(d.path(), "x", Path::new("/work")).expect("load");
        assert_eq!(
            e.features.na_token,
            BTreeMap::from([
                ("C1".into(), "UNK".into()),
                ("C2".into(), "UNK".into()),
                ("s".into(), "-".into()),
            ])
        );
        let d = config_dir(
            "d:\n  data_format: csv\n  train_data: t.csv\n  feature_cols:\n    - {name: C1, active: True, dtype: str, type: categorical, fill_na: [1]}\n  label_col: {name: clk, dtype: float}\n",
            "x:\n  model: DNN\n  dataset_id: d\n",
        );
        assert!(err(d.path(), "x").contains("fill_na"));
        // DNN and DCNv2 take a width per feature; the models that stack fields do not.
        for (model, ok) in [("DNN", true), ("DCNv2", true), ("DeepFM", false)] {
            let d = config_dir(
                "d:\n  data_format: csv\n  train_data: t.csv\n  feature_cols:\n    - {name: C1, active: True, dtype: str, type: categorical, embedding_dim: 7}\n    - {name: C2, active: True, dtype: str, type: categorical}\n  label_col: {name: clk, dtype: float}\n",
                &format!("x:\n  model: {model}\n  dataset_id: d\n  embedding_dim: 4\n"),
            );
            match load(d.path(), "x", Path::new("/work")) {
                Ok(e) => {
                    assert!(ok, "{model}");
                    assert_eq!(
                        e.features.embedding_dims,
                        BTreeMap::from([("C1".into(), Some(7))])
                    );
                }
                Err(e) => {
                    assert!(!ok, "{model}: {e}");
                    assert!(e.to_string().contains("embedding_dim"), "{e}");
                }
            }
        }
        // A CSV integer column's keys are ordered by value.
        let d = config_dir(
            "d:\n  data_format: csv\n  train_data: t.csv\n  feature_cols:\n    - {name: [C1, C2], active: True, dtype: int, type: categorical}\n  label_col: {name: clk, dtype: float}\n",
            "x:\n  model: DNN\n  dataset_id: d\n",
        );
        let e = load(d.path(), "x", Path::new("/work")).expect("load");
        assert_eq!(
            e.features.integer_keys,
            std::collections::BTreeSet::from(["C1".into(), "C2".into()])
        );
    }

    /// DIN's fields attended together, as FuxiCTR's YAML writes a tuple: alone or in a list,
    /// each read as one attention unit over the fields' embeddings side by side. A plain nested
    /// list (which FuxiCTR would take as a list and fail on) and tuples of unequal sizes are
    /// refused by name.
    #[test]
    fn din_fields_attended_together_are_read_from_python_tuples() {
        let datasets = "tup:\n  data_format: csv\n  train_data: t.csv\n  feature_cols:\n    - {name: [item, cate], active: True, dtype: str, type: categorical}\n    - {name: item_hist, active: True, dtype: str, type: sequence, splitter: ^, max_len: 4, share_embedding: item}\n    - {name: cate_hist, active: True, dtype: str, type: sequence, splitter: ^, max_len: 4, share_embedding: cate}\n  label_col: {name: clk, dtype: float}\n";
        let models = "Base: {model: DIN, dataset_id: tup, feature_specs: [{name: item_hist, feature_encoder: null}, {name: cate_hist, feature_encoder: null}]}\n\
            One: {din_target_field: !!python/tuple [item, cate], din_sequence_field: !!python/tuple [item_hist, cate_hist]}\n\
            Listed: {din_target_field: [!!python/tuple [item, cate]], din_sequence_field: [!!python/tuple [item_hist, cate_hist]]}\n\
            Nested: {din_target_field: [[item, cate]], din_sequence_field: [[item_hist, cate_hist]]}\n\
            Uneven: {din_target_field: !!python/tuple [item, cate], din_sequence_field: item_hist}\n";
        let d = config_dir(datasets, models);
        let together =
            |names: &[&str]| DinField::Together(names.iter().map(|n| (*n).to_owned()).collect());
        for expid in ["One", "Listed"] {
            let e = load(d.path(), expid, Path::new("/work"))
                .unwrap_or_else(|e| panic!("{expid}: {e}"));
            assert_eq!(
                e.model.din_target_field,
                [together(&["item", "cate"])],
                "{expid}"
            );
            assert_eq!(
                e.model.din_sequence_field,
                [together(&["item_hist", "cate_hist"])],
                "{expid}"
            );
            assert!(e.warnings.is_empty(), "{expid}: {:?}", e.warnings);
        }
        let said = err(d.path(), "Nested");
        assert!(
            (said.contains("din_target_field") || said.contains("din_sequence_field"))
                && said.contains("!!python/tuple"),
            "{said}"
        );
        let said = err(d.path(), "Uneven");
        assert!(
            said.contains("din_target_field") && said.contains("as many fields"),
            "{said}"
        );
    }

    #[test]
    fn an_unpooled_sequence_is_only_taken_as_the_one_din_attends_over() {
        let dir = tempfile::tempdir().expect("tmp");
        let datasets =
            std::fs::read_to_string(bench_config().join("dataset_config.yaml")).expect("read");
        std::fs::write(dir.path().join("dataset_config.yaml"), &datasets).expect("write");
        let models = "Base: {embedding_dim: 4}\n\
            D: {model: DeepFM, dataset_id: synth_seq}\n\
            N: {model: DIN, dataset_id: synth_seq, din_target_field: C14, din_sequence_field: C14}\n\
            A: {model: DIN, dataset_id: synth_seq, din_target_field: C14, din_sequence_field: click_history}\n\
            S: {model: DIN, dataset_id: synth_seq, din_target_field: C14, din_sequence_field: click_history, feature_specs: [{name: click_history, feature_encoder: null}]}\n\
            T: {model: DIN, dataset_id: synth_seq, din_target_field: C14, din_sequence_field: click_history, feature_specs: [{name: C14, feature_encoder: null}]}\n";
        std::fs::write(dir.path().join("model_config.yaml"), models).expect("write");
        for expid in ["D", "N"] {
            let said = err(dir.path(), expid);
            assert!(
                said.contains("click_history") && said.contains("feature_encoder"),
                "{expid}: {said}"
            );
        }
        assert!(load(dir.path(), "A", Path::new("/bench")).is_ok());
        // DIN's DNN may use Dice, one name or one per layer; other models may not.
        let models = "Base: {embedding_dim: 4, dataset_id: synth_seq, din_target_field: C14, din_sequence_field: click_history}\n\
            P: {model: DIN, dnn_activations: [Dice, dice]}\n\
            R: {model: DIN, dnn_activations: [relu, ReLU]}\n\
            M: {model: DIN, dnn_activations: [relu, Dice]}\n\
            F: {model: DeepFM, dnn_activations: Dice}\n";
        let d = config_dir(&datasets, models);
        let dice = |id: &str| load(d.path(), id, Path::new("/bench")).map(|e| e.model.dnn_dice());
        assert_eq!(dice("P").ok(), Some(true));
        assert_eq!(dice("R").ok(), Some(false));
        for id in ["M", "F"] {
            let said = err(d.path(), id);
            assert!(
                said.contains("dnn_activations") || said.contains("hidden_activations"),
                "{id}: {said}"
            );
        }
        // `feature_specs` may turn off the encoder of the attended sequence, no other.
        assert!(load(dir.path(), "S", Path::new("/bench")).is_ok());
        let said = err(dir.path(), "T");
        assert!(
            said.contains("feature_specs") && said.contains("C14 is not a din_sequence_field"),
            "{said}"
        );
    }

    #[test]
    fn fuxictrs_csv_demo_reads_as_deepfm_with_its_regularizer() {
        // Example 2 trains on a dataset FuxiCTR built beforehand (no feature_cols, only the
        // feature_map.json it wrote): refused by name too.
        let said = err(&fixture("example2"), "DeepFM_test_parquet");
        assert!(said.contains("feature_cols"), "{said}");

        let e = load(
            &fixture("example4"),
            "DeepFM_test_csv",
            Path::new("/work/demo"),
        )
        .expect("load");
        // FuxiCTR's L2 penalty on the embeddings, as its `get_regularizer` reads a float.
        assert_eq!(
            e.model.embedding_regularizer,
            [Penalty { p: 2, lambda: 1e-8 }]
        );
        assert!(e.model.net_regularizer.is_empty());
        assert_eq!(e.dataset_id, "tiny_example4");
        assert_eq!(e.data.format, DataFormat::Csv);
        // Relative to where FuxiCTR's script runs, as FuxiCTR opens them.
        assert_eq!(
            e.data.train,
            Path::new("/work/demo/../data/tiny_csv/train_sample.csv")
        );
        assert!(e.data.valid.is_some() && e.data.test.is_some());
        assert_eq!(e.features.categorical.len(), 14);
        assert_eq!(e.features.categorical[0], "userid");
        assert!(e.features.numeric.is_empty());
        assert_eq!(e.features.labels, ["clk"]);
        assert_eq!(e.features.min_categr_count, 1);
        let m = &e.model;
        assert_eq!(m.model, ModelKind::DeepFM);
        assert_eq!(m.model_id, "DeepFM_test_csv");
        assert_eq!(
            (m.embedding_dim, m.batch_size, m.epochs, m.seed),
            (4, 128, 1, 2019)
        );
        assert_eq!(m.hidden_units, [64, 32]);
        assert!((m.learning_rate - 1e-3).abs() < 1e-12);
        assert_eq!(m.early_stop_patience, 2);
        // Run-time knobs of FuxiCTR pass without a word; nothing unknown here.
        assert!(e.warnings.is_empty(), "{:?}", e.warnings);
    }

    #[test]
    fn base_settings_lie_under_each_experiment_and_fuxictr_defaults_fill_the_rest() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(
            dir.path().join("dataset_config.yaml"),
            "d1:\n  data_format: parquet\n  train_data: data/train.parquet\n  feature_cols:\n    - {name: [I1, I2], active: True, dtype: float, type: numeric, normalizer: MinMaxScaler}\n    - {name: C1, active: True, dtype: str, type: categorical}\n    - {name: C9, active: False, dtype: str, type: categorical, splitter: '^'}\n  label_col: [{name: click, dtype: float}, {name: conversion, dtype: float}]\n",
        )
        .expect("write");
        std::fs::create_dir(dir.path().join("model_config")).expect("mkdir");
        std::fs::write(
            dir.path().join("model_config/a.yaml"),
            "Base:\n  epochs: 7\n  batch_size: 64\n  seed: 1\n  shuffle: True\nMMoE_x:\n  batch_size: 99\n  model: MMoE\n  dataset_id: d1\n  batch_size: 32\n  sparkle: 3\n",
        )
        .expect("write");
        let e = load(dir.path(), "MMoE_x", dir.path()).expect("load");
        let m = &e.model;
        // The experiment's own keys win over Base's; Base fills what it leaves; a key given
        // twice keeps its last value (PyYAML's reading).
        assert_eq!((m.batch_size, m.epochs, m.seed), (32, 7, 1));
        // FuxiCTR's MMoE defaults, not Ferry's.
        assert_eq!(m.embedding_dim, 10);
        assert_eq!(m.expert_hidden_units, [512, 256, 128]);
        assert_eq!(m.gate_hidden_units, [128, 64]);
        assert_eq!(e.features.numeric, ["I1", "I2"]);
        // An inactive feature is left out, whatever it asks for.
        assert_eq!(e.features.categorical, ["C1"]);
        assert_eq!(e.features.labels, ["click", "conversion"]);
        assert_eq!(e.data.test, None);
        // A key FuxiCTR's MMoE would pass over is passed over here too, with a word; so is
        // the repeated key.
        assert_eq!(e.warnings.len(), 2, "{:?}", e.warnings);
        assert!(
            e.warnings
                .iter()
                .any(|w| w.contains("MMoE_x: batch_size is given more than once")),
            "{:?}",
            e.warnings
        );
        assert!(
            e.warnings.iter().any(|w| w.contains("sparkle")),
            "{:?}",
            e.warnings
        );

        let said = err(dir.path(), "nope");
        assert!(said.contains("nope is not in"), "{said}");

        // A configuration file that leads out of its folder is not read.
        let outside = tempfile::tempdir().expect("tmp");
        std::fs::write(outside.path().join("x.yaml"), "Base: {}\n").expect("write");
        std::os::unix::fs::symlink(
            outside.path().join("x.yaml"),
            dir.path().join("model_config/b.yaml"),
        )
        .expect("symlink");
        let said = err(dir.path(), "MMoE_x");
        assert!(said.contains("refused"), "{said}");
    }

    #[test]
    fn the_model_zoo_s_keys_reach_each_model() {
        let d = tempfile::tempdir().expect("tmp");
        std::fs::write(
            d.path().join("dataset_config.yaml"),
            "d:\n  data_format: csv\n  train_data: t.csv\n  feature_cols: [{name: [C1, C2], active: True, dtype: str, type: categorical}]\n  label_col: [{name: clk, dtype: float}, {name: buy, dtype: float}]\n",
        )
        .expect("write");
        // As FuxiCTR's model_zoo configs spell them.
        std::fs::write(
            d.path().join("model_config.yaml"),
            "Base:\n  embedding_dim: 8\n  dataset_id: d\n
X:\n  model: xDeepFM\n  dnn_hidden_units: [32, 16]\n  cin_hidden_units: [8, 4]\n  dnn_activations: relu\n
A:\n  model: AutoInt\n  dnn_hidden_units: []\n  attention_layers: 3\n  num_heads: 2\n  attention_dim: 16\n  use_scale: True\n  use_wide: True\n  layer_norm: False\n
F:\n  model: FiBiNET\n  hidden_units: [32]\n  reduction_ratio: 2\n  bilinear_type: field_each\n  excitation_activation: ReLU\n
M:\n  model: FinalMLP\n  mlp1_hidden_units: [32]\n  mlp2_hidden_units: [16, 8]\n  mlp1_dropout: 0.1\n  use_fs: False\n  fs1_context: []\n  num_heads: 4\n
P:\n  model: PLE\n  num_layers: 2\n  num_shared_experts: 2\n  num_specific_experts: 3\n  expert_hidden_units: [16]\n
S:\n  model: ShareBottom\n  bottom_hidden_units: [32]\n
D:\n  model: DCNv2\n  model_structure: stacked_parallel\n  use_low_rank_mixture: True\n  low_rank: 8\n  num_experts: 2\n  stacked_dnn_hidden_units: [16]\n  parallel_dnn_hidden_units: [32]\n
I:\n  model: PNN\n  product_type: outer\n
B:\n  model: FiBiNET\n  bilinear_type: field_pairs\n",
        )
        .expect("write");
        let m = |id: &str| load(d.path(), id, d.path()).expect(id).model;
        let x = m("X");
        assert_eq!(
            (x.model, x.hidden_units, x.cin_hidden_units),
            (ModelKind::XDeepFM, vec![32, 16], vec![8, 4])
        );
        let a = m("A");
        assert_eq!(a.model, ModelKind::AutoInt);
        assert!(a.hidden_units.is_empty() && a.use_scale && a.use_wide && a.use_residual);
        assert_eq!(
            (a.attention_layers, a.num_heads, a.attention_dim),
            (3, 2, 16)
        );
        let f = m("F");
        assert_eq!(
            (f.reduction_ratio, f.bilinear_type),
            (2, crate::model::BilinearType::FieldEach)
        );
        let fm = m("M");
        assert_eq!(
            (fm.mlp1_hidden_units, fm.mlp2_hidden_units, fm.num_heads),
            (vec![32], vec![16, 8], 4)
        );
        assert!(!fm.use_fs && fm.mlp1_dropout == 0.1);
        assert_eq!(fm.fs_hidden_units, [64], "FuxiCTR's default");
        let p = m("P");
        assert_eq!(
            (p.num_layers, p.num_shared_experts, p.num_specific_experts),
            (2, 2, 3)
        );
        assert_eq!(
            (p.gate_hidden_units, p.tower_hidden_units),
            (vec![128, 64], vec![128, 64])
        );
        let sb = m("S");
        assert_eq!(
            (sb.bottom_hidden_units, sb.tower_hidden_units),
            (vec![32], vec![64])
        );
        let dc = m("D");
        assert_eq!(
            dc.model_structure,
            crate::model::DcnStructure::StackedParallel
        );
        assert!(dc.use_low_rank_mixture);
        assert_eq!(
            (
                dc.low_rank,
                dc.num_experts,
                dc.hidden_units,
                dc.stacked_hidden_units
            ),
            (8, 2, vec![32], vec![16])
        );
        let said = err(d.path(), "I");
        assert!(said.contains("product_type"), "{said}");
        let said = err(d.path(), "B");
        assert!(
            said.contains("bilinear_type") && said.contains("field_each"),
            "{said}"
        );
    }

    #[test]
    fn numeric_normalizers_fill_values_and_regularizers_are_read_as_fuxictr_reads_them() {
        let d = config_dir(
            "d:\n  data_format: csv\n  train_data: t.csv\n  feature_cols:\n    - {name: [I1, I2], active: True, dtype: float, type: numeric}\n    - {name: I3, active: True, dtype: float, type: numeric, normalizer: StandardScaler, fill_na: -1}\n    - {name: I4, active: True, dtype: float, type: numeric, normalizer: MinMaxScaler}\n  label_col: {name: clk, dtype: float}\n",
            "Base: {dataset_id: d, model: DNN}\nA: {embedding_regularizer: 'l2(1.e-6)', net_regularizer: 'l1_l2(1.e-5, 2.e-5)'}\nB: {embedding_regularizer: 0.001, net_regularizer: 0}\nC: {net_regularizer: 'l3(1)'}\n",
        );
        let a = load(d.path(), "A", d.path()).expect("A");
        let f = &a.features;
        assert_eq!(f.normalizer["I1"], Normalizer::None);
        assert_eq!(f.normalizer["I2"], Normalizer::None);
        assert_eq!(f.normalizer["I3"], Normalizer::StandardScaler);
        assert_eq!(f.normalizer["I4"], Normalizer::MinMaxScaler);
        assert_eq!(f.fill_na.get("I3"), Some(&-1.0));
        assert_eq!(f.fill_na.get("I1"), None);
        assert_eq!(
            a.model.embedding_regularizer,
            [Penalty { p: 2, lambda: 1e-6 }]
        );
        assert_eq!(
            a.model.net_regularizer,
            [
                Penalty { p: 1, lambda: 1e-5 },
                Penalty { p: 2, lambda: 2e-5 }
            ]
        );
        let b = load(d.path(), "B", d.path()).expect("B");
        assert_eq!(
            b.model.embedding_regularizer,
            [Penalty {
                p: 2,
                lambda: 0.001
            }]
        );
        assert!(b.model.net_regularizer.is_empty());
        let said = err(d.path(), "C");
        assert!(said.contains("net_regularizer"), "{said}");
    }

    #[test]
    fn the_monitor_weighs_metrics_and_its_mode_picks_the_direction() {
        let d = config_dir(
            "d:\n  data_format: csv\n  train_data: t.csv\n  feature_cols: [{name: C1, active: True, dtype: str, type: categorical}]\n  label_col: {name: clk, dtype: float}\n",
            "Base: {dataset_id: d, model: DNN}\nA: {monitor: {AUC: 1, logloss: -1}, monitor_mode: max}\nL: {monitor: logloss, monitor_mode: min}\nD: {}\nM: {monitor_mode: sideways}\n",
        );
        let a = load(d.path(), "A", d.path()).expect("A").model;
        assert_eq!(a.monitored(&[0.8], &[0.3]), 0.8 - 0.3);
        assert!(a.improves(0.6, 0.5));
        let l = load(d.path(), "L", d.path()).expect("L").model;
        assert_eq!(l.monitor_mode, crate::model::MonitorMode::Min);
        // Two labels: each metric is the mean over them.
        assert_eq!(l.monitored(&[0.8, 0.6], &[0.3, 0.5]), 0.4);
        assert!(l.improves(0.35, 0.4) && !l.improves(0.45, 0.4));
        let dflt = load(d.path(), "D", d.path()).expect("D").model;
        assert_eq!(dflt.monitored(&[0.7], &[0.2]), 0.7);
        let said = err(d.path(), "M");
        assert!(said.contains("monitor_mode"), "{said}");
    }

    #[test]
    fn sequence_features_are_read_with_fuxictr_s_defaults() {
        let d = config_dir(
            "d:\n  data_format: csv\n  train_data: t.csv\n  feature_cols:\n    - {name: item, active: True, dtype: str, type: categorical}\n    - {name: [clicks, views], active: True, dtype: str, type: sequence, splitter: '|', max_len: 5, padding: pre, feature_encoder: 'layers.MaskedSumPooling()'}\n    - {name: tags, active: True, dtype: str, type: sequence}\n  label_col: {name: clk, dtype: float}\n",
            "E: {dataset_id: d, model: DeepFM}\n",
        );
        let f = load(d.path(), "E", d.path()).expect("E").features;
        assert_eq!(f.categorical, ["item"]);
        let names: Vec<&str> = f.sequence.iter().map(|q| q.name.as_str()).collect();
        assert_eq!(names, ["clicks", "views", "tags"]);
        assert_eq!(
            (
                f.sequence[1].splitter.as_str(),
                f.sequence[1].max_len,
                f.sequence[1].padding,
                f.sequence[1].pooling
            ),
            ("|", 5, Padding::Pre, Pooling::Sum)
        );
        assert_eq!(
            (
                f.sequence[2].splitter.as_str(),
                f.sequence[2].max_len,
                f.sequence[2].padding,
                f.sequence[2].pooling
            ),
            ("^", 0, Padding::Post, Pooling::Mean)
        );
    }

    #[test]
    fn what_ferry_cannot_follow_yet_is_refused_by_name() {
        // DIN over a sequence feature, and data FuxiCTR built beforehand (npz).
        let said = err(&fixture("example6"), "DIN_test");
        assert!(
            said.contains("data_format") && said.contains("npz"),
            "{said}"
        );
        let dir = varied(
            "example6",
            "dataset_config.yaml",
            "data_format: npz",
            "data_format: parquet",
        );
        let said = err(dir.path(), "DIN_test");
        assert!(said.contains("feature_cols"), "{said}");

        // FuxiCTR's DCNv2 config: its dataset was built by FuxiCTR (no feature_cols).
        let said = err(&fixture("dcnv2"), "DCNv2_test");
        assert!(said.contains("feature_cols"), "{said}");
        let dir = varied(
            "dcnv2",
            "dataset_config.yaml",
            "    test_data: ../../data/tiny_parquet/test.parquet",
            "    test_data: ../../data/tiny_parquet/test.parquet\n    feature_cols: [{name: [C1, C2], active: True, dtype: str, type: categorical}]\n    label_col: {name: clk, dtype: float}",
        );
        let e = load(dir.path(), "DCNv2_test", dir.path()).expect("DCNv2");
        assert_eq!(e.model.model, ModelKind::DCN);
        assert_eq!(e.model.hidden_units, [64, 32]);
        assert_eq!((e.model.embedding_dim, e.model.num_cross_layers), (40, 3));
        // A parallel DCNv2 keeps the stacked tower's setting without building it.
        assert_eq!(
            e.model.model_structure,
            crate::model::DcnStructure::Parallel
        );
        assert_eq!(e.model.stacked_hidden_units, [64, 32]);
        assert!(!e.model.use_low_rank_mixture);
        assert!(e.warnings.is_empty(), "{:?}", e.warnings);

        for (file, from, to, named) in [
            ("model_config.yaml", "model: DCNv2", "model: DCN", "DCNv2"),
            ("model_config.yaml", "model: DCNv2", "model: FmFM", "FmFM"),
            (
                "model_config.yaml",
                "dnn_activations: relu",
                "dnn_activations: Dice",
                "dnn_activations",
            ),
            (
                "model_config.yaml",
                "model_structure: parallel",
                "model_structure: sideways",
                "model_structure",
            ),
            (
                "model_config.yaml",
                "monitor: 'AUC'",
                "monitor: {gAUC: 1}",
                "monitor",
            ),
            (
                "model_config.yaml",
                "loss: 'binary_crossentropy'",
                "loss: mse",
                "loss",
            ),
        ] {
            let d = varied("dcnv2", file, from, to);
            // The dataset part needs feature columns to get as far as the model.
            let text =
                std::fs::read_to_string(dir.path().join("dataset_config.yaml")).expect("read");
            std::fs::write(d.path().join("dataset_config.yaml"), text).expect("write");
            let said = err(d.path(), "DCNv2_test");
            assert!(said.contains(named), "{to}: {said}");
        }

        for (col, named) in [
            (
                "{name: C1, active: True, dtype: str, type: sequence, splitter: '^', feature_encoder: null}",
                "feature_encoder",
            ),
            (
                "{name: C1, active: True, dtype: str, type: sequence, share_embedding: 7}",
                "share_embedding",
            ),
            (
                "{name: C1, active: True, dtype: str, type: sequence, padding: middle}",
                "padding",
            ),
            (
                "{name: C1, active: True, dtype: str, type: categorical, share_embedding: 7}",
                "share_embedding",
            ),
            (
                "{name: C1, active: True, dtype: str, type: categorical, min_categr_count: 0}",
                "min_categr_count",
            ),
            (
                "{name: C1, active: True, dtype: str, type: categorical, embedding_dim: 8}",
                "embedding_dim",
            ),
            (
                "{name: C1, active: True, dtype: float, type: categorical}",
                "dtype",
            ),
            (
                "{name: I1, active: True, dtype: float, type: numeric, normalizer: Normalizer}",
                "normalizer",
            ),
            (
                "{name: I1, active: True, dtype: float, type: numeric, fill_na: x}",
                "fill_na",
            ),
        ] {
            let d = config_dir(
                &format!(
                    "d:\n  data_format: csv\n  train_data: t.csv\n  feature_cols: [{col}]\n  label_col: {{name: clk, dtype: float}}\n"
                ),
                "E:\n  model: DeepFM\n  dataset_id: d\n  embedding_dim: 4\n",
            );
            let said = err(d.path(), "E");
            assert!(said.contains(named), "{col}: {said}");
        }
    }
}
