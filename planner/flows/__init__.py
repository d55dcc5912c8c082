"""Flows: workflows described node by node, with conditions on outputs choosing among the ways
on, bounded loops, and paths the planner chooses for a request (docs/flows.md).

- :mod:`.model`: the flow file (YAML or JSON) and its JSON Schema;
- :mod:`.check`: the load-time check, every problem located at its node;
- :mod:`.compile`: a path through a flow made into a plan (loops unrolled);
- :mod:`.choose`: which flow and path serve a request (match rules; the model's consultation);
- :mod:`.branching`: where a flow goes on after a node, at run time;
- :mod:`.registry`: the deployment's folder of flows (``CADRE_FLOWS``).
"""
