//! Adam as FuxiCTR trains with it (PyTorch's update, epsilon 1e-8), in one pass over memory
//! for parameters on the CPU.
//!
//! burn's `Adam` spends a dozen tensor operations on every parameter, each a full pass over it
//! with a fresh allocation; on the CPU, where a CTR model's embedding table (millions of
//! values, every one updated at every step as in PyTorch's dense Adam) is the largest tensor by
//! far, that took a tenth of each DeepFM training step. Here the moments and the parameter are
//! updated together, element by element, split over the cores. Other devices (GPUs) keep
//! burn's `Adam`, whose operations run there as kernels.
//!
//! The state is burn's `AdamState`, so an optimizer saved by either loads into the other.

use burn::optim::{
    Adam, AdamConfig, AdamState, AdaptiveMomentumState, LearningRate, ModuleOptimizer, Optimizer,
};
use burn::tensor::{DType, Device, Tensor, TensorData};

/// Parameters smaller than this are updated on the calling thread.
const PARALLEL_MIN: usize = 1 << 16;

#[derive(Clone)]
pub struct FusedAdam {
    beta_1: f32,
    beta_2: f32,
    epsilon: f32,
    /// For tensors that are not f32 values on the CPU.
    fallback: Adam,
}

impl FusedAdam {
    pub fn new() -> FusedAdam {
        let (beta_1, beta_2, epsilon) = (0.9, 0.999, 1e-8);
        FusedAdam {
            beta_1,
            beta_2,
            epsilon,
            fallback: AdamConfig::new()
                .with_beta_1(beta_1)
                .with_beta_2(beta_2)
                .with_epsilon(epsilon)
                .build(),
        }
    }

    /// A whole-model optimizer.
    pub fn init() -> ModuleOptimizer {
        ModuleOptimizer::from(FusedAdam::new())
    }
}

impl Default for FusedAdam {
    fn default() -> Self {
        FusedAdam::new()
    }
}

/// One Adam step over a slice: the moments, then the parameter (PyTorch's formula:
/// `p -= lr · m̂ / (√v̂ + ε)`, written as burn's `Adam` writes it).
#[allow(clippy::too_many_arguments)]
fn update(
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    beta_1: f32,
    beta_2: f32,
    step_size: f32,
    eps: f32,
) {
    for (((p, g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        *m = beta_1 * *m + (1.0 - beta_1) * *g;
        *v = beta_2 * *v + (1.0 - beta_2) * *g * *g;
        *p -= step_size * *m / (v.sqrt() + eps);
    }
}

fn values<const D: usize>(t: Tensor<D>) -> Option<Vec<f32>> {
    t.into_data().try_into_vec::<f32>().ok()
}

impl Optimizer for FusedAdam {
    type State<const D: usize> = AdamState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let device = tensor.device();
        if device != Device::flex() || tensor.dtype() != DType::F32 || grad.dtype() != DType::F32 {
            return self.fallback.step(lr, tensor, grad, state);
        }
        let shape = tensor.shape();
        let n = shape.num_elements();
        let (time, m, v) = match state {
            Some(s) => (
                s.momentum.time + 1,
                values(s.momentum.moment_1),
                values(s.momentum.moment_2),
            ),
            None => (1, Some(vec![0.0; n]), Some(vec![0.0; n])),
        };
        let (Some(mut p), Some(g), Some(mut m), Some(mut v)) = (values(tensor), values(grad), m, v)
        else {
            // Unreachable for f32 tensors on the CPU; a bug rather than bad input, and
            // panicking (not silently skipping the update) keeps training honest.
            panic!("f32 CPU tensors did not convert to f32 values");
        };
        // Bias corrections folded into the step size and epsilon, as burn's Adam does.
        let t = time as i32;
        let correction_2 = (1.0 - self.beta_2.powi(t)).sqrt();
        let step_size = lr as f32 * correction_2 / (1.0 - self.beta_1.powi(t));
        let eps = self.epsilon * correction_2;
        let (b1, b2) = (self.beta_1, self.beta_2);
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
        if n < PARALLEL_MIN || threads == 1 {
            update(&mut p, &g, &mut m, &mut v, b1, b2, step_size, eps);
        } else {
            let chunk = n.div_ceil(threads);
            std::thread::scope(|s| {
                for (((p, g), m), v) in p
                    .chunks_mut(chunk)
                    .zip(g.chunks(chunk))
                    .zip(m.chunks_mut(chunk))
                    .zip(v.chunks_mut(chunk))
                {
                    s.spawn(move || update(p, g, m, v, b1, b2, step_size, eps));
                }
            });
        }
        let tensor = |values: Vec<f32>| {
            Tensor::<D>::from_data(TensorData::new(values, shape.clone()), &device)
        };
        let state = AdamState::new(AdaptiveMomentumState::new(time, tensor(m), tensor(v)));
        (tensor(p), Some(state))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        <Adam as Optimizer>::to_device(state, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fused update equals burn's `Adam` (the reference) over several steps.
    #[test]
    fn fused_adam_follows_burns_adam() {
        let device = Device::flex();
        let n = PARALLEL_MIN + 3; // exercises the threaded path and an uneven last chunk
        let start: Vec<f32> = (0..n).map(|i| ((i % 13) as f32 - 6.0) / 10.0).collect();
        let fused = FusedAdam::new();
        let reference = fused.fallback.clone();
        let mut a = Tensor::<1>::from_data(TensorData::new(start.clone(), [n]), &device);
        let mut b = a.clone();
        let (mut sa, mut sb) = (None, None);
        for step in 0..5 {
            let grad: Vec<f32> = (0..n)
                .map(|i| ((i * 7 + step * 3) % 11) as f32 / 11.0 - 0.5)
                .collect();
            let g = Tensor::<1>::from_data(TensorData::new(grad, [n]), &device);
            (a, sa) = fused.step(1e-2, a, g.clone(), sa);
            (b, sb) = reference.step(1e-2, b, g, sb);
        }
        let (a, b) = (
            a.into_data().try_into_vec::<f32>().expect("f32"),
            b.into_data().try_into_vec::<f32>().expect("f32"),
        );
        let worst = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-6, "largest difference {worst}");
        assert!(
            a.iter().zip(&start).any(|(x, y)| x != y),
            "parameters moved"
        );
        assert_eq!(sa.map(|s| s.momentum.time), Some(5));
    }

    /// Checkpoints written while training used burn's `Adam` resume with the fused one: the
    /// next step from the loaded state equals burn's own next step.
    #[test]
    fn a_checkpoint_of_burns_adam_resumes_in_the_fused_one() {
        use burn::nn::{Linear, LinearConfig};
        use burn::optim::GradientsParams;

        let device = Device::flex().autodiff();
        let x = Tensor::<2>::from_data(
            TensorData::new((0..12).map(|i| i as f32 / 12.0).collect(), [3, 4]),
            &device,
        );
        let step = |model: Linear, optim: &mut ModuleOptimizer| {
            let loss = model.forward(x.clone()).powf_scalar(2.0).sum();
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            optim.step(1e-2, model, grads)
        };
        let mut burns = AdamConfig::new().with_epsilon(1e-8).init();
        let model = LinearConfig::new(4, 2).init(&device);
        let model = step(model, &mut burns);
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("optim.bpk");
        burns.save(&path).expect("save");
        let mut fused = FusedAdam::init().load(&path).expect("load");
        let a = step(model.clone(), &mut burns).weight.val();
        let b = step(model, &mut fused).weight.val();
        let diff = (a - b).abs().max().into_scalar::<f32>();
        assert!(diff < 1e-7, "difference {diff}");
    }
}
