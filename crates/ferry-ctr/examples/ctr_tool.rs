//! The training and inference a FuxiCTR user would run by hand, without Ferry's orchestration:
//! `cargo xtask bench pipeline` times the pipeline's steps done this way beside the same
//! pipeline run by Ferry.
//!
//! ```text
//! ctr_tool train SAMPLE_DIR DATA_DIR MODEL_DIR DATASET_ID MODEL_JSON
//! ctr_tool infer INPUT_DIR DATA_DIR MODEL_DIR MODEL_ID OUTPUT_DIR
//! ```

use std::path::PathBuf;

use ferry_ctr::dataset::{PrepareOptions, prepare_dataset};
use ferry_ctr::device::Device;
use ferry_ctr::infer::{InferOptions, infer};
use ferry_ctr::train::{TrainOptions, train};
use ferry_ctr::{FeatureSpec, ModelConfig};

/// The allocator of the training and inference daemons (see the workspace manifest).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["train", sample, data, model_dir, dataset_id, model_json] => {
            let config: ModelConfig = serde_json::from_str(model_json)?;
            let labels: Vec<&str> = if config.model.is_multi_task() {
                vec!["click", "conversion"]
            } else {
                vec!["click"]
            };
            let spec = FeatureSpec::campaign(&labels);
            let prep = PrepareOptions {
                seed: config.seed,
                ..PrepareOptions::default()
            };
            let data = PathBuf::from(data);
            let (processor, dataset) =
                prepare_dataset(&PathBuf::from(sample), &data, dataset_id, &spec, &prep)?;
            let opts = TrainOptions::new(&data, &PathBuf::from(model_dir), Device::flex());
            let outcome = train(&config, &processor, &dataset, &opts, &mut ())?;
            println!(
                "trained {}: best validation AUC {:.4}",
                outcome.model_path.display(),
                outcome.state.best_val_auc().unwrap_or(0.0)
            );
        }
        ["infer", input, data, model_dir, model_id, out] => {
            let opts = InferOptions {
                input_dir: PathBuf::from(input),
                output_dir: PathBuf::from(out),
                data_dir: PathBuf::from(data),
                model_dir: PathBuf::from(model_dir),
                model_id: (*model_id).to_owned(),
                batch_size: 10_000,
                devices: vec![Device::flex()],
                stop_after_parts: None,
                pipelined: true,
            };
            let outcome = infer(&opts, &())?;
            println!("scored {} rows", outcome.rows_total);
        }
        _ => {
            return Err("usage: ctr_tool train SAMPLE_DIR DATA_DIR MODEL_DIR DATASET_ID MODEL_JSON | infer INPUT_DIR DATA_DIR MODEL_DIR MODEL_ID OUTPUT_DIR".into());
        }
    }
    Ok(())
}
