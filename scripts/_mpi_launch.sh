# Shared by run_mpi_cpu.sh and run_mpi_xpu.sh (sourced, not run): option parsing, MPI flavour detection and
# the mpirun command line, so both launchers pin and size ranks the same way.
#
# The caller sets USAGE, DEFAULT_PPN (ranks per node when -ppn is not given), optionally PPN_HINT (the error
# when that default is 0) and FORWARD_VARS (variables every rank must see), exports those variables, then
# calls: mpi_launch "$@"
# Environment: MPIRUN (default mpirun), PYTHON (default python3); variables already exported win over defaults.

mpi_usage() {
    cat <<EOF
usage: $(basename "$0") [-n NP] [-ppn PER_NODE] [-f HOSTFILE] [-t THREADS] [--no-bind] [--dry-run] SCRIPT.py [ARGS...]
$USAGE

  -n, -np NP        ranks in all (default: PER_NODE x the hostfile's nodes); without -ppn they are spread over
                    the nodes, so -n 2 on one host runs 2 ranks there
  -ppn PER_NODE     ranks per node (default here: ${DEFAULT_PPN:-?}; NP / nodes when -n is given)
  -f, --hostfile F  MPICH/Intel MPI (host:ranks) or Open MPI (host slots=N) host file; rank 0 runs on its first host
  -t, --threads T   OpenMP threads per rank (default: OMP_NUM_THREADS, else this node's physical cores / PER_NODE,
                    so that threads x ranks never exceed the cores)
  --no-bind         do not pin ranks to cores
  --dry-run         print the mpirun command line and exit
  -h, --help        this text

Environment: MPIRUN (default mpirun), PYTHON (default python3), CORES_PER_RANK (run_mpi_cpu.sh: default 4).
The command line is printed before it runs, prefixed with '+'.
EOF
}

# intel | openmpi | mpich: they spell pinning and environment passing differently. MVAPICH's mpiexec is Hydra.
mpi_flavour() {
    local version
    version=$("$1" --version 2>&1 || true)
    case "$version" in
        *"Intel(R) MPI"*) echo intel ;;
        *"Open MPI"* | *"OpenRTE"* | *"Open RTE"*) echo openmpi ;;
        *) echo mpich ;;
    esac
}

# Host lines of an MPICH (host:ppn) or Open MPI (host slots=N) hostfile, without comments or blank lines.
hostfile_hosts() {
    sed -e 's/#.*//' -e 's/^[[:space:]]*//' "$1" | awk 'NF {print $1}' | cut -d: -f1
}

# Physical cores of this node (hyperthreads share a core's floating-point units, so they do not count).
physical_cores() {
    local cores
    cores=$(lscpu -p=CORE,SOCKET 2>/dev/null | grep -v '^#' | sort -u | wc -l || true)
    if [[ -z "$cores" || "$cores" -eq 0 ]]; then cores=$(nproc); fi
    echo "$cores"
}

cpu_sockets() {
    local sockets
    sockets=$(lscpu -p=SOCKET 2>/dev/null | grep -v '^#' | sort -u | wc -l || true)
    if [[ -z "$sockets" || "$sockets" -eq 0 ]]; then sockets=1; fi
    echo "$sockets"
}

mpi_launch() {
    local np="" ppn="" hostfile="" threads="" bind=1 dry_run=0
    while (($#)); do
        case "$1" in
            -n | -np) np="${2:?-n needs a value}"; shift 2 ;;
            -ppn) ppn="${2:?-ppn needs a value}"; shift 2 ;;
            -f | --hostfile) hostfile="${2:?-f needs a file}"; shift 2 ;;
            -t | --threads) threads="${2:?-t needs a value}"; shift 2 ;;
            --no-bind) bind=0; shift ;;
            --dry-run) dry_run=1; shift ;;
            -h | --help) mpi_usage; exit 0 ;;
            --) shift; break ;;
            -*) echo "error: unknown option: $1 (see --help)" >&2; exit 2 ;;
            *) break ;;
        esac
    done
    if (($# == 0)); then echo "error: no SCRIPT.py to run (see --help)" >&2; exit 2; fi

    local mpirun="${MPIRUN:-mpirun}" python="${PYTHON:-python3}" nodes=1
    if ! command -v "$mpirun" >/dev/null; then
        echo "error: $mpirun not found; install an MPI or set MPIRUN=/path/to/mpirun" >&2
        exit 2
    fi
    # An absolute path, so every rank runs this interpreter (and its virtual environment): Open MPI started
    # by absolute path puts its own bin/ first on the ranks' PATH, where /usr/bin/python3 would win.
    python=$(command -v "$python") || { echo "error: ${PYTHON:-python3} not found; set PYTHON" >&2; exit 2; }
    if [[ "$python" != /* ]]; then python="$PWD/$python"; fi
    if [[ -n "$hostfile" ]]; then
        [[ -r "$hostfile" ]] || { echo "error: cannot read hostfile $hostfile" >&2; exit 2; }
        nodes=$(hostfile_hosts "$hostfile" | sort -u | wc -l)
        # Ranks must meet at one address; rank 0 runs on the hostfile's first host.
        MASTER_ADDR="${MASTER_ADDR:-$(hostfile_hosts "$hostfile" | head -n 1)}"
        export MASTER_ADDR
    fi
    if [[ -n "$np" && ! "$np" =~ ^[1-9][0-9]*$ ]]; then
        echo "error: -n must be a positive integer, got '$np'" >&2
        exit 2
    fi
    # -n without -ppn: the ranks asked for, spread over the nodes (not the default per-node count times the
    # nodes, which would put fewer ranks on a node, each with more threads than its share of the cores).
    if [[ -z "$ppn" && -n "$np" ]]; then ppn=$(((np + nodes - 1) / nodes)); fi
    ppn="${ppn:-$DEFAULT_PPN}"
    if ! [[ "$ppn" =~ ^[0-9]+$ && "$ppn" -ge 1 ]]; then
        echo "error: ${PPN_HINT:-ranks per node must be a positive integer, got '$ppn'}" >&2
        exit 2
    fi
    np="${np:-$((ppn * nodes))}"
    # Each rank gets its share of the physical cores, so the ranks of a node never oversubscribe it. The count
    # is this node's: launching from a login node unlike the compute nodes needs -t.
    local cores share
    cores=$(physical_cores)
    share=$((cores / ppn))
    threads="${threads:-${OMP_NUM_THREADS:-$((share > 0 ? share : 1))}}"
    export OMP_NUM_THREADS="$threads"
    if ((threads * ppn > cores)); then
        echo "warning: $ppn ranks x $threads threads per node exceed this node's $cores physical cores" >&2
    fi

    local flavour name cmd=()
    flavour=$(mpi_flavour "$mpirun")
    # The two hostfile formats look alike but misparse silently in the other MPI.
    if [[ -n "$hostfile" ]]; then
        if [[ "$flavour" == openmpi ]] && grep -Eq '^[^#]*:[0-9]' "$hostfile"; then
            echo "error: $hostfile has host:ranks lines (MPICH format); Open MPI wants 'host slots=N'" >&2
            exit 2
        elif [[ "$flavour" != openmpi ]] && grep -Eq '^[^#]*slots=' "$hostfile"; then
            echo "error: $hostfile has 'slots=' lines (Open MPI format); $flavour MPI wants host:ranks" >&2
            exit 2
        fi
    fi
    case "$flavour" in
        openmpi)
            cmd=("$mpirun" -np "$np")
            # Open MPI refuses to start as root (the usual user in containers) unless told it is meant.
            if ((EUID == 0)); then cmd+=(--allow-run-as-root); fi
            if ((bind)); then cmd+=(--map-by "ppr:${ppn}:node:PE=${threads}" --bind-to core); else
                cmd+=(--map-by "ppr:${ppn}:node" --bind-to none); fi
            if [[ -n "$hostfile" ]]; then cmd+=(--hostfile "$hostfile"); fi
            # Open MPI passes no environment unless asked; Hydra passes all of it.
            local -A seen=()
            for name in "${FORWARD_VARS[@]}" $(compgen -e | grep -E '^(HF_|TRANSFORMERS_|CCL_|FI_|KMP_|PYTHONPATH$)' \
                || true); do
                if [[ -n "${!name:-}" && -z "${seen[$name]:-}" ]]; then cmd+=(-x "$name=${!name}"); fi
                seen[$name]=1
            done
            ;;
        intel | mpich)
            cmd=("$mpirun" -n "$np" -ppn "$ppn")
            if [[ -n "$hostfile" ]]; then cmd+=(-f "$hostfile"); fi
            if [[ "$flavour" == intel ]]; then
                # One pinning domain of OMP_NUM_THREADS cores per rank.
                if ((bind)); then cmd+=(-genv I_MPI_PIN_DOMAIN omp); else cmd+=(-genv I_MPI_PIN 0); fi
            elif ((bind)); then
                cmd+=(-bind-to "core:${threads}")
            fi
            for name in "${FORWARD_VARS[@]}"; do
                if [[ -n "${!name:-}" ]]; then cmd+=(-genv "$name" "${!name}"); fi
            done
            ;;
    esac
    cmd+=("$python" "$@")

    echo "# $flavour MPI: $np ranks, $ppn per node on $nodes node(s), $threads OpenMP threads each" >&2
    printf '+' >&2
    printf ' %q' "${cmd[@]}" >&2
    printf '\n' >&2
    if ((dry_run)); then return 0; fi
    exec "${cmd[@]}"
}
