//! Data-parallel steps (`--devices`): one replica of the model per device, each on its own
//! thread with its share of the batch, their gradients summed on the first device. The tasks
//! say what a replica computes (`train`: its embeddings scored against everyone's; `finetune`:
//! its rows' share of the batch's mean token loss); the threads, the copies and the sum are here.

use crate::args::DeviceArgs;
use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::prelude::*;
use zoo_nn::{NnError, Result};

/// Runs `step(r, replica, device)` for every device on its own thread, `replica` a copy of
/// `model` on that device, and returns each replica's loss value and the sum of their
/// gradients, on the first device. A replica's error or panic is named by its device.
pub fn replicas<M, F>(model: &M, devices: &[Device], step: F) -> Result<(Vec<f64>, GradientsParams)>
where
    M: Module + Sync,
    F: Fn(usize, &M, &Device) -> Result<(f64, GradientsParams)> + Sync,
{
    let results: Vec<Result<(f64, GradientsParams)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = devices
            .iter()
            .enumerate()
            .map(|(r, device)| {
                let step = &step;
                scope.spawn(move || {
                    // Its own leaves, even on the same device: replicas sharing parameter
                    // tensors would share one autodiff graph, and their backward passes race.
                    let replica = model.clone().fork(device);
                    step(r, &replica, device)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(NnError::Config("it panicked".into()))))
            .collect()
    });
    let mut sum = GradientsAccumulator::new();
    let mut values = Vec::with_capacity(devices.len());
    for (r, result) in results.into_iter().enumerate() {
        let (value, grads) =
            result.map_err(|e| NnError::Config(format!("replica {r} on device {:?}: {e}", devices[r])))?;
        values.push(value);
        sum.accumulate(model, grads.to_device(&devices[0], model));
    }
    Ok((values, sum.grads()))
}

/// The rows of replica `r` of `d` when `n` rows are split as evenly as they go.
pub fn shard(n: usize, d: usize, r: usize) -> std::ops::Range<usize> {
    r * n / d..(r + 1) * n / d
}

/// `--devices` (or, when it names fewer than two, `--device`) as autodiff devices, with a note
/// on how the replicas combine when there are several. Errors name a malformed or repeated
/// device, a mix of CPU and GPU, and a global batch the devices do not divide.
pub fn devices(
    list: &[String],
    single: &DeviceArgs,
    batch_size: usize,
) -> Result<(Vec<Device>, Option<String>)> {
    if list.len() <= 1 {
        let one = match list.first() {
            Some(d) => zoo_nn::parse_device(d)?,
            None => single.device()?,
        };
        return Ok((vec![one.autodiff()], None));
    }
    let n = list.len();
    let cuda = |d: &str| d.starts_with("cuda");
    if list.iter().any(|d| cuda(d)) && !list.iter().all(|d| cuda(d)) {
        return Err(NnError::Config(format!("--devices {}: all CUDA or all CPU, not a mix", list.join(","))));
    }
    for (i, d) in list.iter().enumerate() {
        if cuda(d) && list[..i].contains(d) {
            return Err(NnError::Config(format!("--devices: {d} is named twice")));
        }
    }
    if !batch_size.is_multiple_of(n) {
        return Err(NnError::Config(format!(
            "--batch-size {batch_size} is not divisible by the {n} devices of --devices"
        )));
    }
    let devices =
        list.iter().map(|d| zoo_nn::parse_device(d).map(|d| d.autodiff())).collect::<Result<Vec<_>>>()?;
    let how = if cuda(&list[0]) {
        "gradients moved to the first GPU and summed there (GradientsParams::to_device), parameters copied back after each step"
    } else {
        "CPU replicas on threads, gradients summed on the host (Burn's NCCL collective runs on CUDA only)"
    };
    Ok((devices, Some(format!("training on {n} devices ({}): {how}", list.join(",")))))
}
