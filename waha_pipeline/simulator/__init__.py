"""Deterministic fake WAHA server: the referee the importer is tested and benchmarked against.

Engine profiles (DatasetSpec.engine = "gows" | "noweb" | "webjs", simulator/engines.py) serve each engine's own
message objects, paging and chat list, with their version quirks as DatasetSpec options.

Public API (the CLI, tests and benchmarks use only these):
    DatasetSpec, SessionSpec                         -- simulator.models
    build_dataset                                    -- simulator.generator
    ground_truth                                     -- simulator.truth
    SimulatorState                                   -- simulator.state
    Faults, add_fault_arguments, faults_from_args    -- simulator.faults (fault injection, CLI flags)
    create_app                                       -- simulator.app
    run_in_thread, serve_forever, build_state, SimulatorHandle -- simulator.server
"""

from __future__ import annotations

from waha_pipeline.simulator.app import create_app
from waha_pipeline.simulator.faults import Faults, add_fault_arguments, faults_from_args
from waha_pipeline.simulator.generator import build_dataset
from waha_pipeline.simulator.models import Dataset, DatasetSpec, SessionSpec
from waha_pipeline.simulator.server import SimulatorHandle, build_state, run_in_thread, serve_forever
from waha_pipeline.simulator.state import SimulatorState
from waha_pipeline.simulator.truth import ground_truth

__all__ = [
    "Dataset", "DatasetSpec", "Faults", "SessionSpec", "SimulatorHandle", "SimulatorState", "add_fault_arguments",
    "build_dataset", "build_state", "create_app", "faults_from_args", "ground_truth", "run_in_thread",
    "serve_forever",
]
