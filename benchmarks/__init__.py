"""Benchmarks: ``python -m benchmarks`` compares xqute_ssh with what users
would pick instead (xqute 2.2.1, GNU parallel, plain asyncssh) and with the
floor of what the machine can do.

Each workload runs several times; the table shows medians and ratios taken
pair by pair within the same repetition.  See benchmarks/README.md.
"""
