//! The MPI transport (the `mpi` crate over the system's MPI library, OpenMPI on Debian):
//! CPU processes on one or many machines, started by `mpirun -n N card train …`.

use super::collective::Collective;
use anyhow::{bail, Result};
use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::CommunicatorCollectives;
use mpi::Threading;

pub struct Mpi {
    world: SimpleCommunicator,
    rank: usize,
    size: usize,
    // Last: MPI_Finalize runs when the transport is dropped, after the communicator.
    _universe: Universe,
}

impl Mpi {
    /// Initialise MPI. Only the main thread calls MPI (candle's pool threads never do).
    pub fn init() -> Result<Self> {
        let Some((universe, _)) = mpi::initialize_with_threading(Threading::Funneled) else {
            bail!("MPI could not be initialised (was it initialised twice?)");
        };
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        Ok(Self {
            world,
            rank,
            size,
            _universe: universe,
        })
    }
}

impl Mpi {
    /// Element-wise sum over ranks into `buf` (the library takes a separate send buffer).
    fn sum<T: mpi::datatype::Equivalence + Copy>(&self, buf: &mut [T]) -> Result<()> {
        let send = buf.to_vec();
        self.world
            .all_reduce_into(&send[..], buf, SystemOperation::sum());
        Ok(())
    }
}

impl Collective for Mpi {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.size
    }
    fn describe(&self) -> String {
        let lib = mpi::environment::library_version().unwrap_or_default();
        let lib = lib
            .split([',', '\n'])
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        format!("MPI ({lib})")
    }
    fn sum_f32(&self, buf: &mut [f32]) -> Result<()> {
        self.sum(buf)
    }
    fn sum_f64(&self, buf: &mut [f64]) -> Result<()> {
        self.sum(buf)
    }
    fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
}
