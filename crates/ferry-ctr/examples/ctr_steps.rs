//! Where a training step's time goes: forward + loss, backward, optimizer, timed separately on
//! in-memory random batches at the FuxiCTR reference shapes (no Parquet, no evaluation).
//!
//! Usage: `ctr_steps [deepfm|mmoe] [STEPS]` (release build).

use std::time::Instant;

use burn::optim::GradientsParams;
use ferry_ctr::device::Device;
use ferry_ctr::features::EncodedBatch;
use ferry_ctr::model::{CtrModel, InputShape, Inputs, bce_with_logits, label_tensor};
use ferry_ctr::rng::SplitMix64;
use ferry_ctr::train::new_optimizer;
use ferry_ctr::{ModelConfig, ModelKind};

/// The allocator of the training and inference daemons (see the workspace manifest).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let kind =
        ModelKind::parse(&args.next().unwrap_or_else(|| "deepfm".into())).ok_or("unknown model")?;
    let steps: usize = args.next().map_or(Ok(20), |s| s.parse())?;
    // 26 categorical fields, 226,334 features in all (data-spec's vocabulary sizes, rounded).
    let vocab_sizes: Vec<usize> = vec![
        1_460, 583, 55_958, 20_000, 305, 24, 12_517, 633, 3, 9_000, 5_683, 40_000, 3_194, 27,
        14_992, 30_000, 10, 5_652, 2_173, 4, 12_000, 18, 15, 8_000, 105, 6_000,
    ];
    let tasks = if kind.is_multi_task() { 2 } else { 1 };
    let shape = InputShape {
        vocab_sizes: vocab_sizes.clone(),
        num_numeric: 13,
        num_tasks: tasks,
        sequences: Vec::new(),
        names: Vec::new(),
        categorical_shares: Vec::new(),
        embedding_dims: Vec::new(),
    };
    let mut cfg = ModelConfig::new(kind, "steps");
    cfg.batch_size = 4096;
    let device = Device::flex().autodiff();
    let mut model = CtrModel::new(&cfg, &shape, &device)?;
    // FERRY_ADAM=burn: burn's own Adam, to compare with the fused one.
    let mut optim = if std::env::var("FERRY_ADAM").is_ok_and(|v| v == "burn") {
        burn::optim::AdamConfig::new().with_epsilon(1e-8).init()
    } else {
        new_optimizer()
    };
    let mut rng = SplitMix64::new(7);
    if std::env::var_os("FERRY_GEMM").is_some() {
        use burn::tensor::{Tensor, TensorData};
        let cpu = Device::flex();
        for (m, k, n) in [
            (4096, 624, 2048),
            (4096, 624, 400),
            (4096, 400, 400),
            (624, 4096, 400),
        ] {
            let a = Tensor::<2>::from_data(TensorData::new(vec![0.5f32; m * k], [m, k]), &cpu);
            let b = Tensor::<2>::from_data(TensorData::new(vec![0.25f32; k * n], [k, n]), &cpu);
            let t = Instant::now();
            for _ in 0..10 {
                let _ = a.clone().matmul(b.clone()).into_data();
            }
            let s = t.elapsed().as_secs_f64() / 10.0;
            println!(
                "gemm {m}x{k}x{n}: {:.1} ms, {:.0} GFLOP/s",
                s * 1e3,
                2.0 * (m * k * n) as f64 / s / 1e9
            );
        }
    }
    let rows = cfg.batch_size;
    let batches: Vec<EncodedBatch> = (0..4)
        .map(|_| EncodedBatch {
            rows,
            sequence: Vec::new(),
            groups: Vec::new(),
            categorical: (0..rows * vocab_sizes.len())
                .map(|i| {
                    // Zipf-ish: most draws hit the first rows of each field.
                    let v = vocab_sizes[i % vocab_sizes.len()] as f64;
                    let u = rng.unit();
                    ((v.powf(u) - 1.0) as i32).clamp(0, v as i32 - 1)
                })
                .collect(),
            numeric: (0..rows * 13).map(|_| rng.unit() as f32).collect(),
            labels: (0..rows * tasks)
                .map(|_| f32::from(rng.unit() < 0.2))
                .collect(),
        })
        .collect();
    let (mut fwd, mut bwd, mut opt) = (0.0, 0.0, 0.0);
    let warmup = 3;
    for step in 0..steps + warmup {
        let b = &batches[step % batches.len()];
        let t = Instant::now();
        let x = Inputs::new(b, &shape, &device)?;
        let y = label_tensor(b, tasks, &device);
        let loss = bce_with_logits(model.forward(&x), y);
        let _ = loss.clone().into_scalar::<f32>();
        let t1 = Instant::now();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let t2 = Instant::now();
        model = optim.step(1e-3, model, grads);
        let t3 = Instant::now();
        if step >= warmup {
            fwd += (t1 - t).as_secs_f64();
            bwd += (t2 - t1).as_secs_f64();
            opt += (t3 - t2).as_secs_f64();
        }
    }
    let n = steps as f64;
    let total = fwd + bwd + opt;
    println!(
        "{kind:?}: per step forward {:.1} ms, backward {:.1} ms, optimizer {:.1} ms; {:.0} samples/s",
        fwd / n * 1e3,
        bwd / n * 1e3,
        opt / n * 1e3,
        n * rows as f64 / total
    );
    Ok(())
}
