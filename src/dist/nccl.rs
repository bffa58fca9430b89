//! The NCCL transport (`--features nccl`, through candle's cudarc): one process per GPU,
//! gradients summed on the devices. The ranks find each other the way `torchrun` launches
//! them (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) or under `mpirun` (OpenMPI's
//! rank variables and MASTER_ADDR); rank 0 hands NCCL's unique id to the others over TCP on
//! `CARD_NCCL_PORT` (default MASTER_PORT + 1, so it never meets torchrun's own store).

use super::collective::Collective;
use anyhow::{bail, Context, Result};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::nccl::safe::{Comm, Id, ReduceOp};
use candle_core::cuda_backend::{CudaStorage, CudaStorageSlice};
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Rank, world size and local rank from the launcher's variables.
pub fn placement() -> Option<(usize, usize, usize)> {
    let rank = super::launch::env_number(&["RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK"])?;
    let world = super::launch::env_number(&["WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"])?;
    Some((rank, world, super::launch::local_rank().unwrap_or(0)))
}

pub struct Nccl {
    comm: Rc<Comm>,
    rank: usize,
    world: usize,
    device: Device,
}

impl Nccl {
    /// Join the job on `device` (this rank's GPU).
    pub fn init(device: &Device) -> Result<Self> {
        let Device::Cuda(cuda) = device else {
            bail!("NCCL needs a CUDA device (--device cuda)");
        };
        let (rank, world, _) = placement()
            .context("NCCL: no RANK/WORLD_SIZE (or mpirun's variables) in the environment")?;
        let id = exchange_id(rank, world)?;
        let comm = Comm::from_rank(cuda.cuda_stream(), rank, world, id)
            .map_err(|e| anyhow::anyhow!("NCCL could not start: {e:?}"))?;
        Ok(Self {
            comm: Rc::new(comm),
            rank,
            world,
            device: device.clone(),
        })
    }
}

/// Rank 0 makes the id and serves it to every other rank; the others fetch it (retrying
/// while rank 0 starts, for at most a minute).
fn exchange_id(rank: usize, world: usize) -> Result<Id> {
    let addr = std::env::var("MASTER_ADDR").context("NCCL: MASTER_ADDR is not set")?;
    let port: u16 = match std::env::var("CARD_NCCL_PORT") {
        Ok(p) => p.parse().context("CARD_NCCL_PORT")?,
        Err(_) => {
            let base: u16 = std::env::var("MASTER_PORT")
                .context("NCCL: MASTER_PORT is not set")?
                .parse()
                .context("MASTER_PORT")?;
            base.checked_add(1).context("MASTER_PORT + 1 overflows")?
        }
    };
    let bytes = |id: &Id| -> [u8; 128] { id.internal().map(|c| c as u8) };
    if rank == 0 {
        let id = Id::new().map_err(|e| anyhow::anyhow!("NCCL id: {e:?}"))?;
        let listener = TcpListener::bind(("0.0.0.0", port))
            .with_context(|| format!("NCCL: cannot listen on port {port}"))?;
        for _ in 1..world {
            let (mut s, _) = listener.accept()?;
            s.write_all(&bytes(&id))?;
        }
        return Ok(id);
    }
    let start = Instant::now();
    let mut stream = loop {
        match TcpStream::connect((addr.as_str(), port)) {
            Ok(s) => break s,
            Err(e) if start.elapsed() < Duration::from_secs(60) => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => bail!("NCCL: rank {rank} cannot reach rank 0 at {addr}:{port}: {e}"),
        }
    };
    let mut buf = [0u8; 128];
    stream.read_exact(&mut buf)?;
    Ok(Id::uninit(buf.map(|b| b as core::ffi::c_char)))
}

/// The all-reduce as a candle op, so the sum stays on the GPU.
struct AllReduce(Rc<Comm>);

impl CustomOp1 for AllReduce {
    fn name(&self) -> &'static str {
        "nccl-all-reduce"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("the NCCL sum runs on CUDA tensors only")
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let n = l.shape().elem_count();
        let (start, end) = l.contiguous_offsets().ok_or_else(|| {
            candle_core::Error::Msg("the NCCL sum needs a contiguous tensor".into())
        })?;
        let dev = s.device().clone();
        let fail = |e| candle_core::Error::Msg(format!("NCCL all-reduce: {e:?}"));
        let slice = match &s.slice {
            CudaStorageSlice::F32(src) => {
                let mut dst = dev.alloc_zeros::<f32>(n)?;
                self.0
                    .all_reduce(&src.slice(start..end), &mut dst, &ReduceOp::Sum)
                    .map_err(fail)?;
                CudaStorageSlice::F32(dst)
            }
            CudaStorageSlice::F64(src) => {
                let mut dst = dev.alloc_zeros::<f64>(n)?;
                self.0
                    .all_reduce(&src.slice(start..end), &mut dst, &ReduceOp::Sum)
                    .map_err(fail)?;
                CudaStorageSlice::F64(dst)
            }
            _ => candle_core::bail!("the NCCL sum takes f32 or f64 tensors"),
        };
        Ok((CudaStorage { slice, device: dev }, l.shape().clone()))
    }
}

impl Collective for Nccl {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.world
    }
    fn describe(&self) -> String {
        "NCCL".into()
    }
    fn sum_f32(&self, buf: &mut [f32]) -> Result<()> {
        let t = Tensor::from_slice(buf, buf.len(), &self.device)?;
        buf.copy_from_slice(&self.sum_tensor(&t)?.to_vec1::<f32>()?);
        Ok(())
    }
    fn sum_f64(&self, buf: &mut [f64]) -> Result<()> {
        let t = Tensor::from_slice(buf, buf.len(), &self.device)?;
        let summed = t.apply_op1_no_bwd(&AllReduce(self.comm.clone()))?;
        buf.copy_from_slice(&summed.to_vec1::<f64>()?);
        Ok(())
    }
    fn sum_tensor(&self, t: &Tensor) -> Result<Tensor> {
        let f = t.to_dtype(DType::F32)?.contiguous()?;
        let summed = f.apply_op1_no_bwd(&AllReduce(self.comm.clone()))?;
        Ok(summed.to_dtype(t.dtype())?)
    }
    fn abort(&self, code: i32) -> ! {
        // NCCL has no job-wide abort; the launcher (torchrun, mpirun) ends the other ranks
        // when one exits non-zero.
        std::process::exit(code)
    }
}
