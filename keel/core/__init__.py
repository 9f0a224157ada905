"""What a run is, without Ray or I/O: events and the state they fold into, the workflow
graph, the tool contract, argument validation and the registry of workflows."""
