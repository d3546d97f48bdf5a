"""Pure domain: flow definitions, commands, events and play state. No I/O, no clocks."""
