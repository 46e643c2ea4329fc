"""One module per studio tab; each builds its controls and wires them to the Studio handlers."""
