"""The thin distributed layer: Ray sessions, remote training of members, job entrypoints.

No science lives here; Ray tasks call the library's plain functions.
"""
