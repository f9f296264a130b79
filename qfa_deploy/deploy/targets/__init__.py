"""Per-target lowerings and schedules, one package per target (``x86``, ``arm``, ``cuda``), each listing its
schedules in ``SCHEDULES`` for ``qfa_deploy.deploy.registry``; ``cpu`` holds what the CPU ones share, cut
for a target's vector registers. Importing these packages does not import TVM."""
