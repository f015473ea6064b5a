#include "dist/mpi_context.h"

#include <mpi.h>

#include <cstdlib>
#include <cstring>

#ifdef HSA_WITH_NCCL
#include <nccl.h>
#endif

namespace hsa {

bool launched_by_mpi() {
    for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MV2_COMM_WORLD_SIZE"})
        if (std::getenv(name)) return true;
    return false;
}

DistContext init_distributed(int* argc, char*** argv) {
    DistContext context;
    if (!launched_by_mpi()) return context;
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized) MPI_Init(argc, argv);
    context.mpi_active = true;
    MPI_Comm_rank(MPI_COMM_WORLD, &context.rank);
    MPI_Comm_size(MPI_COMM_WORLD, &context.world_size);
    MPI_Comm local;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, context.rank, MPI_INFO_NULL, &local);
    MPI_Comm_rank(local, &context.local_rank);
    MPI_Comm_free(&local);
    return context;
}

void finalize_distributed(const DistContext& context) {
    if (!context.mpi_active) return;
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Finalize();
}

std::string mpi_library_version() {
    char buffer[MPI_MAX_LIBRARY_VERSION_STRING];
    int length = 0;
    MPI_Get_library_version(buffer, &length);  // allowed before MPI_Init
    std::string text(buffer, static_cast<size_t>(length));
    auto end = text.find_first_of("\n,");
    return end == std::string::npos ? text : text.substr(0, end);
}

std::string nccl_version() {
#ifdef HSA_WITH_NCCL
    int version = 0;
    if (ncclGetVersion(&version) != ncclSuccess) return "unavailable";
    // NCCL >= 2.9 encodes major*10000 + minor*100 + patch.
    return std::to_string(version / 10000) + "." + std::to_string((version % 10000) / 100) + "." + std::to_string(version % 100);
#else
    return "not built";
#endif
}

}  // namespace hsa
