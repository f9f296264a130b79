"""Per-target lowerings and schedules, one package per architecture (``x86``, ``arm``), each listing its
schedules in ``SCHEDULES`` for ``qfa_deploy.deploy.registry``; ``cpu`` holds what they share, cut
for a target's vector registers. Importing these packages does not import TVM."""
