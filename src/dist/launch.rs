//! What the launcher tells this process through its environment: world size, ranks per
//! node, this rank's place on its machine, and the threads each rank should take.

/// The launcher this process runs under, read from the variables MPI launchers set
/// (OpenMPI's `mpirun`, PMI for MPICH/Intel MPI/Slurm, PMIx): (world size, ranks on this node).
pub fn launched() -> Option<(usize, usize)> {
    let world = env_number(&["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"])?;
    let local = env_number(&[
        "OMPI_COMM_WORLD_LOCAL_SIZE",
        "MPI_LOCALNRANKS",
        "PMI_LOCAL_SIZE",
    ]);
    Some((world, local.unwrap_or(1).max(1)))
}

/// The first of these environment variables that holds a number (launchers name the same
/// fact differently).
pub(crate) fn env_number(names: &[&str]) -> Option<usize> {
    names
        .iter()
        .find_map(|n| std::env::var(n).ok()?.parse().ok())
}

/// Compute threads per rank when several ranks share a node and no count was given: the
/// node's cores split evenly, so ranks do not oversubscribe each other's cores, and never more
/// than the CPUs the launcher bound this rank to (OpenMPI binds 1–2 ranks to a core each).
pub fn threads_per_rank(cores: usize) -> Option<usize> {
    let (_, local) = launched()?;
    let share = (cores / local).max(1);
    Some(allowed_cpus().map_or(share, |n| share.min(n)).max(1))
}

/// How many CPUs this process may run on (its affinity mask), where Linux says.
fn allowed_cpus() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?;
    count_cpu_list(list.trim())
}

/// The number of CPUs in a list like "0-3,8,10-11".
pub(super) fn count_cpu_list(list: &str) -> Option<usize> {
    let mut n = 0;
    for part in list.split(',').filter(|p| !p.is_empty()) {
        n += match part.split_once('-') {
            Some((a, b)) => b.trim().parse::<usize>().ok()? + 1 - a.trim().parse::<usize>().ok()?,
            None => {
                part.trim().parse::<usize>().ok()?;
                1
            }
        };
    }
    (n > 0).then_some(n)
}

/// This rank's index among the ranks on its machine (which GPU it takes), where a launcher
/// says.
pub fn local_rank() -> Option<usize> {
    env_number(&[
        "LOCAL_RANK",
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "MPI_LOCALRANKID",
    ])
}
