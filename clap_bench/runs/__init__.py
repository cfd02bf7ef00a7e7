"""The run store, the stage plan, the executors (local / debug / SLURM) and the paper's tables."""

from clap_bench.runs.executors import EXECUTORS, RunReport, StageJob, run_plan, run_stage
from clap_bench.runs.plan import (
    TASK_NAMES,
    Plan,
    StageContext,
    StageSpec,
    build_plan,
    parse_seeds,
    parse_methods,
    parse_tasks,
)
from clap_bench.runs.slurm import ClusterProfile, job_states, load_cluster
from clap_bench.runs.status import StageStatus, plan_status
from clap_bench.runs.store import RunStore, method_dir_name, runs_root
from clap_bench.runs.tables import load_paper_tables, make_tables, render

__all__ = [
    "EXECUTORS", "RunReport", "StageJob", "run_plan", "run_stage",
    "TASK_NAMES", "Plan", "StageContext", "StageSpec", "build_plan", "parse_methods", "parse_seeds", "parse_tasks",
    "ClusterProfile", "job_states", "load_cluster", "StageStatus", "plan_status",
    "RunStore", "method_dir_name", "runs_root", "load_paper_tables", "make_tables", "render",
]
