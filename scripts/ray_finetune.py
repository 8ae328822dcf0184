"""finetune_clm.py's training on a Ray cluster, from an intel/llm-on-ray YAML or the suite's own flags.

Each Ray Train worker runs finetune_clm.py as one rank of a data-parallel job (docs/distributed.md, "Ray"):
    python scripts/ray_finetune.py --config_file finetune.yaml              # a local Ray on this machine
    python scripts/ray_finetune.py --config_path finetune_intel_gpu.conf    # llm-on-ray's earlier spelling
    ray start --head --node-ip-address <head-ip>                            # a cluster: on the head node,
    ray start --address <head-ip>:6379                                      # on each worker node, then
    python scripts/ray_finetune.py --config_file finetune.yaml --ray_address <head-ip>:6379 \\
        --storage_path /shared/ray_results --max_failures 2
finetune_clm.py's flags (or its YAML/JSON config as --config_file) work too, after ``--``:
    python scripts/ray_finetune.py --num_workers 2 -- --model_name_or_path MODEL --train_file data.json ...
Needs Ray: pip install -r requirements-ray.txt
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere, not only the repo root

from finetuning.errors import UserError, exit_on_user_error


def main(argv: list[str] | None = None) -> int:
    from finetuning.cli import parse_arguments
    from finetuning.data.arguments import DataArguments
    from finetuning.launch.ray_arguments import RayArguments
    from finetuning.launch.ray_train import build_plan, require_ray, run_on_ray
    from finetuning.model.arguments import ModelArguments, PeftArguments
    from finetuning.training.arguments import FinetuneTrainingArguments
    from finetuning.training.run import resolve_resume_checkpoint

    argv = list(sys.argv[1:] if argv is None else argv)
    own, suite_flags = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    (arguments,) = parse_arguments((RayArguments,), own)
    require_ray()
    plan = build_plan(arguments, suite_flags)

    # The suite's own parser checks every mapped flag here, so a bad value fails before Ray starts, in one line
    # that names the file the value came from.
    try:
        suite = parse_arguments((ModelArguments, DataArguments, PeftArguments, FinetuneTrainingArguments), plan.flags)
    except UserError as error:
        raise UserError(str(error), path=arguments.config_file or arguments.config_path) from None
    resolve_resume_checkpoint(suite[-1])
    report = lambda line: print(f"warning: {line}", file=sys.stderr, flush=True)  # noqa: E731
    for note in plan.notes:
        report(note)
    flags = " ".join(plan.flags)
    print(f"ray_finetune: {plan.num_workers} workers x {plan.resources_per_worker}; finetune_clm.py {flags}")
    run_on_ray(
        plan,
        address=arguments.ray_address or os.environ.get("RAY_ADDRESS"),
        max_failures=arguments.max_failures,
        storage_path=arguments.storage_path,
        report=report,
    )
    print(f"ray_finetune: done; outputs in {suite[-1].output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(exit_on_user_error(main))
