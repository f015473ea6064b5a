// MPI bootstrap: rank, world size and local rank (one process per GPU). MPI is started
// only when the process was launched by mpirun/srun, so a plain `hsa ...` runs as a single
// process without touching MPI. NCCL communicators are built on top of this (rank 0 makes
// the ncclUniqueId and broadcasts it over MPI) in the distribution issue.
#pragma once

#include <string>

namespace hsa {

struct DistContext {
    int rank = 0;
    int world_size = 1;
    int local_rank = 0;
    bool mpi_active = false;
};

bool launched_by_mpi();  // OMPI_COMM_WORLD_SIZE / PMI_SIZE / PMIX_RANK in the environment
DistContext init_distributed(int* argc, char*** argv);
void finalize_distributed(const DistContext& context);

std::string mpi_library_version();  // "Open MPI v4.1.4, ..." (first line)
std::string nccl_version();         // "2.28.3", or "not built" without NCCL

}  // namespace hsa
