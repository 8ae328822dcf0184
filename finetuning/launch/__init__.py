"""Launch: every launcher (mpirun, torchrun, a plain process) mapped onto one data-parallel job, and the
collective backend and device of each rank. Imports nothing of data, model, training or inference."""
