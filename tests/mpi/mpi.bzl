"""One sh_test per world size for a script that runs a binary under real mpirun."""

def mpi_rank_tests(name, script, binary, ranks = [2, 4]):
    """Declares <name>_<n>_ranks_test for each n in ranks.

    The script gets the binary's path and n as its arguments and sources tests/mpi/mpi_lib.sh.
    Every such test is exclusive (n ranks on the machine's cores would starve a neighbour's
    deadlines). Worlds above 2 ranks are tagged no_asan: .ci/run's sanitizer pass runs the 2-rank
    world of each, the plain suite runs all of them.
    """
    for n in ranks:
        native.sh_test(
            name = "%s_%d_ranks_test" % (name, n),
            size = "medium",
            srcs = [script],
            args = [
                "$(location %s)" % binary,
                str(n),
            ],
            data = [
                binary,
                "//tests/mpi:mpi_lib.sh",
            ],
            tags = ["exclusive"] + (["no_asan"] if n > 2 else []),
        )
