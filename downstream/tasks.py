"""Imports the built-in downstream tasks so that they register themselves."""
from clap_bench.downstream.gtad import task as _gtad_task  # noqa: F401  (registers tal)
from clap_bench.downstream.qat import task as _qat_task  # noqa: F401  (registers fstal)
from clap_bench.downstream.tan2d import task as _tan2d_task  # noqa: F401  (registers vlg)
