"""ember_dependencies(): the repositories Ember's targets need, for Ember's own WORKSPACE and for a
user's workspace that reaches Ember through local_repository (offline; nothing is downloaded).

    local_repository(name = "ember", path = "/path/to/ember")
    load("@ember//third_party:workspace.bzl", "ember_dependencies")
    ember_dependencies(ember_path = "/path/to/ember")

ember_path is the same path given to local_repository (absolute, or relative to the calling
workspace's root). It defines rules_cc, rules_java, remote_coverage_tools (the repositories Bazel
4 would otherwise download; Ember ships them under third_party/), platforms (Debian's
bazel-bootstrap), @system (Debian's libraries under /usr, see system.BUILD) and @ember_config
(LibTorch from LIBTORCH_HOME or Debian, CUDA/NCCL from CUDA_HOME or /usr/local/cuda; see
local_config.bzl). A repository the calling workspace already defined is left as it is.
"""

load(":local_config.bzl", "ember_local_config")

def _maybe(rule, name, **kwargs):
    if name not in native.existing_rules():
        rule(name = name, **kwargs)

def ember_dependencies(ember_path = "."):
    third_party = ember_path + "/third_party"
    _maybe(native.local_repository, "rules_cc", path = third_party + "/rules_cc")
    _maybe(native.local_repository, "rules_java", path = third_party + "/rules_java")
    _maybe(native.local_repository, "remote_coverage_tools", path = third_party + "/remote_coverage_tools")
    _maybe(native.local_repository, "platforms", path = "/usr/share/bazel/platforms")
    _maybe(native.new_local_repository, "system", path = "/usr", build_file = str(Label("//third_party:system.BUILD")))
    _maybe(ember_local_config, "ember_config")
