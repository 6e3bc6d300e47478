//! Profiling harness for the linear fine-tune (the `training` bench's job without Node):
//! 10,000 × 32 rows made by the bench's own generator, sgd, 10 epochs, batch 32.
//!   cargo run --release --example train -- [reps]
//!   cargo run --release --example train -- [reps] whole   (fine_tune only)
//!   cargo run --release --example train -- [reps] kernel  (the parts only)
//! Prints the median and minimum wall time of `fine_tune`, and of its parts measured
//! alone (`sgd_epoch` ten times over 6,000 shuffled rows, the data check). On a shared
//! machine read the minimum: load only ever adds. `MLOPS_KERNEL`, `MLOPS_TRAIN_THREADS`
//! apply as in the addon.

use mlops_native::core::finetune::{check_data, fine_tune, FineTuneOptions, Optimizer};
use mlops_native::core::kernels;
use mlops_native::core::linear::LinearModel;
use mlops_native::core::models::Model;
use std::time::Instant;

const ROWS: usize = 10_000;
const D: usize = 32;

/// scripts/bench/finetune.js `data()`, value for value.
fn data() -> (Vec<f64>, Vec<f64>) {
    let mut s: u32 = 12345;
    let mut u = || {
        s = s.wrapping_mul(1664525).wrapping_add(1013904223);
        s as f64 / 4294967296.0
    };
    let mut x = vec![0.0; ROWS * D];
    let mut y = vec![0.0; ROWS];
    for i in 0..ROWS {
        let mut t = 0.5;
        for j in 0..D {
            x[i * D + j] = u();
            t += ((j % 3) as f64 - 1.0) * x[i * D + j];
        }
        y[i] = t + 0.1 * (u() - 0.5);
    }
    (x, y)
}

fn stats(name: &str, mut t: Vec<f64>) {
    t.sort_by(f64::total_cmp);
    println!(
        "{name:<28} median {:>7.3} ms   min {:>7.3} ms",
        t[t.len() / 2],
        t[0]
    );
}

fn time(reps: usize, mut f: impl FnMut()) -> Vec<f64> {
    (0..reps)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed().as_secs_f64() * 1e3
        })
        .collect()
}

fn main() {
    let reps: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);
    let only_kernel = std::env::args().nth(2).as_deref() == Some("kernel");
    let (x, y) = data();
    let base = Model::linear(LinearModel::zeros(D));
    let opts = FineTuneOptions {
        optimizer: Optimizer::Sgd,
        learning_rate: 0.001,
        batch_size: 32,
        epochs: 10,
        validation_split: 0.2,
        test_split: 0.2,
        min_samples: 1,
        seed: 1,
        patience: None,
        ..FineTuneOptions::default()
    };
    println!("kernel: {:?}", kernels::kernel());
    let mut weights = vec![0.0; 3];
    if !only_kernel {
        let whole = time(reps, || {
            let out = fine_tune(&base, &x, &y, D, &opts, &mut |_| {}).unwrap();
            weights = match &out.model.kind {
                mlops_native::core::models::ModelKind::Linear(m) => m.weights.clone(),
                _ => unreachable!(),
            };
        });
        stats("fine_tune", whole);
    }
    println!("w[0..3] = {:?}", &weights[..3]);
    if std::env::args().nth(2).as_deref() == Some("whole") {
        return;
    }
    // The training rows of the run, in the split's shuffled order, as `fine_tune` walks them.
    let mut train: Vec<usize> = (0..ROWS).collect();
    let mut r = 0x9E3779B97F4A7C15u64;
    for i in (1..train.len()).rev() {
        r = r
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        train.swap(i, (r >> 33) as usize % (i + 1));
    }
    train.truncate(6000);
    let kernel = time(reps, || {
        let (mut w, mut b) = (vec![0.0; D], 0.0);
        for _ in 0..10 {
            kernels::sgd_epoch(
                kernels::kernel(),
                &mut w,
                &mut b,
                &x,
                &y,
                &train,
                32,
                0.001,
                0.0,
            );
        }
        std::hint::black_box((&w, b));
    });
    stats("kernel, 10 epochs × 6000", kernel);
    let sp = time(reps, || {
        std::hint::black_box(mlops_native::core::finetune::split(ROWS, 0, &opts));
    });
    stats("split", sp);
    let check = time(reps, || {
        std::hint::black_box(check_data(&x, &y, D, &base, &opts).unwrap());
    });
    stats("check_data (fingerprint)", check);
}
