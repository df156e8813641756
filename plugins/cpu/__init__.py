"""CPU meters: the read-meters step for CPUs, from RAPL counters where the kernel
exposes them, else an estimate from the CPU time each process used and a power
model. Grouped because both paths produce the same readings and share the weights
that split a package among processes."""
