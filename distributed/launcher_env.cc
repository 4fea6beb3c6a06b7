#include "distributed/launcher_env.h"

#include <cstdlib>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "base/status_macros.h"

namespace ember::dist {
namespace {

struct Scheme {
  const char* launcher;
  const char* rank;
  const char* size;
  const char* local_rank;  // may be null
  const char* local_size;  // may be null
  bool mpi;
};

constexpr Scheme kSchemes[] = {
    {"openmpi", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
     "OMPI_COMM_WORLD_LOCAL_SIZE", true},
    // srun --mpi=pmix: PMIx itself puts no local rank in the environment (MPI_LOCALRANKID is
    // MPICH's launcher's); Slurm's step variables say it.
    {"pmix", "PMIX_RANK", "PMI_SIZE", "SLURM_LOCALID", "SLURM_NTASKS_PER_NODE", true},
    {"mpich", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS", true},
    {"slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NTASKS_PER_NODE", false},
    {"torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", false},
};

absl::StatusOr<std::optional<int>> ReadInt(const EnvLookup& getenv, const char* name, int min,
                                           const char* allowed, int max = std::numeric_limits<int>::max()) {
  if (name == nullptr) return std::optional<int>();
  std::optional<std::string> value = getenv(name);
  if (!value) return std::optional<int>();
  std::string text = *value;
  // SLURM_NTASKS_PER_NODE and SLURM_TASKS_PER_NODE may read "2(x3)" or "2,1": take the first.
  if (std::string(name) == "SLURM_NTASKS_PER_NODE") text = text.substr(0, text.find_first_of("(,"));
  int v;
  if (!absl::SimpleAtoi(text, &v) || v < min || v > max) {
    return absl::InvalidArgumentError(
        absl::StrCat("launcher environment: ", name, "='", *value, "' is not ", allowed));
  }
  return std::optional<int>(v);
}

// Slurm's tasks on this node from SLURM_TASKS_PER_NODE ("2(x3),1": two tasks on each of the first
// three nodes, one on the fourth) at SLURM_NODEID; nullopt when either is missing.
absl::StatusOr<std::optional<int>> SlurmTasksOnThisNode(const EnvLookup& getenv) {
  std::optional<std::string> per_node = getenv("SLURM_TASKS_PER_NODE");
  EMBER_ASSIGN_OR_RETURN(std::optional<int> node, ReadInt(getenv, "SLURM_NODEID", 0, "an integer >= 0"));
  if (!per_node || !node) return std::optional<int>();
  int first = 0;
  for (absl::string_view group : absl::StrSplit(*per_node, ',')) {
    int tasks = 0, repeat = 1;
    const size_t paren = group.find('(');
    bool ok = absl::SimpleAtoi(group.substr(0, paren), &tasks) && tasks >= 1;
    if (ok && paren != absl::string_view::npos) {
      absl::string_view times = group.substr(paren + 1);
      ok = absl::ConsumePrefix(&times, "x") && absl::ConsumeSuffix(&times, ")") && absl::SimpleAtoi(times, &repeat) &&
           repeat >= 1;
    }
    if (!ok) {
      return absl::InvalidArgumentError(absl::StrCat("launcher environment: SLURM_TASKS_PER_NODE='", *per_node,
                                                     "' is not a list of N or N(xM) with N, M >= 1"));
    }
    if (*node < first + repeat) return std::optional<int>(tasks);
    first += repeat;
  }
  return absl::InvalidArgumentError(absl::StrCat("launcher environment: SLURM_NODEID=", *node,
                                                 " is beyond the nodes of SLURM_TASKS_PER_NODE='", *per_node, "'"));
}

}  // namespace

absl::StatusOr<LaunchInfo> ReadLaunchInfo(const EnvLookup& getenv) {
  for (const Scheme& s : kSchemes) {
    EMBER_ASSIGN_OR_RETURN(std::optional<int> rank, ReadInt(getenv, s.rank, 0, "an integer >= 0"));
    if (!rank) continue;
    EMBER_ASSIGN_OR_RETURN(std::optional<int> size, ReadInt(getenv, s.size, 1, "an integer >= 1"));
    if (!size && std::string(s.launcher) == "pmix") {
      // PMIx without PMI_SIZE: the size comes from the launcher that started us (Slurm) or MPI.
      EMBER_ASSIGN_OR_RETURN(size, ReadInt(getenv, "SLURM_NTASKS", 1, "an integer >= 1"));
      if (!size) {
        EMBER_ASSIGN_OR_RETURN(std::optional<int> local_rank, ReadInt(getenv, s.local_rank, 0, "an integer >= 0"));
        LaunchInfo info;
        info.launcher = s.launcher;
        info.rank = *rank;
        info.world_size = 0;  // unknown until MPI_Init; MPI tells
        info.local_rank = local_rank.value_or(0);
        info.local_world_size = local_rank ? *local_rank + 1 : 1;
        info.mpi_launched = true;
        return info;
      }
    }
    if (!size) {
      return absl::InvalidArgumentError(absl::StrCat("launcher environment: ", s.rank, "=", *rank,
                                                     " is set but ", s.size,
                                                     " is not; set both (or neither)"));
    }
    if (*rank >= *size) {
      return absl::InvalidArgumentError(absl::StrCat("launcher environment: ", s.rank, "=", *rank,
                                                     " is not below ", s.size, "=", *size));
    }
    EMBER_ASSIGN_OR_RETURN(std::optional<int> local_rank,
                           ReadInt(getenv, s.local_rank, 0, "an integer >= 0"));
    EMBER_ASSIGN_OR_RETURN(std::optional<int> local_size,
                           ReadInt(getenv, s.local_size, 1, "an integer >= 1"));
    if (!local_size && std::string(s.local_rank) == "SLURM_LOCALID") {
      // SLURM_NTASKS_PER_NODE is set only with --ntasks-per-node; SLURM_TASKS_PER_NODE always.
      EMBER_ASSIGN_OR_RETURN(local_size, SlurmTasksOnThisNode(getenv));
    }
    if (local_rank && local_size && *local_rank >= *local_size) {
      return absl::InvalidArgumentError(absl::StrCat("launcher environment: ", s.local_rank, "=",
                                                     *local_rank, " is not below ", s.local_size,
                                                     "=", *local_size));
    }
    if (local_size && *local_size > *size) {
      return absl::InvalidArgumentError(absl::StrCat("launcher environment: ", s.local_size, "=",
                                                     *local_size, " exceeds ", s.size, "=", *size));
    }
    LaunchInfo info;
    info.launcher = s.launcher;
    info.rank = *rank;
    info.world_size = *size;
    info.local_rank = local_rank.value_or(0);
    info.local_world_size = local_size.value_or(local_rank ? *local_rank + 1 : 1);
    info.mpi_launched = s.mpi;
    if (std::string(s.launcher) == "slurm") {
      // srun with a PMI plugin also lets MPI bootstrap.
      info.mpi_launched = getenv("PMI_FD").has_value() || getenv("PMIX_NAMESPACE").has_value() ||
                          getenv("PMIX_RANK").has_value();
    }
    if (std::string(s.launcher) == "torchrun") {
      info.master_addr = getenv("MASTER_ADDR").value_or("");
      EMBER_ASSIGN_OR_RETURN(std::optional<int> port,
                             ReadInt(getenv, "MASTER_PORT", 1, "a TCP port (1-65535)", 65535));
      info.master_port = port.value_or(0);
      EMBER_ASSIGN_OR_RETURN(std::optional<int> chosen,
                             ReadInt(getenv, "EMBER_RENDEZVOUS_PORT", 1, "a TCP port (1-65535)", 65535));
      if (chosen) {
        info.rendezvous_port = *chosen;
        info.rendezvous_port_from = "EMBER_RENDEZVOUS_PORT";
      } else if (getenv("TORCHELASTIC_USE_AGENT_STORE").value_or("") == "True" && port) {
        if (*port == 65535) {
          return absl::InvalidArgumentError(
              "launcher environment: MASTER_PORT=65535 is held by torchrun's agent "
              "(TORCHELASTIC_USE_AGENT_STORE=True) and MASTER_PORT + 1 is not a port; set "
              "EMBER_RENDEZVOUS_PORT to a free TCP port");
        }
        info.rendezvous_port = *port + 1;
        info.rendezvous_port_from =
            "MASTER_PORT + 1 (torchrun's agent holds MASTER_PORT: TORCHELASTIC_USE_AGENT_STORE=True)";
      } else if (port) {
        info.rendezvous_port = *port;
        info.rendezvous_port_from = "MASTER_PORT";
      }
      EMBER_ASSIGN_OR_RETURN(std::optional<int> restart,
                             ReadInt(getenv, "TORCHELASTIC_RESTART_COUNT", 0, "an integer from 0 to 2147483647"));
      EMBER_ASSIGN_OR_RETURN(std::optional<int> max_restarts,
                             ReadInt(getenv, "TORCHELASTIC_MAX_RESTARTS", 0, "an integer from 0 to 2147483647"));
      if (restart && max_restarts && *restart > *max_restarts) {
        return absl::InvalidArgumentError(absl::StrCat("launcher environment: TORCHELASTIC_RESTART_COUNT=", *restart,
                                                       " exceeds TORCHELASTIC_MAX_RESTARTS=", *max_restarts));
      }
      info.restart_count = restart.value_or(-1);
      info.max_restarts = max_restarts.value_or(-1);
      if (*size > 1 && (info.master_addr.empty() || info.master_port == 0)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "launcher environment: WORLD_SIZE=", *size,
            " needs MASTER_ADDR and MASTER_PORT (the rendezvous address of rank 0)"));
      }
    }
    return info;
  }
  // A size without a rank is a partial environment too.
  for (const Scheme& s : kSchemes) {
    if (getenv(s.size).has_value() && std::string(s.size) != "PMI_SIZE" &&
        std::string(s.size) != "SLURM_NTASKS") {
      return absl::InvalidArgumentError(absl::StrCat("launcher environment: ", s.size,
                                                     " is set but ", s.rank, " is not"));
    }
  }
  LaunchInfo info;
  info.launcher = "none";
  return info;
}

absl::StatusOr<LaunchInfo> ReadLaunchInfo() {
  return ReadLaunchInfo([](const std::string& name) -> std::optional<std::string> {
    const char* v = std::getenv(name.c_str());
    if (v == nullptr) return std::nullopt;
    return std::string(v);
  });
}

EnvLookup MapEnv(std::map<std::string, std::string> env) {
  return [env = std::move(env)](const std::string& name) -> std::optional<std::string> {
    auto it = env.find(name);
    if (it == env.end()) return std::nullopt;
    return it->second;
  };
}

}  // namespace ember::dist
