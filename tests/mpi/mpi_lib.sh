# Sourced by every test script that runs real mpirun jobs (tests/mpi/mpi.bzl names it as data):
# the settings each such script needs, in one place.
#   - OpenMPI refuses to run as root without the two OMPI_ALLOW_RUN_AS_ROOT variables (CI does).
#   - Under --config=asan, OpenMPI leaks at MPI_Finalize from components it has already
#     dlclose()d (LSan cannot name them); leak detection stays on for every in-process test.
#   - The ranks are not the test: gtest inside them must not write Bazel's test.xml.
#   - `mpi` is the launcher prefix (oversubscribed: 4 ranks run on 2 cores; shared memory only);
#     a script adds -np itself. `fail` ends the test with a reason.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"
unset XML_OUTPUT_FILE TEST_PREMATURE_EXIT_FILE GTEST_OUTPUT
mpi=(mpirun --oversubscribe --mca btl self,vader)
fail() { echo "FAIL: $*"; exit 1; }
