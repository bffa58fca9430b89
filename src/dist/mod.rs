//! Data-parallel training: one small collective interface and the pieces above it that every
//! transport shares. Each rank takes a disjoint slice of every global batch, gradients are
//! summed over ranks in buckets, and every rank then takes the same optimizer step. The
//! transports: [`Single`] (one process, nothing to do) and MPI (`--features mpi`, launched by
//! `mpirun`).

mod collective;
mod launch;
#[cfg(feature = "mpi")]
pub mod mpi;
#[cfg(feature = "nccl")]
pub mod nccl;

pub use collective::{Collective, Single};
pub use launch::{launched, local_rank, threads_per_rank};

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use launch::env_number;
use std::rc::Rc;
use std::time::Instant;

/// The collective this process trains with on `device`: NCCL for a GPU rank (`--features
/// nccl`), MPI when an MPI launcher started it, else one process. A launcher the binary
/// cannot serve is refused. (Call it once: MPI cannot be initialised twice in a process.)
pub fn init(device: &Device) -> Result<Rc<dyn Collective>> {
    #[cfg(feature = "nccl")]
    if device.is_cuda() && nccl::placement().is_some_and(|(_, world, _)| world > 1) {
        return Ok(Rc::new(nccl::Nccl::init(device)?));
    }
    // A torchrun-style job of more than one process (a lone RANK/WORLD_SIZE=1 is one process).
    let torchrun =
        std::env::var_os("RANK").is_some() && env_number(&["WORLD_SIZE"]).is_some_and(|w| w > 1);
    match launched() {
        None if torchrun && !device.is_cuda() => bail!(
            "started by a torchrun-style launcher (RANK, WORLD_SIZE): that is for GPU ranks over NCCL; launch CPU processes with mpirun"
        ),
        None if torchrun => bail!(
            "started by a torchrun-style launcher (RANK, WORLD_SIZE) but this binary was built without NCCL; rebuild with --features nccl"
        ),
        None => Ok(Rc::new(Single)),
        #[cfg(feature = "mpi")]
        Some(_) => Ok(Rc::new(mpi::Mpi::init()?)),
        #[cfg(not(feature = "mpi"))]
        Some((world, _)) => bail!(
            "started by an MPI launcher ({world} ranks) but this binary was built without MPI; rebuild with `cargo build --release --features mpi`"
        ),
    }
}

/// Rows `rank`'s slice of a global batch of `rows`: contiguous, equal for every rank.
pub fn shard(rows: usize, comm: &dyn Collective) -> Result<std::ops::Range<usize>> {
    let w = comm.world();
    if !rows.is_multiple_of(w) {
        bail!("train.batch_size ({rows}) must be a multiple of the number of ranks ({w}) so every rank gets an equal share");
    }
    let per = rows / w;
    Ok(comm.rank() * per..(comm.rank() + 1) * per)
}

/// Gradients summed over ranks in buckets of about `bucket` elements (each bucket one
/// collective call over the flattened, concatenated gradients). Returns the seconds spent.
pub fn sum_gradients(comm: &dyn Collective, grads: &mut [Tensor], bucket: usize) -> Result<f64> {
    let t0 = Instant::now();
    if comm.world() == 1 {
        return Ok(0.0);
    }
    let mut start = 0;
    while start < grads.len() {
        let mut end = start;
        let mut n = 0;
        while end < grads.len() && (end == start || n + grads[end].elem_count() <= bucket) {
            n += grads[end].elem_count();
            end += 1;
        }
        let flat: Vec<Tensor> = grads[start..end]
            .iter()
            .map(|g| g.flatten_all())
            .collect::<candle_core::Result<_>>()?;
        let summed = comm.sum_tensor(&Tensor::cat(&flat, 0)?)?;
        let mut off = 0;
        for g in &mut grads[start..end] {
            let k = g.elem_count();
            *g = summed.narrow(0, off, k)?.reshape(g.shape())?;
            off += k;
        }
        start = end;
    }
    Ok(t0.elapsed().as_secs_f64())
}

/// Whether any rank asked to stop (each rank's own signal flag, agreed so every rank stops
/// after the same step).
pub fn any(comm: &dyn Collective, flag: bool) -> Result<bool> {
    if comm.world() == 1 {
        return Ok(flag);
    }
    let mut v = [flag as u8 as f64];
    comm.sum_f64(&mut v)?;
    Ok(v[0] > 0.0)
}

/// Refuse to train when the ranks' weights differ (a rank started from another checkpoint or
/// init): the sum of squares of every parameter, compared over ranks.
pub fn check_same_weights(comm: &dyn Collective, tensors: &[Tensor]) -> Result<()> {
    if comm.world() == 1 {
        return Ok(());
    }
    let mut mine = 0.0f64;
    for t in tensors {
        mine += t
            .to_dtype(DType::F64)?
            .sqr()?
            .sum_all()?
            .to_scalar::<f64>()?;
    }
    let mut sum = [mine, mine * mine];
    comm.sum_f64(&mut sum)?;
    let w = comm.world() as f64;
    // Equal values on every rank ⇔ the variance of the checksum over ranks is zero.
    let var = sum[1] / w - (sum[0] / w).powi(2);
    if var.abs() > 1e-12 * mine.abs().max(1.0).powi(2) {
        bail!(
            "rank {} starts from other weights than the rest of the job (checksum {mine}); every rank must load the same checkpoint",
            comm.rank()
        );
    }
    Ok(())
}

/// Run `f` on every rank; an error on any rank is printed with its rank and ends the whole
/// job at once (the other ranks would otherwise wait in their next collective forever).
pub fn or_abort<T>(comm: &dyn Collective, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match f() {
        Err(e) if comm.world() > 1 => {
            let msg = format!("{e:#}");
            let first = msg.lines().next().unwrap_or("");
            let line = format!(
                "error: {first} (rank {} of {}; ending the job)\n",
                comm.rank(),
                comm.world()
            );
            // One write, so the line reaches the pipe it shares with mpirun and the other
            // ranks whole (`eprintln!` writes its pieces one by one, and they interleave).
            let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
            comm.abort(1)
        }
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::launch::count_cpu_list;
    use super::*;
    use candle_core::Device;

    /// A fake transport of `world` ranks where every rank holds the same values: sums multiply
    /// by the world size, which is enough to see the bucketing put every element back.
    struct Echo(usize);
    impl Collective for Echo {
        fn rank(&self) -> usize {
            1
        }
        fn world(&self) -> usize {
            self.0
        }
        fn describe(&self) -> String {
            "echo".into()
        }
        fn sum_f32(&self, buf: &mut [f32]) -> Result<()> {
            buf.iter_mut().for_each(|x| *x *= self.0 as f32);
            Ok(())
        }
        fn sum_f64(&self, buf: &mut [f64]) -> Result<()> {
            buf.iter_mut().for_each(|x| *x *= self.0 as f64);
            Ok(())
        }
        fn abort(&self, _: i32) -> ! {
            panic!("abort")
        }
    }

    #[test]
    fn buckets_put_every_gradient_back_in_shape() {
        let dev = Device::Cpu;
        let shapes: [&[usize]; 4] = [&[3, 4], &[5], &[2, 2, 2], &[7, 1]];
        for bucket in [1, 5, 12, 20, 1000] {
            let mut grads: Vec<Tensor> = shapes
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let n: usize = s.iter().product();
                    let v: Vec<f32> = (0..n).map(|k| (i * 100 + k) as f32).collect();
                    Tensor::from_vec(v, *s, &dev).unwrap()
                })
                .collect();
            let before: Vec<Vec<f32>> = grads
                .iter()
                .map(|g| g.flatten_all().unwrap().to_vec1().unwrap())
                .collect();
            sum_gradients(&Echo(3), &mut grads, bucket).unwrap();
            for ((g, b), s) in grads.iter().zip(&before).zip(shapes) {
                assert_eq!(g.dims(), s, "bucket {bucket}");
                let after: Vec<f32> = g.flatten_all().unwrap().to_vec1().unwrap();
                let want: Vec<f32> = b.iter().map(|x| x * 3.0).collect();
                assert_eq!(after, want, "bucket {bucket}");
            }
        }
    }

    #[test]
    fn cpu_lists_are_counted() {
        assert_eq!(count_cpu_list("0-3,8,10-11"), Some(7));
        assert_eq!(count_cpu_list("5"), Some(1));
        assert_eq!(count_cpu_list(""), None);
        assert_eq!(count_cpu_list("x-2"), None);
    }

    #[test]
    fn shards_are_disjoint_equal_and_cover_the_batch() {
        struct At(usize, usize);
        impl Collective for At {
            fn rank(&self) -> usize {
                self.0
            }
            fn world(&self) -> usize {
                self.1
            }
            fn describe(&self) -> String {
                String::new()
            }
            fn sum_f32(&self, _: &mut [f32]) -> Result<()> {
                Ok(())
            }
            fn sum_f64(&self, _: &mut [f64]) -> Result<()> {
                Ok(())
            }
            fn abort(&self, _: i32) -> ! {
                panic!()
            }
        }
        let mut seen = vec![0; 12];
        for r in 0..4 {
            for i in shard(12, &At(r, 4)).unwrap() {
                seen[i] += 1;
            }
        }
        assert_eq!(seen, vec![1; 12]);
        let e = shard(10, &At(0, 4)).unwrap_err().to_string();
        assert!(e.contains("multiple of the number of ranks (4)"), "{e}");
        assert_eq!(shard(8, &Single).unwrap(), 0..8);
    }
}
