// The Gloo backend of a build without Gloo (tools/gpu/CMakeLists.txt: a GPU machine without
// libgloo-dev): the API stays, and says why it cannot work.
#include "absl/status/status.h"
#include "distributed/gloo_communicator.h"

namespace ember::dist {

bool GlooBuilt() { return false; }

absl::StatusOr<std::unique_ptr<Communicator>> CreateGlooCommunicator(const GlooOptions&) {
  return absl::UnimplementedError(
      "this build of Ember has no Gloo backend (built by tools/gpu/build.sh, without libgloo); "
      "use --backend=nccl, or the Bazel build (tools/setup.sh installs libgloo-dev)");
}

}  // namespace ember::dist
