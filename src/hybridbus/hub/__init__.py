"""The in-process bus: publish, history, subscribe with exact recovery, local fan-out."""
