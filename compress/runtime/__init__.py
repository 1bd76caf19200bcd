"""Exported models at run time: run (parity), time (latency), size (profile), tile, and XNNPACK reports."""
