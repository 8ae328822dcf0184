# Sourced by run_mpi_cpu.sh: the CPU ranks' runtime, chosen from what this machine has (see run_mpi_cpu.sh for
# the CPU_ALLOCATOR / CPU_OPENMP / CPU_LIB_DIRS switches). Sets, without exporting (mpirun passes them to the
# ranks only): LD_PRELOAD, MALLOC_CONF, KMP_AFFINITY, KMP_BLOCKTIME, OMP_PROC_BIND, OMP_PLACES; prints one line.

# The first file matching $1 (a glob such as 'libjemalloc.so*') in CPU_LIB_DIRS, the Python environment's lib/,
# then the system's library directories.
find_cpu_library() {
    local python_bin dir found
    python_bin=$(command -v "${PYTHON:-python3}" 2>/dev/null || true)
    local dirs=()
    IFS=: read -r -a dirs <<<"${CPU_LIB_DIRS:-}"
    if [[ -n "$python_bin" ]]; then dirs+=("$(dirname "$python_bin")/../lib"); fi
    dirs+=(/usr/lib/x86_64-linux-gnu /usr/lib/aarch64-linux-gnu /usr/lib64 /usr/lib /usr/local/lib)
    for dir in "${dirs[@]}"; do
        [[ -n "$dir" && -d "$dir" ]] || continue
        found=$(find "$dir" -maxdepth 1 -name "$1" \( -type f -o -type l \) 2>/dev/null | sort | head -n 1)
        if [[ -n "$found" ]]; then echo "$found"; return 0; fi
    done
    return 1
}

cpu_runtime_setup() {
    local allocator="${CPU_ALLOCATOR:-auto}" openmp="${CPU_OPENMP:-auto}" library="" preload=()
    local allocator_note openmp_note
    case "$allocator" in
        # tcmalloc first: on the 16-core Xeon it ran the project 1.20x faster than glibc, jemalloc 0.98x (bench,
        # docs/performance.md, 2026-12-02)
        auto) library=$(find_cpu_library 'libtcmalloc_minimal.so*' || find_cpu_library 'libtcmalloc.so*' \
            || find_cpu_library 'libjemalloc.so*' || true) ;;
        jemalloc) library=$(find_cpu_library 'libjemalloc.so*' || true) ;;
        tcmalloc) library=$(find_cpu_library 'libtcmalloc_minimal.so*' || find_cpu_library 'libtcmalloc.so*' || true) ;;
        none) ;;
        /*) library="$allocator" ;;
        *) echo "error: CPU_ALLOCATOR must be auto, jemalloc, tcmalloc, none or a path, got '$allocator'" >&2; exit 2 ;;
    esac
    if [[ -n "$library" && ! -r "$library" ]]; then
        echo "error: CPU_ALLOCATOR: cannot read $library" >&2; exit 2
    fi
    if [[ "$allocator" != auto && "$allocator" != none && -z "$library" ]]; then
        echo "error: CPU_ALLOCATOR=$allocator: no such library found (set CPU_LIB_DIRS or give its path)" >&2; exit 2
    fi
    if [[ -n "$library" ]]; then
        preload+=("$library")
        allocator_note="$library"
        # jemalloc: keep freed pages for reuse instead of returning them to the kernel between steps
        if [[ "$library" == *jemalloc* ]]; then
            MALLOC_CONF="${MALLOC_CONF:-oversize_threshold:1,background_thread:true,metadata_thp:auto,dirty_decay_ms:9000000000,muzzy_decay_ms:9000000000}"
        fi
    else
        allocator_note="glibc malloc"
    fi
    library=""
    case "$openmp" in
        # Intel's OpenMP only when asked: measured +4% alone and a 1.2x slowdown beside jemalloc (docs/performance.md)
        intel) library=$(find_cpu_library 'libiomp5.so' || true) ;;
        auto | gnu) ;;
        *) echo "error: CPU_OPENMP must be auto, intel or gnu, got '$openmp'" >&2; exit 2 ;;
    esac
    if [[ "$openmp" == intel && -z "$library" ]]; then
        echo "error: CPU_OPENMP=intel: libiomp5.so not found (pip install intel-openmp, or set CPU_LIB_DIRS)" >&2; exit 2
    fi
    if [[ -n "$library" ]]; then
        preload+=("$library")
        KMP_AFFINITY="${KMP_AFFINITY:-granularity=fine,compact,1,0}"
        KMP_BLOCKTIME="${KMP_BLOCKTIME:-1}"
        openmp_note="Intel OpenMP $library, KMP_AFFINITY=$KMP_AFFINITY KMP_BLOCKTIME=$KMP_BLOCKTIME"
    else
        OMP_PROC_BIND="${OMP_PROC_BIND:-close}"
        OMP_PLACES="${OMP_PLACES:-cores}"
        openmp_note="GNU OpenMP, OMP_PROC_BIND=$OMP_PROC_BIND OMP_PLACES=$OMP_PLACES"
    fi
    if ((${#preload[@]})); then
        LD_PRELOAD=$(IFS=:; echo "${preload[*]}${LD_PRELOAD:+:$LD_PRELOAD}")
    fi
    echo "# CPU runtime: allocator $allocator_note; $openmp_note" >&2
}
