"""Trace-driven discrete-event simulation of the scheduler.

The simulator drives the *same* pure core as the control plane
(``controlplane.scheduler.core.schedule``) with a virtual clock, next to
baseline policies, and reports job completion times, waits, utilisation and
fairness. Inputs are CSV fleet and trace files (:mod:`.fleet`,
:mod:`.trace`), the Gavel throughput matrix and Philly-derived trace
(:mod:`.gavel`) or a seeded synthetic workload (:mod:`.synth`).
"""
