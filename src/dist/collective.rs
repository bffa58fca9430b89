//! The one interface every transport implements, and the transport of one process.

use anyhow::Result;
use candle_core::{DType, Tensor};

/// What the trainer needs from a transport. Sums are element-wise over ranks and every rank
/// receives the result.
pub trait Collective {
    fn rank(&self) -> usize;
    fn world(&self) -> usize;
    /// The transport's name and version, for logs and benchmark output.
    fn describe(&self) -> String;
    /// Sum `buf` over ranks, in place.
    fn sum_f32(&self, buf: &mut [f32]) -> Result<()>;
    /// Sum `buf` over ranks, in place (losses, flags, checksums).
    fn sum_f64(&self, buf: &mut [f64]) -> Result<()>;
    /// Sum a tensor over ranks. The default goes through host memory; a GPU transport keeps
    /// it on the device.
    fn sum_tensor(&self, t: &Tensor) -> Result<Tensor> {
        let mut host = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        self.sum_f32(&mut host)?;
        Ok(Tensor::from_vec(host, t.shape(), t.device())?.to_dtype(t.dtype())?)
    }
    /// End every rank of the job now (an error on one rank must not leave the others waiting
    /// in a collective forever).
    fn abort(&self, code: i32) -> !;
}

/// One process: every collective is the identity.
pub struct Single;

impl Collective for Single {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        1
    }
    fn describe(&self) -> String {
        "one process".into()
    }
    fn sum_f32(&self, _: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn sum_f64(&self, _: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn sum_tensor(&self, t: &Tensor) -> Result<Tensor> {
        Ok(t.clone())
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}
